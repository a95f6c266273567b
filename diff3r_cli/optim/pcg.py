"""Matrix-free preconditioned conjugate gradients and a stochastic Jacobi preconditioner.

``pcg`` solves A x = b for a symmetric positive (semi-)definite operator given only as a
function v -> A v. ``estimate_jtj_diag`` estimates diag(JᵀJ) of a Jacobian J known only
through vector-Jacobian products, using random ±1 (Rademacher) probes z:

    E_z[(Jᵀz)_j²] = Σ_p J_pj² = diag(JᵀJ)_j        (because E[z_p z_q] = δ_pq)

so each probe costs one vjp. ``jacobi_preconditioner`` turns diag(JᵀJ)/P + Λ into M⁻¹.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

Operator = Union[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]


@dataclass
class PCGResult:
    """Outcome of a PCG solve.

    x: the solution (the last finite iterate when the solve broke down).
    iterations: number of operator applications after the initial residual.
    residuals: relative residual ‖b − A x_k‖ / ‖b‖ for k = 0..iterations (recursive residual).
    converged: True when the relative residual reached rtol (or b == 0).
    status: "converged" | "max_iter" | "nonfinite" | "indefinite".
    """

    x: torch.Tensor
    iterations: int
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    status: str = "max_iter"

    @property
    def residual(self) -> float:
        """Final relative residual."""
        return self.residuals[-1] if self.residuals else float("nan")


def _as_callable(op: Optional[Operator], name: str) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Accept a callable, a dense matrix, or (for a preconditioner) a vector = diag(M⁻¹)."""
    if op is None or callable(op):
        return op
    if isinstance(op, torch.Tensor):
        if op.dim() == 1:
            return lambda v: op * v
        if op.dim() == 2:
            return lambda v: op @ v
    raise TypeError(f"{name} must be a callable, a vector (diagonal) or a matrix, got {type(op).__name__}")


def pcg(
    A: Operator,
    b: torch.Tensor,
    M_inv: Optional[Operator] = None,
    x0: Optional[torch.Tensor] = None,
    rtol: float = 1e-6,
    max_iter: Optional[int] = None,
    atol: float = 0.0,
) -> PCGResult:
    """Solve A x = b by (preconditioned) conjugate gradients, matrix-free.

    A: SPD operator, a callable v -> A v (or a dense matrix). b: right-hand side (1-D).
    M_inv: preconditioner z = M⁻¹ r as a callable, a vector (the diagonal of M⁻¹), a dense
    matrix, or None for plain CG. Stops when ‖r‖ ≤ max(rtol·‖b‖, atol) or after max_iter
    (default 2·len(b)) iterations. Never raises on NaN/inf: it stops, returns the last finite
    iterate and status "nonfinite"; a non-positive curvature pᵀAp ≤ 0 gives "indefinite".
    Works in the dtype of b (float32 or float64).
    """
    A_fn = _as_callable(A, "A")
    M_fn = _as_callable(M_inv, "M_inv")
    if b.dim() != 1:
        raise ValueError(f"pcg expects a 1-D right-hand side, got shape {tuple(b.shape)}")
    n = b.numel()
    max_iter = 2 * n if max_iter is None else int(max_iter)
    b_norm = float(torch.linalg.vector_norm(b))
    if not math.isfinite(b_norm):
        return PCGResult(torch.zeros_like(b) if x0 is None else x0.clone(), 0, [float("nan")], False, "nonfinite")
    if b_norm == 0.0:
        return PCGResult(torch.zeros_like(b), 0, [0.0], True, "converged")
    tol = max(rtol * b_norm, atol)

    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - A_fn(x)
    r_norm = float(torch.linalg.vector_norm(r))
    history = [r_norm / b_norm]
    if not math.isfinite(r_norm):
        return PCGResult(torch.zeros_like(b), 0, history, False, "nonfinite")
    if r_norm <= tol:
        return PCGResult(x, 0, history, True, "converged")
    x, it, status = _cg_iterations(A_fn, M_fn, x, r, b_norm, tol, max_iter, history)
    return PCGResult(x, it, history, status == "converged", status)


