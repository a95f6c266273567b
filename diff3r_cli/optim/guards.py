"""NaN/inf guards of the optimisers: every non-finite θ, E or gradient raises NumericalError."""

from __future__ import annotations

import math

import torch

from diff3r_cli.errors import NumericalError


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise NumericalError if ``x`` holds a NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"TTO: {what} contains NaN or inf")


def check_value(v: float, what: str, step: int) -> None:
    """Raise NumericalError if the scalar ``v`` (e.g. E at ``step``) is not finite."""
    if not math.isfinite(v):
        raise NumericalError(f"TTO: {what} became {v} at step {step} (try a smaller learning rate or larger damping)")


__all__ = ["check_finite", "check_value"]
