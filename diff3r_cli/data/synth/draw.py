"""Random draws shared by the scene, path and clutter samplers (float64, from an explicit generator)."""

from __future__ import annotations

import torch

from diff3r_cli.data.synth_config import SynthConfig


def rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, *shape: int) -> torch.Tensor:
    """Uniform draws in [lo, hi) of the given shape (default (1,)), float64."""
    return lo + (hi - lo) * torch.rand(*(shape or (1,)), generator=g, dtype=torch.float64)


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    """One uniform draw in [lo, hi)."""
    return float(rand(g, lo, hi))


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """One integer in [lo, hi] (both inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


_FEATURE_STREAM = 0x5EED13  # offsets the feature generator's seed from the classic one


def feature_generator(seed: int, stream: int = 0) -> torch.Generator:
    """The random stream of the issue-13 features of scene ``seed`` (disjoint from the classic one)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + _FEATURE_STREAM + 7919 * stream) % (2 ** 63))


def frame_size(seed: int, short: int, config: SynthConfig) -> tuple[int, int]:
    """(width, height) of scene ``seed``'s frames: short side ``short``, long side from one of the
    aspects (a multiple of 8, so a loader's crop to multiples of 8 keeps every pixel), maybe portrait."""
    g = feature_generator(seed, 1)
    aspect = config.aspects[int(torch.randint(0, len(config.aspects), (1,), generator=g))]
    portrait = float(torch.rand(1, generator=g)) < config.portrait_fraction
    long = max(short, round(short * aspect / 8) * 8)
    return (short, long) if portrait else (long, short)


__all__ = ["rand", "uniform", "randint", "feature_generator", "frame_size"]
