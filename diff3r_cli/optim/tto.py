"""Uncertainty-aware test-time optimisation (TTO): θ* = argmin_θ E(θ; θ0, Λ).

Two optimisers over the flat parameter vector (see ``energy.py`` for E; settings in
``config.TTOConfig``):

* ``"adam"`` — Adam with per-group learning rates as in standard 3DGS practice (Kerbl et
  al. 2023): means 1.6e-4 × scene extent, log-scales 5e-3, quaternions 1e-3, opacity
  logits 5e-2, SH DC 2.5e-3, higher SH bands 2.5e-3/20; β = (0.9, 0.999), ε = 1e-15.
  ``lr`` may be a float (a multiplier of all defaults) or a dict {group: lr} overriding
  groups ("mean", "scale", "rotation", "opacity", "color", "sh_rest").
  The denominator is sqrt(v̂ + ε²) instead of sqrt(v̂) + ε so that unrolled differentiation
  through the optimiser stays finite where a gradient is exactly zero.
* ``"lm"`` — Levenberg-Marquardt on the Gauss-Newton model (``lm.py``).

Λ = 0 (or lam=None) gives plain TTO. Every NaN/inf in θ, E or a solve raises
``NumericalError``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Collection, Mapping, Optional, Union

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.appearance import CompensatedEnergy, decide
from diff3r_cli.optim.config import ADAM_EPS, OPTIMIZERS, TTOConfig, tto_config
from diff3r_cli.optim.energy import Energy, RenderFn, check_inputs
from diff3r_cli.optim.guards import check_finite, check_value
from diff3r_cli.optim.lm import lm_run
from diff3r_cli.optim.stats import TTOStats

ADAM_LR = {"mean": 1.6e-4, "scale": 5e-3, "rotation": 1e-3, "opacity": 5e-2, "color": 2.5e-3, "sh_rest": 2.5e-3 / 20}
ADAM_BETAS = (0.9, 0.999)


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


def adam_lr_vector(g: Gaussians, extent: float, lr: Union[None, float, Mapping[str, float]] = None) -> torch.Tensor:
    """Per-scalar learning rates in the flatten() layout."""
    rates = dict(ADAM_LR)
    rates["mean"] = ADAM_LR["mean"] * extent
    if isinstance(lr, (int, float)):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning-rate multiplier {lr} is not a positive number")
        rates = {k: v * float(lr) for k, v in rates.items()}
    elif isinstance(lr, Mapping):
        unknown = set(lr) - set(rates)
        if unknown:
            raise ValueError(f"unknown learning-rate group(s) {sorted(unknown)} (use keys from {sorted(rates)})")
        rates.update({k: float(v) for k, v in lr.items()})
    elif lr is not None:
        raise TypeError(f"lr must be None, a float multiplier or a dict, got {type(lr).__name__}")
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
    snapshots: Optional[Collection[int]] = None,
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
        check_value(terms.energy, "energy", k)
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
        if create_graph:  # out of place: every step stays in the autograd graph
            check_finite(grad, f"gradient at step {k}")
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            mhat = m / (1 - b1 ** (k + 1))
            vhat = v / (1 - b2 ** (k + 1))
            x = x - lr_vec * mhat / torch.sqrt(vhat + eps * eps)
        else:
            if k == 0:
                x = x.detach().clone()  # updated in place from here on: never the caller's tensor
            _adam_step_inplace(x, m, v, grad, lr_vec, k, eps)
    return x, hist


def _adam_step_inplace(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor,
                       lr_vec: torch.Tensor, k: int, eps: float) -> None:
    """Adam update number k+1 of x, m, v in place; NumericalError on a non-finite gradient or result.

    The compiled CPU kernel's fused op does it in one pass (the torch path below takes about
    ten passes plus two finiteness scans over the (N·14)-long vectors: a tenth of a 256²
    refine step); the torch path is the reference and the fallback.
    """
    b1, b2 = ADAM_BETAS
    bc1, bc2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
    if _fused_adam_available(x, m, v, grad, lr_vec):
        bad = torch.ops.diff3r_cpu.adam_step(x, m, v, grad, lr_vec, b1, b2, bc1, bc2, eps * eps)
        if bad:
            check_finite(grad, f"gradient at step {k}")
            check_finite(x, f"parameters after step {k}")
        return
    check_finite(grad, f"gradient at step {k}")
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = torch.div(v, bc2).add_(eps * eps).sqrt_()
    x.sub_(torch.mul(m, lr_vec).div_(denom).mul_(1.0 / bc1))
    check_finite(x, f"parameters after step {k}")


def _fused_adam_available(*ts: torch.Tensor) -> bool:
    if not all(t.device.type == "cpu" and t.is_contiguous() and t.dtype == ts[0].dtype for t in ts):
        return False
    if ts[0].dtype not in (torch.float32, torch.float64) or ts[0].requires_grad:
        return False
    from diff3r_cli.render import cpu_ext

    return cpu_ext.load()


def prepare_energy(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                   backend: str = "auto", background: Optional[torch.Tensor] = None,
                   render_fn: Optional[RenderFn] = None, pixel_weights: Optional[torch.Tensor] = None
                   ) -> tuple[Energy, torch.Tensor, torch.Tensor]:
    """Validate the inputs and build E; returns (energy, θ0, λ) with θ0 = g0.flatten() and λ
    the per-scalar weights, both still in g0's and lam's autograd graphs (the energy holds
    detached copies). pixel_weights: (C,H,W) confidences of the photos' pixels in [0,1]."""
    lam = check_inputs(g0, lam, cameras, images)
    theta0 = g0.flatten()
    check_finite(theta0.detach(), "the initial Gaussians θ0")
    lam_flat = g0.expand_groups(lam.to(g0.dtype))
    check_finite(lam_flat.detach(), "the uncertainty weights Λ")
    energy = Energy(g0.detach(), theta0.detach(), lam_flat.detach(), cameras, images, background, backend, render_fn,
                    pixel_weights)
    return energy, theta0, lam_flat


