"""Depth of pixel-aligned Gaussians in their own views, and moving them along their rays.

A predictor puts one Gaussian per context pixel (view-major, row-major). Its z-depth in its own
camera is what the sweep refines; a new depth moves the mean along the camera ray through it and
scales its footprint alike (a Gaussian covering one pixel keeps covering one pixel).
"""

from __future__ import annotations

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians


def _per_view(g: Gaussians, cameras: Cameras) -> tuple[int, int, int]:
    v, h, w = len(cameras), cameras.height, cameras.width
    if len(g) != v * h * w:
        raise ValueError(f"{len(g)} Gaussians are not pixel-aligned to {v} views of {w}x{h}")
    return v, h, w


def view_depths(g: Gaussians, cameras: Cameras) -> torch.Tensor:
    """(V,H,W) z-depth of each pixel's Gaussian in its own (context) camera."""
    v, h, w = _per_view(g, cameras)
    m = g.means.reshape(v, h * w, 3)
    w2c = cameras.w2c.to(m)
    z = (m @ w2c[:, 2, :3].unsqueeze(-1)).squeeze(-1) + w2c[:, 2, 3:4]
    return z.reshape(v, h, w)


def with_depths(g: Gaussians, cameras: Cameras, depth: torch.Tensor) -> Gaussians:
    """The Gaussians moved along their own camera rays to z-depth ``depth`` (V,H,W); scales follow."""
    v, h, w = _per_view(g, cameras)
    ratio = (depth.to(g.means) / view_depths(g, cameras).clamp_min(1e-9)).reshape(v, h * w, 1)
    centres = cameras.centers.to(g.means)[:, None, :]
    means = centres + (g.means.reshape(v, h * w, 3) - centres) * ratio
    log_scales = g.log_scales.reshape(v, h * w, 3) + torch.log(ratio)
    return Gaussians(means.reshape(-1, 3), log_scales.reshape(-1, 3), g.quats, g.opacity_logits, g.sh)


def project_to_view(X: torch.Tensor, cameras: Cameras, j: int) -> tuple[torch.Tensor, ...]:
    """Points X (N,3) in camera j: (z-depth, u, v in pixels, inside: in front and within the frame)."""
    w2c, K = cameras.w2c[j].to(X), cameras.K[j].to(X)
    pc = X @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    uv = pc @ K.T
    zs = torch.where(z > 1e-9, uv[:, 2], torch.ones_like(z))
    u, v = uv[:, 0] / zs, uv[:, 1] / zs
    inside = (z > 1e-9) & (u >= 0) & (u < cameras.width) & (v >= 0) & (v < cameras.height)
    return z, u, v, inside


PIXEL_CENTRE_TOL = 1e-3  # px: how close a projection must come to a pixel centre to mark its view


def source_views(g: Gaussians, cameras: Cameras, tol: float = PIXEL_CENTRE_TOL) -> torch.Tensor:
    """(N,) long: the context view each pixel Gaussian was predicted from, -1 where none is found.

    A pixel Gaussian sits on the ray through its pixel's centre, so it projects onto a pixel centre
    of its own view (to float rounding) and, in general, nowhere near one in another view. This
    holds after :func:`with_depths` and after fusion drops Gaussians (when the view-major blocks no
    longer have V·H·W entries); it stops holding once TTO moves the means.
    """
    owner = torch.full((len(g),), -1, dtype=torch.long, device=g.means.device)
    w2c, K = cameras.w2c.to(g.means), cameras.K.to(g.means)
    for j in range(len(cameras)):
        pc = g.means @ w2c[j, :3, :3].T + w2c[j, :3, 3]
        uv = pc @ K[j].T
        z = uv[:, 2]
        zs = torch.where(z > 1e-9, z, torch.ones_like(z))
        fu, fv = uv[:, 0] / zs - 0.5, uv[:, 1] / zs - 0.5
        off = torch.maximum((fu - fu.round()).abs(), (fv - fv.round()).abs())
        inside = (z > 1e-9) & (fu > -1) & (fu < cameras.width) & (fv > -1) & (fv < cameras.height)
        owner = torch.where((owner < 0) & inside & (off < tol), torch.full_like(owner, j), owner)
    return owner


def sparse_depth_error(depth: torch.Tensor, cameras: Cameras, points: torch.Tensor) -> dict:
    """Relative error of per-view depth maps (V,H,W) at the pixels where sparse world points project.

    Returns {"median": median |d - z|/z, "bias": median (d - z)/z, "count": samples} over all views
    (points behind a camera or outside its image are skipped).
    """
    v, h, w = depth.shape
    pts = points.to(torch.float64)
    rel, signed = [], []
    for i in range(v):
        w2c = cameras.w2c[i].to(torch.float64)
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        keep = z > 1e-6
        uv = (pc[keep] @ cameras.K[i].to(torch.float64).T)
        u, vv = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        inside = (u >= 0) & (u < w) & (vv >= 0) & (vv < h)
        zi = z[keep][inside]
        d = depth[i].to(torch.float64)[vv[inside].long(), u[inside].long()]
        signed.append((d - zi) / zi)
        rel.append(((d - zi) / zi).abs())
    r = torch.cat(rel) if rel else torch.zeros(0)
    s = torch.cat(signed) if signed else torch.zeros(0)
    if r.numel() == 0:
        return {"median": float("nan"), "bias": float("nan"), "count": 0}
    return {"median": float(r.median()), "bias": float(s.median()), "count": int(r.numel())}


__all__ = ["view_depths", "with_depths", "project_to_view", "source_views", "sparse_depth_error"]
