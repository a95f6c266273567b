"""Fusing the views' pixel Gaussians: drop those that contradict another view's matched surface.

A Gaussian of view i projected into view j at depth z, where view j's matched (sweep-accepted)
depth at that pixel is d_j, is a *floater* when z < (1 − τ)·d_j: if it were there, view j would
have seen it instead of the surface it matched. Each view's Gaussians otherwise stack in front of
each other's where depths disagree (the ghosted, smeared novel views); this is the visibility test
of classical depth-map fusion. Pixels outside view j, or where view j's depth was not accepted,
give no evidence.
"""

from __future__ import annotations

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.pixel_gaussians import project_to_view
from diff3r_cli.gaussians import Gaussians

FLOATER_MARGIN = 0.05  # τ: how far in front of a matched surface a Gaussian must be to contradict it


def floaters(g: Gaussians, cameras: Cameras, depth: torch.Tensor, valid: torch.Tensor,
             margin: float = FLOATER_MARGIN) -> torch.Tensor:
    """(N,) bool: pixel Gaussians (view-major, N = V·H·W) in front of another view's accepted depth.

    depth (V,H,W) z-depth per view (the sweep's), valid (V,H,W) where it was accepted.
    """
    v, h, w = depth.shape
    n = h * w
    if len(g) != v * n or len(cameras) != v:
        raise ValueError(f"{len(g)} Gaussians are not pixel-aligned to {v} views of {w}x{h}")
    bad = torch.zeros(v * n, dtype=torch.bool, device=g.means.device)
    for i in range(v):
        X = g.means[i * n:(i + 1) * n]
        for j in range(v):
            if j == i:
                continue
            z, u, vv, inside = project_to_view(X, cameras, j)
            ui, vi = u.clamp(0, w - 1).long(), vv.clamp(0, h - 1).long()
            dj = depth[j].to(z)[vi, ui]
            bad[i * n:(i + 1) * n] |= inside & valid[j][vi, ui] & (z < dj * (1 - margin))
    return bad


__all__ = ["FLOATER_MARGIN", "floaters"]
