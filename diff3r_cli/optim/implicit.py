"""The differentiable optimisation layer: θ* = argmin E(θ; θ0, Λ), back-propagated by the IFT.

Forward: TTO (``tto.optimize``'s optimisers) without keeping an autograd graph.
Backward (implicit function theorem at ∇θE(θ*) = 0, H = ∇²θE(θ*)):

    v = H⁻¹ ∇θℓ(θ*)                 (matrix-free PCG, Jacobi preconditioner)
    ∂ℓ/∂θ0   =  Λ v
    ∂ℓ/∂λ_j  = −v_j (θ*_j − θ0_j)    (summed over a group's scalars by expand_groups' autograd)

``hessian="gn"``: H v ≈ Jᵀ(Jv)/P + Λv (Jv exact on the torch backend — double-vjp or
forward-mode AD — and a central difference on gsplat); ``hessian="exact"``: Hessian-vector
products of the full E, by a central difference of exact gradients (``exact_hvp="fd"``,
default) or by double backward (``"autograd"``, only for renderers whose backward is
itself differentiable). If the solve breaks down (NaN/inf, indefinite, or the residual did not
drop), v falls back to M⁻¹∇ℓ (``fallback="jacobi"``) or 0 (``"zeros"``); this is recorded
in ``stats`` and the layer never returns NaN gradients. A solve is accepted only when its
relative residual is within ACCEPT_FACTOR x pcg_rtol; one that missed pcg_rtol is counted
(``backward_pcg_miss``), and non-finite incoming gradient entries are zeroed and counted
(``backward_nonfinite_grad``). Memory of the backward pass is one
render graph, independent of the number of inner steps.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Union

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.energy import Energy, check_inputs
from diff3r_cli.optim.pcg import pcg
from diff3r_cli.optim.tto import ADAM_EPS, OPTIMIZERS, adam_lr_vector, adam_run, lm_run, scene_extent

HESSIANS = ("gn", "exact")
FALLBACKS = ("jacobi", "zeros")


class _Config:
    """Everything the backward pass needs besides the tensors."""

    def __init__(self, energy: Energy, hessian: str, jvp: str, pcg_rtol: float, pcg_max_iter: int,
                 num_probes: int, damping: float, fallback: str, stats: Optional[dict], seed: int,
                 exact_hvp: str = "fd") -> None:
        self.energy = energy
        self.hessian = hessian
        self.jvp = jvp
        self.pcg_rtol = pcg_rtol
        self.pcg_max_iter = pcg_max_iter
        self.num_probes = num_probes
        self.damping = damping
        self.fallback = fallback
        self.stats = stats
        self.seed = seed
        self.exact_hvp = exact_hvp


# A PCG result is used when its relative residual is at most this multiple of the requested
# pcg_rtol (a solve that stopped at max_iter close to the tolerance is still a good v);
# anything worse takes the fallback. Either way a residual above pcg_rtol counts as a miss.
ACCEPT_FACTOR = 10.0


def ift_solve(energy: Energy, theta_star: torch.Tensor, rhs: torch.Tensor, *, hessian: str = "gn", jvp: str = "auto",
              pcg_rtol: float = 1e-3, pcg_max_iter: int = 100, num_probes: int = 4, damping: float = 0.0,
              fallback: str = "jacobi", seed: int = 0, preconditioner: str = "jacobi",
              exact_hvp: str = "fd", accept_rtol: Optional[float] = None) -> tuple[torch.Tensor, dict]:
    """Solve (H + damping·I) v = rhs at θ*; returns (v, info). Never returns non-finite v.

    preconditioner: "jacobi" (diag(JᵀJ)/P + Λ from ±1 probes) or "none" (plain CG).
    accept_rtol: the largest relative residual whose solution is used (default
    ``ACCEPT_FACTOR · pcg_rtol``); info["pcg_miss"] is True whenever pcg_rtol was not reached.
    """
    info: dict = {}
    lin = energy.linearize(theta_star, jvp)
    gen = torch.Generator().manual_seed(seed) if theta_star.device.type == "cpu" else None
    diag = None
    if preconditioner == "jacobi" or fallback == "jacobi":
        diag = lin.gn_diag(num_probes, gen) + damping
        d_max = float(diag.max()) if diag.numel() else 1.0
        diag = diag.clamp_min(1e-8 * d_max if d_max > 0 else 1.0)
    if hessian == "exact":
        hess = energy.exact_hessian(theta_star, exact_hvp)
        matvec = (lambda p: hess.matvec(p) + damping * p) if damping else hess.matvec
    else:
        matvec = lambda p: lin.gn_matvec(p) + damping * p  # noqa: E731
    m_inv = 1.0 / diag if (preconditioner == "jacobi" and diag is not None) else None
    res = pcg(matvec, rhs, M_inv=m_inv, rtol=pcg_rtol, max_iter=pcg_max_iter)
    accept = ACCEPT_FACTOR * pcg_rtol if accept_rtol is None else accept_rtol
    info.update(pcg_iterations=res.iterations, pcg_residual=res.residual, pcg_converged=res.converged,
                pcg_status=res.status, pcg_miss=not res.converged, jvp_calls=lin.jvp_count,
                jvp_mode=lin.jvp_mode)
    ok = res.status in ("converged", "max_iter") and math.isfinite(res.residual) and res.residual <= accept \
        and bool(torch.isfinite(res.x).all())
    if ok:
        v = res.x
        info["fallback"] = None
    else:
        v = None
        if fallback == "jacobi" and diag is not None:
            cand = rhs / diag
            if bool(torch.isfinite(cand).all()):
                v, info["fallback"] = cand, "jacobi"
        if v is None:
            v, info["fallback"] = torch.zeros_like(rhs), "zeros"
    lin.release()
    return v, info


class _IFTFunction(torch.autograd.Function):
    """θ* = argmin E(θ; θ0, Λ) with the IFT backward over flat vectors."""

    @staticmethod
    def forward(ctx, theta0: torch.Tensor, lam_flat: torch.Tensor, theta_star: torch.Tensor, cfg: _Config):  # noqa: D401
        ctx.cfg = cfg
        ctx.save_for_backward(theta0, lam_flat, theta_star)
        return theta_star.clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        theta0, lam_flat, theta_star = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        t0 = time.perf_counter()
        g = grad_out.detach().to(theta_star.dtype)
        # Non-finite incoming entries are zeroed so one bad pixel cannot poison the solve,
        # but counted (stats["backward_nonfinite_grad"]) so the caller can see and report it.
        bad = int((~torch.isfinite(g)).sum())
        rhs = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) if bad else g
        with torch.no_grad():
            v, info = ift_solve(cfg.energy, theta_star, rhs, hessian=cfg.hessian, jvp=cfg.jvp, pcg_rtol=cfg.pcg_rtol,
                                pcg_max_iter=cfg.pcg_max_iter, num_probes=cfg.num_probes, damping=cfg.damping,
                                fallback=cfg.fallback, seed=cfg.seed, exact_hvp=cfg.exact_hvp)
            g_theta0 = lam_flat.detach() * v
            g_lam = -v * (theta_star - theta0.detach())
        if cfg.stats is not None:
            cfg.stats.update({f"backward_{k}": val for k, val in info.items()})
            cfg.stats["backward_nonfinite_grad"] = bad
            cfg.stats["backward_time_s"] = time.perf_counter() - t0
        return (g_theta0 if ctx.needs_input_grad[0] else None,
                g_lam if ctx.needs_input_grad[1] else None, None, None)


def optimization_layer(
    g0: Gaussians,
    lam: Optional[torch.Tensor],
    cameras: Cameras,
    images: torch.Tensor,
    steps: int,
    optimizer: str = "adam",
    *,
    hessian: str = "gn",
    pcg_rtol: float = 1e-3,
    pcg_max_iter: int = 100,
    jvp: str = "auto",
    num_probes: int = 4,
    damping: float = 0.0,
    fallback: str = "jacobi",
    exact_hvp: str = "fd",
    stats: Optional[dict] = None,
    lr: Union[None, float, dict] = None,
    rtol_stop: Optional[float] = None,
    background: Optional[torch.Tensor] = None,
    backend: str = "auto",
    render_fn=None,
    seed: int = 0,
    **tto_options,
) -> Gaussians:
    """Differentiable TTO: returns θ* as Gaussians whose tensors carry the IFT backward.

    Gradients flow to every tensor of g0 (through flatten) and to lam (through
    expand_groups). Arguments as ``tto.optimize``; backward options: hessian ("gn" |
    "exact"), pcg_rtol, pcg_max_iter, jvp ("auto" | "forward" | "fd" | "reverse"),
    num_probes (Jacobi probes), damping (added to H, 0 by default), fallback ("jacobi" |
    "zeros"), exact_hvp ("fd" | "autograd", for hessian="exact"). ``stats`` (a dict) receives forward_time_s, forward_steps, energy and, after
    backward, backward_pcg_iterations, backward_pcg_residual, backward_pcg_miss, backward_fallback,
    backward_nonfinite_grad, backward_time_s.
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}", fix=f"use one of {', '.join(OPTIMIZERS)}")
    if hessian not in HESSIANS:
        raise UserError(f"unknown hessian {hessian!r}", fix=f"use one of {', '.join(HESSIANS)}")
    if fallback not in FALLBACKS:
        raise UserError(f"unknown fallback {fallback!r}", fix=f"use one of {', '.join(FALLBACKS)}")
    lam = check_inputs(g0, lam, cameras, images)
    theta0 = g0.flatten()
    lam_flat = g0.expand_groups(lam.to(g0.dtype))
    # Forward TTO, graph-free (this is where unrolling would spend memory linear in steps).
    from diff3r_cli.optim.tto import _check_finite  # local: a private helper shared with tto
    _check_finite(theta0.detach(), "the initial Gaussians θ0")
    _check_finite(lam_flat.detach(), "the uncertainty weights Λ")
    template = g0.detach()
    energy = Energy(template, theta0.detach(), lam_flat.detach(), cameras, images, background, backend, render_fn)
    t0 = time.perf_counter()
    with torch.no_grad():
        if optimizer == "adam":
            patience = int(tto_options.pop("patience", 3))
            eps = float(tto_options.pop("adam_eps", ADAM_EPS))
            if tto_options:
                raise TypeError(f"unexpected options for adam: {sorted(tto_options)}")
            lr_vec = adam_lr_vector(template, scene_extent(template, cameras), lr)
            theta_star, hist = adam_run(energy, theta0.detach(), int(steps), lr_vec, rtol_stop=rtol_stop or 0.0,
                                        patience=patience, eps=eps)
        else:
            theta_star, hist = lm_run(energy, theta0.detach(), int(steps),
                                      rtol_stop=1e-6 if rtol_stop is None else rtol_stop, **tto_options)
    _check_finite(theta_star, "the optimised parameters")
    if stats is not None:
        stats["forward_time_s"] = time.perf_counter() - t0
        stats["forward_steps"] = len(hist) - 1
        stats["energy"] = hist[-1]["energy"] if hist else float("nan")
        stats["history"] = hist
    cfg = _Config(energy, hessian, jvp, pcg_rtol, pcg_max_iter, num_probes, damping, fallback, stats, seed,
                  exact_hvp)
    out = _IFTFunction.apply(theta0, lam_flat, theta_star.detach(), cfg)
    return template.unflatten(out)


__all__ = ["optimization_layer", "ift_solve", "HESSIANS", "FALLBACKS"]
