"""Tiny deterministic scenes for the optimisation tests (shared by test_tto and test_implicit)."""

from __future__ import annotations

import math

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians


def two_cameras(size: int = 16, dtype=torch.float64, baseline: float = 0.4, dist: float = 3.0) -> Cameras:
    """Two cameras on the x axis at z = -dist looking along +z (OpenCV axes), slightly toed in."""
    Ks, w2cs = [], []
    for sign in (-1.0, 1.0):
        K = torch.tensor([[size * 1.1, 0, size / 2], [0, size * 1.1, size / 2], [0, 0, 1]], dtype=dtype)
        yaw = -sign * math.atan2(baseline / 2, dist)  # look at the origin
        R = torch.tensor([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]], dtype=dtype)
        center = torch.tensor([sign * baseline / 2, 0.0, -dist], dtype=dtype)
        w2c = torch.eye(4, dtype=dtype)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ center
        Ks.append(K)
        w2cs.append(w2c)
    return Cameras(torch.stack(Ks), torch.stack(w2cs), size, size)


def blobs(n: int = 6, seed: int = 0, dtype=torch.float64, scale: float = 0.22, opacity: float = 0.6) -> Gaussians:
    """n soft, semi-transparent Gaussians near the origin (smooth images: no clamps active)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3, dtype=dtype)
    means[:, :2] = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 1.2
    means[:, 2] = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * 0.6
    log_scales = math.log(scale) + 0.2 * torch.randn(n, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    quats = quats / quats.norm(dim=1, keepdim=True)
    quats[:, 0] = quats[:, 0].abs() + 0.5
    p = opacity + 0.1 * (torch.rand(n, generator=g, dtype=dtype) - 0.5)
    opacity_logits = torch.log(p / (1 - p))
    sh = (torch.rand(n, 1, 3, generator=g, dtype=dtype) - 0.5) * 2.5
    return Gaussians(means, log_scales, quats, opacity_logits, sh)


def perturb(g: Gaussians, sigma: float, seed: int = 1) -> Gaussians:
    """Add independent Gaussian noise of std sigma to every raw parameter."""
    gen = torch.Generator().manual_seed(seed)
    theta = g.flatten()
    return g.unflatten(theta + sigma * torch.randn(theta.shape, generator=gen, dtype=theta.dtype))


def wide_blobs(n: int = 3, seed: int = 0, dtype=torch.float64) -> Gaussians:
    """n large, faint Gaussians near the optical axis whose α ≥ 1/255 footprints cover the whole
    image in every view of ``two_cameras``: no pair crosses the α-skip or footprint thresholds,
    so the rendered energy is smooth near the optimum (needed for tight inner solves). Depths
    are spaced 0.25 apart so that no two Gaussians swap compositing order (a discontinuity)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([0.5, 0.5, 0.05], dtype=dtype)
    means[:, 2] += 0.25 * (torch.arange(n, dtype=dtype) - (n - 1) / 2)
    log_scales = math.log(0.9) + 0.1 * torch.randn(n, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    quats[:, 0] = quats[:, 0].abs() + 1.0
    p = 0.35 + 0.1 * (torch.rand(n, generator=g, dtype=dtype) - 0.5)
    opacity_logits = torch.log(p / (1 - p))
    sh = (torch.rand(n, 1, 3, generator=g, dtype=dtype) - 0.5) * 3.0
    return Gaussians(means, log_scales, quats, opacity_logits, sh)


def pixel_aligned(cams, dtype=torch.float64, seed: int = 0) -> Gaussians:
    """One small Gaussian per pixel of the first camera, unprojected to depth ≈ 3 (like a
    feed-forward predictor's output): many parameters of very different sensitivity."""
    g = torch.Generator().manual_seed(seed)
    H, W = cams.height, cams.width
    K = cams.K[0].to(dtype)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    depth = 3.0 + 0.3 * torch.rand(H, W, generator=g, dtype=dtype)
    pc = torch.stack([(xs - K[0, 2]) / K[0, 0] * depth, (ys - K[1, 2]) / K[1, 1] * depth, depth], -1).reshape(-1, 3)
    c2w = torch.linalg.inv(cams.w2c[0].to(dtype))
    means = pc @ c2w[:3, :3].T + c2w[:3, 3]
    n = means.shape[0]
    log_scales = torch.log(depth.reshape(-1, 1) / K[0, 0] * 0.7).expand(n, 3).clone()
    quats = torch.zeros(n, 4, dtype=dtype)
    quats[:, 0] = 1.0
    opacity_logits = torch.full((n,), 1.0, dtype=dtype)
    sh = (torch.rand(n, 1, 3, generator=g, dtype=dtype) - 0.5) * 2.0
    return Gaussians(means, log_scales, quats, opacity_logits, sh)


def plane_pixels(cams, gains) -> tuple[Gaussians, torch.Tensor]:
    """One Gaussian per pixel of each view on the textured plane z = 0, view-major, coloured as that
    view photographs the texture (colour × the view's gain), as a pixel-aligned predictor returns
    them; and each Gaussian's view."""
    parts, owner = [], []
    size = cams.width
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                            torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    for j in range(len(cams)):
        R, t = cams.w2c[j, :3, :3], cams.w2c[j, :3, 3]
        c = -R.T @ t
        d = pix @ torch.linalg.inv(cams.K[j]).T @ R  # rays in world axes (R.T applied on the right)
        X = c + d * (-c[2] / d[:, 2:3])
        rgb = 0.45 + 0.2 * torch.stack([torch.sin(5 * X[:, 0]), torch.cos(4 * X[:, 1]), torch.sin(3 * (X[:, 0] + X[:, 1]))], 1)
        n = X.shape[0]
        scale = torch.log(torch.full((n, 3), 0.7 * 3.0 / float(cams.K[j, 0, 0]), dtype=torch.float64))
        quats = torch.zeros(n, 4, dtype=torch.float64)
        quats[:, 0] = 1
        sh = ((rgb * gains[j] - 0.5) / 0.28209479177387814)[:, None, :]
        parts.append(Gaussians(X, scale, quats, torch.full((n,), 4.0, dtype=torch.float64), sh))
        owner.append(torch.full((n,), j))
    return Gaussians(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts)))), torch.cat(owner)
