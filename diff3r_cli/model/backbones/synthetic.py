"""Deterministic stand-in weights: each tensor is a function of its name and shape only.

Parity fixtures are produced by running the authors' encoders with these weights
(tools/make_backbone_fixtures.py); the tests fill our re-implementation the same way, so no
large state dict is ever committed. The values are scaled like a fan-in initialisation so
activations stay O(1) through deep stacks.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable

import torch


def synthetic_tensor(name: str, shape: Iterable[int]) -> torch.Tensor:
    """A float32 tensor of ``shape`` determined by ``name`` (CRC32 seed; uniform, fan-in scaled)."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    u = torch.rand(shape, generator=g, dtype=torch.float64) * 2.0 - 1.0
    if len(shape) >= 2:
        fan_in = max(1, math.prod(shape[1:]))
        return (u * math.sqrt(3.0 / fan_in)).float()
    if name.endswith("weight"):
        return (1.0 + 0.1 * u).float()     # normalisation gains
    return (0.1 * u).float()               # biases, layer scales


def synthetic_state_dict(shapes: dict[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    """{name: synthetic_tensor(name, shape)} for a state dict's names and shapes."""
    return {k: synthetic_tensor(k, s) for k, s in shapes.items()}


__all__ = ["synthetic_tensor", "synthetic_state_dict"]