def _cg_iterations(A_fn: Callable[[torch.Tensor], torch.Tensor], M_fn: Optional[Callable[[torch.Tensor], torch.Tensor]],
                   x: torch.Tensor, r: torch.Tensor, b_norm: float, tol: float, max_iter: int,
                   history: list[float]) -> tuple[torch.Tensor, int, str]:
    """The PCG recurrence from iterate x with residual r ≠ 0; appends relative residuals to
    ``history`` and returns (x, iterations, status)."""
    z = M_fn(r) if M_fn is not None else r
    p = z.clone()
    rz = torch.dot(r, z)
    status = "max_iter"
    it = 0
    while it < max_iter:
        Ap = A_fn(p)
        it += 1
        pAp = torch.dot(p, Ap)
        pAp_f, rz_f = float(pAp), float(rz)
        if not (math.isfinite(pAp_f) and math.isfinite(rz_f)):
            status = "nonfinite"
            history.append(float("nan"))
            break
        if pAp_f <= 0.0 or rz_f <= 0.0:
            # A (or M) is not positive definite along p: CG's step is meaningless beyond here.
            status = "indefinite"
            break
        alpha = rz / pAp
        x_new = x + alpha * p
        r = r - alpha * Ap
        r_norm = float(torch.linalg.vector_norm(r))
        if not math.isfinite(r_norm) or not bool(torch.isfinite(x_new).all()):
            status = "nonfinite"
            history.append(float("nan"))
            break
        x = x_new
        history.append(r_norm / b_norm)
        if r_norm <= tol:
            status = "converged"
            break
        z = M_fn(r) if M_fn is not None else r
        rz_new = torch.dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p = z + beta * p
    return x, it, status


def rademacher(shape, dtype: torch.dtype, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random ±1 tensor on ``device``, drawn on the generator's own device (so a CPU generator
    gives the same probes for tensors on any device)."""
    src = generator.device if generator is not None else device
    bits = torch.randint(0, 2, shape, generator=generator, device=src)
    return (2 * bits - 1).to(device=device, dtype=dtype)


def probe_generator(seed: int) -> torch.Generator:
    """A CPU generator of its own for the ±1 probes, seeded with ``seed``.

    Probes never draw from torch's global generators, on any device: a solve does not shift
    the random stream of its caller (training's dropout, samplers), and the probes are the
    same on the CPU and on a GPU and after a resume (``train.checkpoint.restore_rng`` puts the
    global states back, which the probes do not depend on).
    """
    return torch.Generator(device="cpu").manual_seed(int(seed))


def estimate_jtj_diag(
    vjp: Callable[[torch.Tensor], torch.Tensor],
    out_shape,
    num_probes: int = 8,
    dtype: torch.dtype = torch.float32,
    device=None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Unbiased estimate of diag(JᵀJ) from ``num_probes`` random ±1 probes, one vjp each.

    vjp: u (shaped like the residual, ``out_shape``) -> Jᵀu (a flat parameter vector).
    """
    if num_probes < 1:
        raise ValueError("num_probes must be >= 1")
    acc = None
    for _ in range(num_probes):
        z = rademacher(tuple(out_shape), dtype, device, generator)
        g = vjp(z)
        acc = g * g if acc is None else acc + g * g
    return acc / num_probes


# Relative floor of every Jacobi diagonal (the IFT preconditioner and fallback, LM's scaling
# D): entries below JACOBI_FLOOR·max are raised to it, so a parameter with no influence on
# the image and λ = 0 (diagonal 0) gets a large but finite inverse. 1e-8, not LM's former
# 1e-6: trained Λ is small (DESIGN.md: λ·P ~ 1e-3 for most groups), so legitimately small
# curvatures sit many decades below the largest one and a higher floor would distort them.
JACOBI_FLOOR = 1e-8


def floor_diagonal(d: torch.Tensor, floor_rel: float = JACOBI_FLOOR) -> torch.Tensor:
    """``d`` with entries below ``floor_rel``·max(d) raised to it (to 1 when max(d) <= 0)."""
    d_max = float(d.max()) if d.numel() else 1.0
    return d.clamp_min(floor_rel * d_max if d_max > 0 else 1.0)


def jacobi_preconditioner(
    jtj_diag: torch.Tensor, lam_flat: Optional[torch.Tensor], num_pixels: int, extra: Optional[torch.Tensor] = None,
    floor_rel: float = JACOBI_FLOOR,
) -> torch.Tensor:
    """Diagonal of M⁻¹ for H = JᵀJ/P + Λ (+ extra): 1 / (diag(JᵀJ)/P + λ + extra).

    Entries are floored (:func:`floor_diagonal`) so that parameters with no influence on the
    image (and λ = 0) do not produce infinities.
    """
    d = jtj_diag / num_pixels
    if lam_flat is not None:
        d = d + lam_flat
    if extra is not None:
        d = d + extra
    return 1.0 / floor_diagonal(d, floor_rel)


__all__ = ["PCGResult", "pcg", "rademacher", "probe_generator", "estimate_jtj_diag", "jacobi_preconditioner",
           "floor_diagonal", "JACOBI_FLOOR"]
