"""Levenberg-Marquardt on the Gauss-Newton model (the 3DGS-LM idea), matrix-free.

Each iteration linearises at θ, solves (JᵀJ/P + Λ + μD) δ = −∇E by Jacobi-preconditioned
CG with matrix-free GN products, D = diag(JᵀJ/P + Λ) (estimated with ±1 probes, floored at
``pcg.JACOBI_FLOOR``), and accepts θ+δ when E decreases; μ follows Nielsen's gain-ratio
rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diff3r_cli.errors import NumericalError
from diff3r_cli.optim.config import LMConfig
from diff3r_cli.optim.guards import check_finite, check_value
from diff3r_cli.optim.pcg import PCGResult, floor_diagonal, pcg, probe_generator

# μ beyond this means no step can lower E any more: stop.
MU_MAX = 1e16


@dataclass
class _Damping:
    """Nielsen's rule for the damping μ and its growth factor ν."""

    mu: float
    nu: float = 2.0

    def accept(self, rho: float) -> None:
        self.mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        self.nu = 2.0

    def reject(self) -> None:
        self.mu *= self.nu
        self.nu *= 2.0


def _solve_damped(lin, grad: torch.Tensor, mu: float, config: LMConfig,
                  generator: Optional[torch.Generator]) -> PCGResult:
    """PCG on (JᵀJ/P + Λ + μD) δ = −∇E, preconditioned by 1 / ((1+μ) D)."""
    D = floor_diagonal(lin.gn_diag(config.num_probes, generator))
    damping = mu * D
    return pcg(lambda p: lin.gn_matvec(p, damping), -grad, M_inv=1.0 / (D * (1.0 + mu) + 0.0),
               rtol=config.pcg_rtol, max_iter=config.pcg_max_iter)


def _gain(energy, lin, x: torch.Tensor, grad: torch.Tensor, delta: torch.Tensor,
          e_now: float) -> tuple[torch.Tensor, float, float]:
    """(θ+δ, actual decrease of E, gain ratio ρ = actual / decrease predicted by the GN model)."""
    # Predicted decrease of the (undamped) GN model: −(gᵀδ + ½ δᵀHδ).
    h_delta = lin.gn_matvec(delta)
    pred = -(float(grad @ delta) + 0.5 * float(delta @ h_delta))
    x_try = x + delta
    new_energy = energy.terms(x_try).energy
    actual = e_now - new_energy if math.isfinite(new_energy) else -math.inf
    rho = actual / pred if pred > 0 else -1.0
    return x_try, actual, rho


def lm_run(
    energy,
    theta: torch.Tensor,
    steps: int,
    config: LMConfig = LMConfig(),
    progress: Optional[Callable[[dict], None]] = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Levenberg-Marquardt from θ for at most ``steps`` iterations; returns (θ, history).

    Stops early when an accepted step lowers E by less than ``config.rtol_stop`` relative,
    when ‖∇E‖ ≤ ``config.gtol``, or when μ explodes. history[k]: E at the current iterate
    before iteration k (+ a final record).
    """
    # Probes come from a CPU generator of their own (on every device), never from a global one.
    gen = probe_generator(config.seed)
    x = theta.detach().clone()
    damp = _Damping(float(config.mu0))
    hist: list[dict] = []
    lin = energy.linearize(x, config.jvp)
    for k in range(steps):
        terms, grad = lin.terms, lin.grad
        check_value(terms.energy, "energy", k)
        check_finite(grad, f"gradient at step {k}")
        rec = {"step": k, "energy": terms.energy, "photometric": terms.photometric, "proximal": terms.proximal,
               "mu": damp.mu}
        if float(grad.norm()) <= config.gtol:
            rec["stop"] = "gtol"
            hist.append(rec)
            break
        res = _solve_damped(lin, grad, damp.mu, config, gen)
        rec["pcg_iterations"] = res.iterations
        rec["pcg_residual"] = res.residual
        if res.status == "nonfinite":
            raise NumericalError(f"TTO (lm): the linear solve produced NaN/inf at step {k}")
        x_try, actual, rho = _gain(energy, lin, x, grad, res.x, terms.energy)
        rec["accepted"] = accepted = actual > 0 and rho > 0
        rec["rho"] = rho
        hist.append(rec)
        if progress is not None:
            progress(rec)
        if accepted:
            x = x_try
            damp.accept(rho)
            lin.release()
            lin = energy.linearize(x, config.jvp)
            if actual / max(abs(terms.energy), 1e-300) < config.rtol_stop:
                break
        else:
            damp.reject()
            if damp.mu > MU_MAX:
                hist[-1]["stop"] = "damping"
                break
    final = energy.terms(x)
    check_value(final.energy, "energy", len(hist))
    hist.append({"step": len(hist), "energy": final.energy, "photometric": final.photometric,
                 "proximal": final.proximal, "mu": damp.mu})
    lin.release()
    return x, hist


__all__ = ["lm_run", "MU_MAX"]
