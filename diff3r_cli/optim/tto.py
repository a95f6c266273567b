"""Uncertainty-aware test-time optimisation (TTO): θ* = argmin_θ E(θ; θ0, Λ).

Two optimisers over the flat parameter vector (see ``energy.py`` for E):

* ``"adam"`` — Adam with per-group learning rates as in standard 3DGS practice (Kerbl et
  al. 2023): means 1.6e-4 × scene extent, log-scales 5e-3, quaternions 1e-3, opacity
  logits 5e-2, SH DC 2.5e-3, higher SH bands 2.5e-3/20; β = (0.9, 0.999), ε = 1e-15.
  ``lr`` may be a float (a multiplier of all defaults) or a dict {group: lr} overriding
  groups ("mean", "scale", "rotation", "opacity", "color", "sh_rest").
  The denominator is sqrt(v̂ + ε²) instead of sqrt(v̂) + ε so that unrolled differentiation
  through the optimiser stays finite where a gradient is exactly zero.
* ``"lm"`` — Levenberg-Marquardt on the Gauss-Newton model (the 3DGS-LM idea): each step
  solves (JᵀJ/P + Λ + μD) δ = −∇E by Jacobi-preconditioned CG with matrix-free GN products,
  D = diag(JᵀJ/P + Λ) (estimated with ±1 probes); a step is accepted when E decreases, and
  μ follows Nielsen's gain-ratio rule.

Λ = 0 (or lam=None) gives plain TTO. Every NaN/inf in θ, E or a solve raises
``NumericalError``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Union

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.energy import Energy, check_inputs
from diff3r_cli.optim.pcg import pcg

ADAM_LR = {"mean": 1.6e-4, "scale": 5e-3, "rotation": 1e-3, "opacity": 5e-2, "color": 2.5e-3, "sh_rest": 2.5e-3 / 20}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-15
OPTIMIZERS = ("adam", "lm")


def scene_extent(g: Gaussians, cameras: Cameras) -> float:
    """Spatial scale for the means' learning rate.

    3DGS uses 1.1 × the largest camera distance from the cameras' centroid; with two close
    context views that is tiny, so we take the larger of it and the median distance of the
    Gaussians from that centroid.
    """
    with torch.no_grad():
        centers = cameras.centers.to(g.dtype).to(g.device)
        c = centers.mean(0)
        cam_radius = 1.1 * float((centers - c).norm(dim=1).max()) if len(centers) else 0.0
        med = float((g.means.detach() - c).norm(dim=1).median()) if g.num else 0.0
    ext = max(cam_radius, med)
    return ext if ext > 0 and math.isfinite(ext) else 1.0


def adam_lr_vector(g: Gaussians, extent: float, lr: Union[None, float, dict] = None) -> torch.Tensor:
    """Per-scalar learning rates in the flatten() layout."""
    rates = dict(ADAM_LR)
    rates["mean"] = ADAM_LR["mean"] * extent
    if isinstance(lr, (int, float)):
        if not (lr > 0 and math.isfinite(lr)):
            raise UserError(f"learning-rate multiplier {lr} is not a positive number", fix="pass lr > 0")
        rates = {k: v * float(lr) for k, v in rates.items()}
    elif isinstance(lr, dict):
        unknown = set(lr) - set(rates)
        if unknown:
            raise UserError(f"unknown learning-rate group(s) {sorted(unknown)}", fix=f"use keys from {sorted(rates)}")
        rates.update({k: float(v) for k, v in lr.items()})
    elif lr is not None:
        raise UserError(f"lr must be None, a float multiplier or a dict, got {type(lr).__name__}")
    n = g.num
    k = g.sh.shape[1]
    sh_rates = torch.full((n, k, 3), rates["sh_rest"], dtype=g.dtype, device=g.device)
    sh_rates[:, 0] = rates["color"]
    parts = [
        torch.full((n * 3,), rates["mean"], dtype=g.dtype, device=g.device),
        torch.full((n * 3,), rates["scale"], dtype=g.dtype, device=g.device),
        torch.full((n * 4,), rates["rotation"], dtype=g.dtype, device=g.device),
        torch.full((n,), rates["opacity"], dtype=g.dtype, device=g.device),
        sh_rates.reshape(-1),
    ]
    return torch.cat(parts)


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"TTO: {what} contains NaN or inf")


def _check_value(v: float, what: str, step: int) -> None:
    if not math.isfinite(v):
        raise NumericalError(f"TTO: {what} became {v} at step {step} (try a smaller learning rate or larger damping)")


def adam_run(
    energy: Energy,
    theta: torch.Tensor,
    steps: int,
    lr_vec: torch.Tensor,
    *,
    create_graph: bool = False,
    rtol_stop: float = 0.0,
    patience: int = 3,
    progress: Optional[Callable[[dict], None]] = None,
    eps: float = ADAM_EPS,
    snapshots: Optional[set[int]] = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Run Adam on E from θ; returns (θ_K, history of K+1 records).

    With create_graph=True every step stays in the autograd graph (unrolled differentiation;
    θ must then be a non-leaf or a leaf requiring grad). history[k] is E at the iterate after
    k updates. snapshots: steps whose iterate is kept in history[k]["theta"] (one run of K
    steps then serves evaluations at several smaller budgets).
    """
    b1, b2 = ADAM_BETAS
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    hist: list[dict] = []
    small = 0
    x = theta if create_graph else theta.detach()
    for k in range(steps + 1):
        terms, grad = energy.value_and_grad(x, create_graph=create_graph)
        _check_value(terms.energy, "energy", k)
        rec = {"step": k, "energy": terms.energy, "photometric": terms.photometric, "proximal": terms.proximal}
        if snapshots and k in snapshots:
            rec["theta"] = x.detach().clone()
        hist.append(rec)
        if progress is not None:
            progress(rec)
        if k == steps:
            break
        if k > 0 and rtol_stop > 0:
            prev = hist[-2]["energy"]
            rel = (prev - terms.energy) / max(abs(prev), 1e-30)
            small = small + 1 if 0 <= rel < rtol_stop else 0
            if small >= patience:
                break
        _check_finite(grad, f"gradient at step {k}")
        if create_graph:  # out of place: every step stays in the autograd graph
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            mhat = m / (1 - b1 ** (k + 1))
            vhat = v / (1 - b2 ** (k + 1))
            x = x - lr_vec * mhat / torch.sqrt(vhat + eps * eps)
        else:  # the same update in place: no temporaries over the (N·14)-long vectors
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = torch.div(v, 1 - b2 ** (k + 1)).add_(eps * eps).sqrt_()
            x = x.detach() - torch.mul(m, lr_vec).div_(denom).mul_(1.0 / (1 - b1 ** (k + 1)))
            _check_finite(x, f"parameters after step {k}")
    return x, hist