def run_tto(energy: Energy, theta0: torch.Tensor, steps: int, config: TTOConfig,
            progress: Optional[Callable[[dict], None]] = None) -> tuple[torch.Tensor, TTOStats]:
    """Minimise ``energy`` from θ0 with the configured optimiser; returns (θ*, stats)."""
    t0 = time.perf_counter()
    if config.optimizer == "adam":
        a = config.adam
        lr_vec = adam_lr_vector(energy.template, scene_extent(energy.template, energy.cameras), a.lr)
        if isinstance(energy, CompensatedEnergy):  # the per-view colour transforms ride at θ's tail
            lr_vec = torch.cat([lr_vec, energy.lr_tail()])
        theta, hist = adam_run(energy, theta0.detach(), steps, lr_vec, rtol_stop=a.rtol_stop, patience=a.patience,
                               progress=progress, eps=a.eps, snapshots=a.snapshots)
    else:
        theta, hist = lm_run(energy, theta0.detach(), steps, config.lm, progress=progress)
    check_finite(theta, "the optimised parameters")
    return theta, TTOStats.from_history(hist, time.perf_counter() - t0)


def optimize(
    g0: Gaussians,
    lam: Optional[torch.Tensor],
    cameras: Cameras,
    images: torch.Tensor,
    steps: int,
    optimizer: Optional[str] = None,
    *,
    config: Optional[TTOConfig] = None,
    background: Optional[torch.Tensor] = None,
    progress: Optional[Callable[[dict], None]] = None,
    render_fn: Optional[RenderFn] = None,
    compensation: str = "off",
    pixel_weights: Optional[torch.Tensor] = None,
    **options,
) -> tuple[Gaussians, list[dict]]:
    """Minimise E(θ; θ0, Λ) on the context views; returns (g_star, history).

    g0: initial Gaussians θ0 (gradients are not tracked; see ``optimization_layer``).
    lam: (N,5) weights ≥ 0 for [mean, scale, rotation, opacity, color]; None means 0.
    images: (C,H,W,3) in [0,1], one per camera. steps: Adam steps or LM iterations.
    optimizer: "adam" | "lm" (default: ``config.optimizer``, "adam"). config: a TTOConfig;
    options: its settings by name (backend, lr, rtol_stop, patience, adam_eps, snapshots for
    Adam; rtol_stop, mu0, pcg_rtol, pcg_max_iter, num_probes, jvp, seed, gtol for LM), see
    ``config.tto_config``. progress: called with each history record.
    compensation: per-view exposure/white-balance transforms optimised jointly ("on"), never
    ("off", the default here: the layer and training use plain E), or when the context views
    differ in exposure ("auto"; see ``appearance.py``). They are not baked into the Gaussians.
    pixel_weights: (C,H,W) confidences in [0,1] of the photos' pixels, weighting the photometric term
    (``diff3r_cli.depth.consistency``: low where the other views' Gaussians contradict the photo).
    history: list of dicts with step, energy, photometric, proximal (+ LM diagnostics); the
    last one also has time_s and "compensation" ({"on", "spread"}) and, when on, "appearance"
    (V,6: per-channel gain, bias per view); snapshot records hold the Gaussians' θ in "theta" and
    the transforms in "appearance".
    """
    cfg = tto_config(optimizer, config, **options)
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    g0 = g0.detach()
    lam = None if lam is None else lam.detach()
    energy, theta0, _ = prepare_energy(g0, lam, cameras, images, cfg.backend, background, render_fn,
                                      pixel_weights)
    on, spread = decide(compensation, g0, cameras, images, cfg.backend)
    if on:
        energy = CompensatedEnergy(energy)
        theta0 = energy.theta0
        progress = _splitting(energy, progress)
    theta, stats = run_tto(energy, theta0, int(steps), cfg, progress)
    appearance = None
    if on:
        theta, appearance = energy.split(theta.detach())
    if stats.history:
        last = stats.history[-1]
        last["time_s"] = stats.time_s
        last["compensation"] = {"on": on, "spread": spread}
        if appearance is not None:
            last["appearance"] = appearance.clone()
    return g0.unflatten(theta.detach()), stats.history


def _splitting(energy: CompensatedEnergy, progress: Optional[Callable[[dict], None]]) -> Callable[[dict], None]:
    """A progress callback that splits each snapshot's extended θ into "theta" (the Gaussians')
    and "appearance" (V,6) before handing the record on."""
    def call(rec: dict) -> None:
        if "theta" in rec:
            tg, a = energy.split(rec["theta"])
            rec["theta"], rec["appearance"] = tg, a.clone()
        if progress is not None:
            progress(rec)
    return call


__all__ = ["optimize", "run_tto", "prepare_energy", "adam_run", "lm_run", "adam_lr_vector", "scene_extent", "ADAM_LR",
           "ADAM_EPS", "OPTIMIZERS"]
