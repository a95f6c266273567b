"""The depth stage of the pipeline: a prediction's geometry taken from the photos.

Shared by `reconstruct` and `eval` so both score the same thing.
"""

from __future__ import annotations

import torch

from diff3r_cli.depth.fuse import floaters
from diff3r_cli.depth.pixel_gaussians import view_depths, with_depths
from diff3r_cli.depth.sweep import sweep_depth
from diff3r_cli.gaussians import Gaussians


def match_depth(g: Gaussians, lam: torch.Tensor, images: torch.Tensor,
                cameras) -> tuple[Gaussians, torch.Tensor, float]:
    """The prediction with depth from the photos: each pixel's Gaussian moved to the depth the views
    agree on (ZNCC sweep, where it decides), then the Gaussians that contradict another view's matched
    surface dropped (diff3r_cli.depth.fuse). Returns (Gaussians, their Λ rows, accepted share)."""
    cams = cameras.to(g.device)
    v, h, w = images.shape[:3]
    if len(g) != v * h * w:  # not one Gaussian per context pixel (e.g. a backbone that crops): no stage
        return g, lam, 0.0
    res = sweep_depth(images.to(g.device), cams, view_depths(g, cams))
    g = with_depths(g, cams, res.depth)
    keep = ~floaters(g, cams, res.depth, res.valid)
    return g[keep], lam[keep], res.accepted_fraction


__all__ = ["match_depth"]