def lm_run(
    energy: Energy,
    theta: torch.Tensor,
    steps: int,
    *,
    rtol_stop: float = 1e-6,
    mu0: float = 1e-2,
    pcg_rtol: float = 1e-2,
    pcg_max_iter: int = 50,
    num_probes: int = 4,
    jvp: str = "auto",
    seed: int = 0,
    gtol: float = 0.0,
    progress: Optional[Callable[[dict], None]] = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Levenberg-Marquardt with matrix-free PCG on the Gauss-Newton model.

    Each of the ``steps`` iterations linearises at θ, solves (JᵀJ/P + Λ + μD) δ = −∇E to
    relative residual ``pcg_rtol``, and accepts θ+δ if E decreases. Stops early when an
    accepted step lowers E by less than ``rtol_stop`` relative, when ‖∇E‖ ≤ gtol, or when μ
    explodes. history[k]: E at the current iterate before iteration k (+ a final record).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = theta.detach().clone()
    mu, nu = float(mu0), 2.0
    hist: list[dict] = []
    lin = energy.linearize(x, jvp)
    for k in range(steps):
        terms = lin.terms
        _check_value(terms.energy, "energy", k)
        grad = lin.grad
        _check_finite(grad, f"gradient at step {k}")
        rec = {"step": k, "energy": terms.energy, "photometric": terms.photometric, "proximal": terms.proximal,
               "mu": mu}
        gnorm = float(grad.norm())
        if gnorm <= gtol:
            rec["stop"] = "gtol"
            hist.append(rec)
            break
        # Probe generator lives on the CPU; move probes with the residual's device in estimate.
        diag = lin.gn_diag(num_probes, gen if x.device.type == "cpu" else None)
        d_max = float(diag.max())
        D = diag.clamp_min(1e-6 * d_max if d_max > 0 else 1.0)
        damping = mu * D
        res = pcg(lambda p: lin.gn_matvec(p, damping), -grad, M_inv=1.0 / (D * (1.0 + mu) + 0.0),
                  rtol=pcg_rtol, max_iter=pcg_max_iter)
        rec["pcg_iterations"] = res.iterations
        rec["pcg_residual"] = res.residual
        if res.status == "nonfinite":
            raise NumericalError(f"TTO (lm): the linear solve produced NaN/inf at step {k}")
        delta = res.x
        # Predicted decrease of the (undamped) GN model: −(gᵀδ + ½ δᵀHδ).
        h_delta = lin.gn_matvec(delta)
        pred = -(float(grad @ delta) + 0.5 * float(delta @ h_delta))
        x_try = x + delta
        new_terms = energy.terms(x_try)
        actual = terms.energy - new_terms.energy if math.isfinite(new_terms.energy) else -math.inf
        rho = actual / pred if pred > 0 else -1.0
        accepted = actual > 0 and rho > 0
        rec["accepted"] = accepted
        rec["rho"] = rho
        hist.append(rec)
        if progress is not None:
            progress(rec)
        if accepted:
            x = x_try
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            lin.release()
            lin = energy.linearize(x, jvp)
            if actual / max(abs(terms.energy), 1e-300) < rtol_stop:
                break
        else:
            mu *= nu
            nu *= 2.0
            if mu > 1e16:
                hist[-1]["stop"] = "damping"
                break
    final = energy.terms(x)
    _check_value(final.energy, "energy", len(hist))
    hist.append({"step": len(hist), "energy": final.energy, "photometric": final.photometric,
                 "proximal": final.proximal, "mu": mu})
    lin.release()
    return x, hist


def optimize(
    g0: Gaussians,
    lam: Optional[torch.Tensor],
    cameras: Cameras,
    images: torch.Tensor,
    steps: int,
    optimizer: str = "adam",
    *,
    lr: Union[None, float, dict] = None,
    rtol_stop: Optional[float] = None,
    background: Optional[torch.Tensor] = None,
    backend: str = "auto",
    progress: Optional[Callable[[dict], None]] = None,
    render_fn=None,
    **lm_options,
) -> tuple[Gaussians, list[dict]]:
    """Minimise E(θ; θ0, Λ) on the context views; returns (g_star, history).

    g0: initial Gaussians θ0 (gradients are not tracked; see ``optimization_layer``).
    lam: (N,5) weights ≥ 0 for [mean, scale, rotation, opacity, color]; None means 0.
    images: (C,H,W,3) in [0,1], one per camera. steps: Adam steps or LM iterations.
    rtol_stop: early stop on relative energy decrease (default: 0 i.e. off for Adam, 1e-6
    for LM; Adam needs ``patience`` (3) consecutive small steps). lm_options: mu0,
    pcg_rtol, pcg_max_iter, num_probes, jvp, seed, gtol (LM only) or patience, adam_eps (Adam).
    history: list of dicts with step, energy, photometric, proximal (+ LM diagnostics).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}", fix=f"use one of {', '.join(OPTIMIZERS)}")
    if int(steps) < 0:
        raise UserError(f"steps must be >= 0, got {steps}", fix="pass a non-negative number of steps")
    lam = check_inputs(g0, lam, cameras, images)
    g0 = g0.detach()
    theta0 = g0.flatten()
    _check_finite(theta0, "the initial Gaussians θ0")
    lam_flat = g0.expand_groups(lam.detach().to(g0.dtype))
    _check_finite(lam_flat, "the uncertainty weights Λ")
    energy = Energy(g0, theta0, lam_flat, cameras, images, background, backend, render_fn)
    t0 = time.perf_counter()
    if optimizer == "adam":
        patience = int(lm_options.pop("patience", 3))
        eps = float(lm_options.pop("adam_eps", ADAM_EPS))
        snapshots = lm_options.pop("snapshots", None)
        if lm_options:
            raise TypeError(f"unexpected options for adam: {sorted(lm_options)}")
        lr_vec = adam_lr_vector(g0, scene_extent(g0, cameras), lr)
        theta, hist = adam_run(energy, theta0, int(steps), lr_vec, rtol_stop=rtol_stop or 0.0,
                               patience=patience, progress=progress, eps=eps, snapshots=snapshots)
    else:
        theta, hist = lm_run(energy, theta0, int(steps), rtol_stop=1e-6 if rtol_stop is None else rtol_stop,
                             progress=progress, **lm_options)
    _check_finite(theta, "the optimised parameters")
    if hist:
        hist[-1]["time_s"] = time.perf_counter() - t0
    return g0.unflatten(theta.detach()), hist


__all__ = ["optimize", "adam_run", "lm_run", "adam_lr_vector", "scene_extent", "ADAM_LR", "OPTIMIZERS"]
