"""Typed records of what an optimisation and a layer's backward did (returned, never written
into a caller's dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EnergyTerms:
    """E and its two parts as Python floats."""

    energy: float
    photometric: float
    proximal: float


@dataclass
class TTOStats:
    """One TTO run: ``steps`` updates (Adam) or iterations (LM) recorded, the final energy,
    the wall time and the history (one dict per iterate: step, energy, photometric, proximal,
    plus the optimiser's diagnostics)."""

    steps: int
    energy: float
    time_s: float
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_history(cls, history: list[dict], time_s: float) -> "TTOStats":
        """Summary of a history (E is NaN for an empty one)."""
        energy = history[-1]["energy"] if history else float("nan")
        return cls(steps=len(history) - 1, energy=energy, time_s=time_s, history=history)


@dataclass
class SolveInfo:
    """One IFT linear solve: PCG iterations and final relative residual, whether it reached
    pcg_rtol (``converged``; ``miss`` is its negation), PCG's status ("converged" |
    "max_iter" | "nonfinite" | "indefinite"), the Jv products it took and their mode, and the
    fallback that replaced the solution (None when the solution was used)."""

    pcg_iterations: int
    pcg_residual: float
    pcg_converged: bool
    pcg_status: str
    jvp_calls: int
    jvp_mode: str
    fallback: Optional[str] = None

    @property
    def pcg_miss(self) -> bool:
        """The solve did not reach the requested pcg_rtol (it may still have been used)."""
        return not self.pcg_converged


@dataclass
class BackwardStats:
    """The layer's backward pass: its solve, the number of non-finite entries of the incoming
    gradient (zeroed before the solve) and the wall time."""

    solve: SolveInfo
    nonfinite_grad: int
    time_s: float


@dataclass
class LayerStats:
    """What ``optimization_layer`` did. ``forward`` is filled when the layer returns;
    ``backward`` stays None until autograd runs the layer's backward (``loss.backward()``),
    which fills it in place — read it after the backward pass."""

    forward: TTOStats
    backward: Optional[BackwardStats] = None


__all__ = ["EnergyTerms", "TTOStats", "SolveInfo", "BackwardStats", "LayerStats"]
