"""Outlier augmentation of context views (off by default).

Simulates what breaks plain test-time optimisation: occluders present in one context view
only (textured random shapes: ellipses, rectangles, polygons), local exposure changes (a
smooth multiplicative gain blob) and, when asked for, a whole view shot at another exposure and
white balance (a per-channel gain, as between two cameras). Deterministic given a torch.Generator. Returns the
corrupted images and a boolean mask of the corrupted pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OutlierConfig:
    """Probabilities and sizes of the corruptions (per example; each picks one context view)."""

    p_occluder: float = 0.5        # probability that an example gets occluders
    max_occluders: int = 2
    min_size: float = 0.1          # occluder size as a fraction of the image side
    max_size: float = 0.4
    p_exposure: float = 0.3        # probability of a local exposure change
    exposure_range: tuple[float, float] = (0.4, 2.0)
    exposure_mask_threshold: float = 0.05  # |gain - 1| above this counts as corrupted
    p_global_exposure: float = 0.0  # probability that one view gets another exposure / white balance
    global_exposure_range: tuple[float, float] = (0.6, 1.6)
    white_balance: float = 0.1      # per-channel gain spread around the exposure gain


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _shape_mask(g: torch.Generator, H: int, W: int, size: float) -> torch.Tensor:
    """A random ellipse, rotated rectangle or convex-ish polygon as an (H,W) bool mask."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5, torch.arange(W, dtype=torch.float32) + 0.5,
                            indexing="ij")
    cx, cy = _u(g, 0.1, 0.9) * W, _u(g, 0.1, 0.9) * H
    side = min(H, W)
    a, b = size * side * _u(g, 0.3, 0.6), size * side * _u(g, 0.3, 0.6)
    ang = _u(g, 0, math.pi)
    c, s = math.cos(ang), math.sin(ang)
    x, y = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:
        return (x / a) ** 2 + (y / b) ** 2 <= 1
    if kind == 1:
        return (x.abs() <= a) & (y.abs() <= b)
    # Star-shaped polygon: radius varies with angle (random harmonics).
    theta = torch.atan2(y, x)
    r = 1 + 0.3 * torch.sin(3 * theta + _u(g, 0, 6.28)) + 0.15 * torch.sin(5 * theta + _u(g, 0, 6.28))
    return torch.sqrt((x / a) ** 2 + (y / b) ** 2) <= r


def _texture(g: torch.Generator, H: int, W: int) -> torch.Tensor:
    """(H,W,3) texture: a random colour blend, optionally striped or noisy."""
    c0, c1 = torch.rand(3, generator=g), torch.rand(3, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:
        f, ang = _u(g, 3, 15), _u(g, 0, math.pi)
        t = 0.5 + 0.5 * torch.sin(2 * math.pi * f * (xx * math.cos(ang) + yy * math.sin(ang)))
    elif kind == 1:
        coarse = torch.rand(1, 1, 6, 6, generator=g)
        t = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    else:
        t = xx * _u(g) + yy * _u(g)
        t = t / t.max().clamp_min(1e-6)
    return c0 + (c1 - c0) * t[..., None]


def corrupt_context(images: torch.Tensor, generator: torch.Generator, cfg: OutlierConfig | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt context views (V,H,W,3) in [0,1]; returns (images, mask (V,H,W) bool).

    Occluders are pasted into one randomly chosen view only (so the views disagree there);
    the exposure change hits one view too. The input tensor is not modified.
    """
    cfg = cfg or OutlierConfig()
    V, H, W, _ = images.shape
    out = images.clone()
    mask = torch.zeros(V, H, W, dtype=torch.bool)
    g = generator
    if _u(g) < cfg.p_occluder:
        view = int(torch.randint(0, V, (1,), generator=g))
        n = int(torch.randint(1, cfg.max_occluders + 1, (1,), generator=g))
        for _ in range(n):
            m = _shape_mask(g, H, W, _u(g, cfg.min_size, cfg.max_size))
            tex = _texture(g, H, W).to(out.dtype)
            out[view][m] = tex[m]
            mask[view] |= m
    if _u(g) < cfg.p_exposure:
        view = int(torch.randint(0, V, (1,), generator=g))
        lo, hi = cfg.exposure_range
        gain = math.exp(_u(g, math.log(lo), math.log(hi)))
        cy, cx = _u(g, 0, H), _u(g, 0, W)
        sigma = _u(g, 0.15, 0.5) * min(H, W)
        yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5,
                                torch.arange(W, dtype=torch.float32) + 0.5, indexing="ij")
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        field = 1 + (gain - 1) * blob  # smooth: 1 far from the centre, `gain` at it
        out[view] = (out[view] * field[..., None].to(out.dtype)).clamp(0, 1)
        mask[view] |= (field - 1).abs() > cfg.exposure_mask_threshold
    if cfg.p_global_exposure > 0 and _u(g) < cfg.p_global_exposure:
        view = int(torch.randint(0, V, (1,), generator=g))
        lo, hi = cfg.global_exposure_range
        gain = math.exp(_u(g, math.log(lo), math.log(hi)))
        wb = torch.tensor([gain * math.exp(_u(g, -cfg.white_balance, cfg.white_balance)) for _ in range(3)])
        out[view] = (out[view] * wb.to(out.dtype)).clamp(0, 1)
        if bool(((wb - 1).abs() > cfg.exposure_mask_threshold).any()):
            mask[view] = True
    return out, mask


__all__ = ["OutlierConfig", "corrupt_context"]
