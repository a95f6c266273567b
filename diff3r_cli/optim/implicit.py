"""The differentiable optimisation layer: θ* = argmin E(θ; θ0, Λ), back-propagated by the IFT.

Forward: TTO (``tto.run_tto``) without keeping an autograd graph.
Backward (implicit function theorem at ∇θE(θ*) = 0, H = ∇²θE(θ*)):

    v = H⁻¹ ∇θℓ(θ*)                 (matrix-free PCG, Jacobi preconditioner)
    ∂ℓ/∂θ0   =  Λ v
    ∂ℓ/∂λ_j  = −v_j (θ*_j − θ0_j)    (summed over a group's scalars by expand_groups' autograd)

Settings of the solve are a ``config.BackwardConfig``: ``hessian="gn"``: H v ≈ Jᵀ(Jv)/P + Λv
(Jv exact, see ``linearization.py``); ``hessian="exact"``: Hessian-vector products of the
full E, by a central difference of exact gradients (``exact_hvp="fd"``, default) or by
double backward (``"autograd"``, only for renderers whose backward is itself
differentiable). If the solve breaks down (NaN/inf, indefinite, or the residual did not
drop below ``accept_rtol``), v falls back to M⁻¹∇ℓ (``fallback="jacobi"``) or 0
(``"zeros"``), so the layer never returns NaN gradients; non-finite incoming gradient
entries are zeroed. Both are counted in the returned ``LayerStats``. Memory of the backward
pass is one render graph, independent of the number of inner steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.config import BackwardConfig, TTOConfig, layer_configs
from diff3r_cli.optim.energy import Energy, RenderFn
from diff3r_cli.optim.linearization import Linearization
from diff3r_cli.optim.pcg import PCGResult, floor_diagonal, pcg, probe_generator
from diff3r_cli.optim.stats import BackwardStats, LayerStats, SolveInfo
from diff3r_cli.optim.tto import prepare_energy, run_tto


def _jacobi_diagonal(lin: Linearization, config: BackwardConfig) -> Optional[torch.Tensor]:
    """diag(JᵀJ)/P + Λ + damping from ±1 probes (a generator of their own, seeded with
    ``config.seed``), floored; None when neither the preconditioner nor the fallback needs it."""
    if config.preconditioner != "jacobi" and config.fallback != "jacobi":
        return None
    return floor_diagonal(lin.gn_diag(config.num_probes, probe_generator(config.seed)) + config.damping)


def _hessian_product(energy: Energy, lin: Linearization, theta_star: torch.Tensor,
                     config: BackwardConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """p -> (H + damping·I) p for the configured Hessian."""
    damping = config.damping
    if config.hessian == "exact":
        hess = energy.exact_hessian(theta_star, config.exact_hvp)
        return (lambda p: hess.matvec(p) + damping * p) if damping else hess.matvec
    return lambda p: lin.gn_matvec(p) + damping * p


def _usable(res: PCGResult, config: BackwardConfig) -> bool:
    return (res.status in ("converged", "max_iter") and math.isfinite(res.residual)
            and res.residual <= config.accept and bool(torch.isfinite(res.x).all()))


def ift_solve(energy: Energy, theta_star: torch.Tensor, rhs: torch.Tensor,
              config: BackwardConfig = BackwardConfig()) -> tuple[torch.Tensor, SolveInfo]:
    """Solve (H + damping·I) v = rhs at θ*; returns (v, info). Never returns non-finite v."""
    lin = energy.linearize(theta_star, config.jvp)
    diag = _jacobi_diagonal(lin, config)
    matvec = _hessian_product(energy, lin, theta_star, config)
    m_inv = 1.0 / diag if (config.preconditioner == "jacobi" and diag is not None) else None
    res = pcg(matvec, rhs, M_inv=m_inv, rtol=config.pcg_rtol, max_iter=config.pcg_max_iter)
    info = SolveInfo(pcg_iterations=res.iterations, pcg_residual=res.residual, pcg_converged=res.converged,
                     pcg_status=res.status, jvp_calls=lin.jvp_count, jvp_mode=lin.jvp_mode)
    v = res.x if _usable(res, config) else None
    if v is None and config.fallback == "jacobi" and diag is not None:
        cand = rhs / diag
        if bool(torch.isfinite(cand).all()):
            v, info.fallback = cand, "jacobi"
    if v is None:
        v, info.fallback = torch.zeros_like(rhs), "zeros"
    lin.release()
    return v, info


@dataclass
class _Problem:
    """What the backward pass needs besides the saved tensors, and where it reports."""

    energy: Energy
    config: BackwardConfig
    stats: LayerStats


class _IFTFunction(torch.autograd.Function):
    """θ* = argmin E(θ; θ0, Λ) with the IFT backward over flat vectors."""

    @staticmethod
    def forward(ctx, theta0: torch.Tensor, lam_flat: torch.Tensor, theta_star: torch.Tensor,
                problem: _Problem):  # noqa: D401
        ctx.problem = problem
        ctx.save_for_backward(theta0, lam_flat, theta_star)
        return theta_star.clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        theta0, lam_flat, theta_star = ctx.saved_tensors
        problem: _Problem = ctx.problem
        t0 = time.perf_counter()
        g = grad_out.detach().to(theta_star.dtype)
        # Non-finite incoming entries are zeroed so one bad pixel cannot poison the solve,
        # but counted (BackwardStats.nonfinite_grad) so the caller can see and report it.
        bad = int((~torch.isfinite(g)).sum())
        rhs = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) if bad else g
        with torch.no_grad():
            v, info = ift_solve(problem.energy, theta_star, rhs, problem.config)
            g_theta0 = lam_flat.detach() * v
            g_lam = -v * (theta_star - theta0.detach())
        problem.stats.backward = BackwardStats(solve=info, nonfinite_grad=bad, time_s=time.perf_counter() - t0)
        return (g_theta0 if ctx.needs_input_grad[0] else None,
                g_lam if ctx.needs_input_grad[1] else None, None, None)


def optimization_layer_with_stats(
    g0: Gaussians,
    lam: Optional[torch.Tensor],
    cameras: Cameras,
    images: torch.Tensor,
    steps: int,
    optimizer: Optional[str] = None,
    *,
    config: Optional[TTOConfig] = None,
    backward: Optional[BackwardConfig] = None,
    background: Optional[torch.Tensor] = None,
    render_fn: Optional[RenderFn] = None,
    **options,
) -> tuple[Gaussians, LayerStats]:
    """``optimization_layer`` that also returns its :class:`LayerStats`: ``forward`` (steps,
    energy, time, history) at once, ``backward`` (PCG iterations/residual/miss, fallback,
    non-finite gradient entries, time) once autograd has run the backward pass."""
    tto_cfg, bwd_cfg = layer_configs(optimizer, config, backward, **options)
    energy, theta0, lam_flat = prepare_energy(g0, lam, cameras, images, tto_cfg.backend, background, render_fn)
    # Forward TTO, graph-free (this is where unrolling would spend memory linear in steps).
    with torch.no_grad():
        theta_star, forward = run_tto(energy, theta0, int(steps), tto_cfg)
    stats = LayerStats(forward=forward)
    out = _IFTFunction.apply(theta0, lam_flat, theta_star.detach(), _Problem(energy, bwd_cfg, stats))
    return energy.template.unflatten(out), stats


def optimization_layer(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                       steps: int, optimizer: Optional[str] = None, **options) -> Gaussians:
    """Differentiable TTO: returns θ* as Gaussians whose tensors carry the IFT backward.

    Gradients flow to every tensor of g0 (through flatten) and to lam (through
    expand_groups). Arguments as ``tto.optimize``, keyword arguments as
    :func:`optimization_layer_with_stats` (``config``, ``backward`` (a BackwardConfig),
    ``background``, ``render_fn``). Keyword options named like a BackwardConfig field
    (hessian, pcg_rtol, pcg_max_iter, jvp, num_probes, damping, fallback, seed,
    preconditioner, exact_hvp, accept_rtol) set the backward solve; the others the forward
    TTO (``config.layer_configs``). For the solver's statistics use
    :func:`optimization_layer_with_stats`.
    """
    return optimization_layer_with_stats(g0, lam, cameras, images, steps, optimizer, **options)[0]


__all__ = ["optimization_layer", "optimization_layer_with_stats", "ift_solve"]
