"""Reference gradients for ``benchmarks/layer.py``: what the IFT gradient is compared with.

Two references, both in float64 on an ``Energy`` (any renderer):

* **unrolled** (Adam rows): reverse-mode differentiation through the same K Adam steps.
  ``adam_trace`` runs the steps (the update of ``optim/tto.py``) and keeps every iterate;
  ``adam_adjoint`` walks them backwards. Each reverse step needs one product of the exact
  Hessian ∇²E with a vector, by double backward through one step's graph
  (``Energy.exact_hessian(x, "autograd")`` on ``render_rgb_autograd``), so memory is K
  stored iterates plus one render graph — where ``create_graph=True`` through all K steps
  (``unrolled_autograd``, the old benchmark's reference) needs ~150 MB per step at 64² and
  cannot reach K = 200 on a 24 GB machine. The two agree to round-off
  (tests/test_layer_benchmark.py). Central differences of gradients are no substitute
  here: Adam's 1/√v̂ makes the adjoint of coordinates with tiny gradients ~lr/|g| large,
  and a difference quotient's rounding noise, scaled by that, swamps the result.
* **converged** (LM rows, and a second opinion on every row): the exact IFT gradient at a
  θ* far closer to stationary than any tested solver gets — a long Adam run with a
  decaying learning rate — with exact Hessian-vector products and a tight PCG. Unrolling
  through LM's PCG iterations is not affordable here.

Gradients are returned flat (θ0 in ``Gaussians.flatten`` layout) and per group for Λ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.config import ADAM_EPS, BackwardConfig, tto_config
from diff3r_cli.optim.energy import Energy
from diff3r_cli.optim.implicit import ift_solve
from diff3r_cli.optim.stats import SolveInfo
from diff3r_cli.optim.tto import ADAM_BETAS, adam_run, run_tto

LossGrad = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Grads:
    """∂ℓ/∂θ0 (flat) and ∂ℓ/∂Λ ((N,5), one entry per Gaussian and group)."""

    theta0: torch.Tensor
    lam: torch.Tensor


@dataclass
class AdamTrace:
    """Adam's iterates: xs[k] = x_k (k = 0..K), grads[k] = ∇E(x_k), ms[k], vs[k] = the
    moments after update k+1 (k = 0..K−1)."""

    lr_vec: torch.Tensor
    eps: float
    xs: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    ms: list = field(default_factory=list)
    vs: list = field(default_factory=list)


def lam_group_grad(template: Gaussians, lam: torch.Tensor, g_flat: torch.Tensor) -> torch.Tensor:
    """Per-scalar gradient w.r.t. the expanded Λ -> gradient w.r.t. the (N,5) group weights."""
    with torch.enable_grad():
        leaf = lam.detach().to(g_flat.dtype).requires_grad_(True)
        (out,) = torch.autograd.grad(template.expand_groups(leaf), leaf, g_flat)
    return out


def adam_trace(energy: Energy, theta0: torch.Tensor, steps: int, lr_vec: torch.Tensor,
               eps: float = ADAM_EPS) -> AdamTrace:
    """Run ``steps`` Adam updates of ``tto.adam_run`` from θ0, keeping every iterate and moment."""
    b1, b2 = ADAM_BETAS
    tr = AdamTrace(lr_vec, eps)
    x = theta0.detach().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for k in range(steps + 1):
        g = energy.value_and_grad(x)[1]
        tr.xs.append(x)
        tr.grads.append(g)
        if k == steps:
            break
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        tr.ms.append(m)
        tr.vs.append(v)
        x = x - lr_vec * (m / (1 - b1 ** (k + 1))) / torch.sqrt(v / (1 - b2 ** (k + 1)) + eps * eps)
    return tr


def adam_adjoint(energy: Energy, trace: AdamTrace, steps: int, loss_grad: LossGrad,
                 lam: torch.Tensor, hvp: str = "autograd") -> Grads:
    """Reverse-mode gradient of ℓ(x_K) through the first ``steps`` updates of ``trace``.

    Adjoints x̄, m̄, v̄ of (x_{k+1}, m_{k+1}, v_{k+1}) are carried from k = K−1 down to 0;
    ∇E(x) = ∇photo(x) + Λ(x − θ0) gives x̄ += ∇²E ḡ, θ0̄ −= Λḡ, Λ̄ += ḡ ⊙ (x − θ0).
    ``hvp``: the ``Energy.exact_hessian`` mode ("autograd" needs a twice-differentiable renderer).
    """
    b1, b2 = ADAM_BETAS
    theta0, lam_flat, eps = energy.theta0, energy.lam, trace.eps
    xb = loss_grad(trace.xs[steps])
    mb, vb = torch.zeros_like(xb), torch.zeros_like(xb)
    t0b, lamb = torch.zeros_like(xb), torch.zeros_like(xb)
    for k in range(steps - 1, -1, -1):
        x, g, m, v = trace.xs[k], trace.grads[k], trace.ms[k], trace.vs[k]
        bc1, bc2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
        d = torch.sqrt(v / bc2 + eps * eps)
        # x_{k+1} = x_k − lr·(m/bc1)/d: its adjoint flows into m and v of this update.
        mt = mb - xb * trace.lr_vec / (bc1 * d)
        vt = vb + xb * trace.lr_vec * m / (2.0 * bc1 * bc2 * d ** 3)
        gb = (1 - b1) * mt + 2.0 * (1 - b2) * g * vt
        xb = xb + energy.exact_hessian(x, hvp).matvec(gb)
        t0b -= lam_flat * gb
        lamb += gb * (x - theta0)
        mb, vb = b1 * mt, b2 * vt
    # x_0 is θ0 itself.
    return Grads(theta0=t0b + xb, lam=lam_group_grad(energy.template, lam, lamb))


def unrolled_autograd(energy: Energy, steps: int, lr_vec: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                      lam: torch.Tensor, eps: float = ADAM_EPS) -> Grads:
    """The literal reference: ``adam_run(create_graph=True)`` with θ0 and Λ in the graph
    (the energy's renderer must be twice differentiable, e.g. ``render_rgb_autograd``).
    Memory grows with K: for small scenes and for validating ``adam_adjoint``."""
    template = energy.template
    theta0 = energy.theta0.clone().requires_grad_(True)
    lam_leaf = lam.detach().to(theta0.dtype).clone().requires_grad_(True)
    lam_flat = template.expand_groups(lam_leaf)

    class _DiffEnergy:  # E with θ0 and Λ as graph inputs (Energy holds them detached)
        def value_and_grad(self, x, create_graph=False):
            r = energy.residual(x)
            d = x - theta0
            e = 0.5 * (r * r).sum() / energy.num_pixels + 0.5 * (lam_flat * d * d).sum()
            (grad,) = torch.autograd.grad(e, x, create_graph=True)
            return energy.terms(x.detach()), grad

    with torch.enable_grad():
        x, _ = adam_run(_DiffEnergy(), theta0, steps, lr_vec, create_graph=True, eps=eps)
        g_t0, g_lam = torch.autograd.grad(loss(x), [theta0, lam_leaf])
    return Grads(theta0=g_t0, lam=g_lam)


def ift_grads(energy: Energy, theta_star: torch.Tensor, loss_grad: LossGrad, lam: torch.Tensor,
              config: BackwardConfig) -> tuple[Grads, SolveInfo]:
    """The layer's formulas outside autograd: v = H⁻¹∇ℓ(θ*), ∂θ0 = Λv, ∂λ = −v⊙(θ*−θ0)."""
    v, info = ift_solve(energy, theta_star, loss_grad(theta_star), config)
    g_lam = lam_group_grad(energy.template, lam, -v * (theta_star - energy.theta0))
    return Grads(theta0=energy.lam * v, lam=g_lam), info


# The converged point: Adam with a decaying learning-rate multiplier (large first, to cross
# the flat directions of a small Λ; small last, to damp the oscillation a large rate leaves).
CONVERGE_SCHEDULE = (10.0, 3.0, 1.0, 0.3, 0.1)
# Solved to 1e-6 where PCG gets there; a solution is still used up to 0.1 relative residual
# (reported): at the model's Λ the system is so poorly conditioned that 400 GN-PCG iterations
# end near 0.03 on real 64² examples, and a zero vector is no reference.
REFERENCE_BACKWARD = BackwardConfig(hessian="exact", exact_hvp="fd", pcg_rtol=1e-6, pcg_max_iter=600,
                                    fallback="zeros", accept_rtol=0.1)


def converged_point(energy: Energy, theta0: torch.Tensor, steps_per_stage: int = 150,
                    schedule: tuple = CONVERGE_SCHEDULE) -> torch.Tensor:
    """θ* from Adam over ``schedule`` (learning-rate multipliers), ``steps_per_stage`` each."""
    x = theta0.detach()
    for mult in schedule:
        x, _ = run_tto(energy, x, steps_per_stage, tto_config("adam", lr=mult))
    return x


def converged_reference(energy: Energy, theta0: torch.Tensor, loss_grad: LossGrad, lam: torch.Tensor,
                        steps_per_stage: int = 150) -> tuple[Grads, dict]:
    """Exact-Hessian IFT gradient at ``converged_point``; falls back to the Gauss-Newton
    Hessian (same tight PCG) when the exact one is indefinite there. Returns (grads, info)."""
    theta_star = converged_point(energy, theta0, steps_per_stage)
    g0 = float(energy.value_and_grad(theta0)[1].norm())
    info = {"ratio": float(energy.value_and_grad(theta_star)[1].norm()) / g0,
            "energy": energy.terms(theta_star).energy, "hessian": "exact"}
    grads, solve = ift_grads(energy, theta_star, loss_grad, lam, REFERENCE_BACKWARD)
    if solve.fallback is not None:
        gn = BackwardConfig(pcg_rtol=REFERENCE_BACKWARD.pcg_rtol, pcg_max_iter=REFERENCE_BACKWARD.pcg_max_iter,
                            fallback="zeros", accept_rtol=REFERENCE_BACKWARD.accept_rtol)
        info["hessian"] = f"gn (the exact-Hessian solve ended {solve.pcg_status} at {solve.pcg_residual:.2g})"
        grads, solve = ift_grads(energy, theta_star, loss_grad, lam, gn)
    info.update(pcg_iterations=solve.pcg_iterations, pcg_residual=solve.pcg_residual, pcg_status=solve.pcg_status,
                fallback=solve.fallback)
    return grads, info


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos∠(a, b) in float64 (0 when either is zero)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def compare(ift: Grads, ref: Grads, lam: torch.Tensor, prefix: str = "") -> dict:
    """Cosines for ∂θ0, ∂Λ and ∂logΛ (= Λ⊙∂Λ, what the network's log-Λ head receives)."""
    lam = lam.detach().double()
    return {f"{prefix}cos_theta0": cosine(ift.theta0, ref.theta0), f"{prefix}cos_lam": cosine(ift.lam, ref.lam),
            f"{prefix}cos_loglam": cosine(lam * ift.lam.double(), lam * ref.lam.double())}


__all__ = ["Grads", "AdamTrace", "adam_trace", "adam_adjoint", "unrolled_autograd", "ift_grads",
           "converged_point", "converged_reference", "lam_group_grad", "cosine", "compare", "REFERENCE_BACKWARD"]

