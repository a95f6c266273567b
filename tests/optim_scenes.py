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


def render_rgb_autograd(g: Gaussians, cameras, background=None, backend: str = "torch") -> torch.Tensor:
    """RGB like ``render(...).rgb`` (torch backend), but composited with plain autograd ops so
    that it is twice differentiable (needed by unrolled differentiation through an optimiser).

    Reuses the torch backend's projection and pair binning (no autograd there); only the
    front-to-back compositing of the binned pairs is written out again. Test/benchmark
    helper, matching ``render()`` to round-off (checked in test_implicit).
    """
    from diff3r_cli.render import torch_backend as tb
    from diff3r_cli.render.sh import eval_sh

    dt = g.dtype
    K = cameras.K.to(dtype=dt)
    w2c = cameras.w2c.to(dtype=dt)
    C, H, W = K.shape[0], cameras.height, cameras.width
    n_pix = C * H * W
    ent = tb.project_gaussians(g, K, w2c, W, H)
    if ent is None:
        return torch.zeros(C, H, W, 3, dtype=dt) + 0 * sum(t.sum() for t in g.tensors())
    centers = torch.linalg.inv(w2c)[:, :3, 3]
    color = torch.clamp_min(eval_sh(g.sh[ent["gid"]], g.means[ent["gid"]] - centers[ent["cam"]]) + 0.5, 0.0)
    e_idx, key = tb.bin_pairs(ent, C, W, H)[:2]
    px = (key % W).to(dt) + 0.5
    py = ((key // W) % H).to(dt) + 0.5
    m = ent["mean2d"][e_idx]
    con = ent["conic"][e_idx]
    dx = m[:, 0] - px
    dy = m[:, 1] - py
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    alpha = torch.clamp_max(ent["opacity"][e_idx] * torch.exp(-sigma), tb.ALPHA_MAX)
    # Exclusive log-transmittance within each pixel's run of pairs (float64 cumsum).
    log1m = torch.log1p(-alpha).double()
    start = torch.ones_like(key, dtype=torch.bool)
    start[1:] = key[1:] != key[:-1]
    seg_id = torch.cumsum(start, 0) - 1
    seg_start = start.nonzero(as_tuple=True)[0]
    cs = torch.cumsum(log1m, 0)
    excl = cs - log1m - (cs - log1m)[seg_start][seg_id]
    w = alpha * torch.exp(excl).to(dt)
    rgb = torch.zeros(n_pix, 3, dtype=dt).index_add(0, key, w[:, None] * color[e_idx])
    rgb = rgb.reshape(C, H, W, 3)
    if background is not None:
        acc = torch.zeros(n_pix, dtype=dt).index_add(0, key, w).reshape(C, H, W)
        bg = torch.as_tensor(background, dtype=dt).reshape(-1, 3).expand(C, 3)
        rgb = rgb + (1.0 - acc)[..., None] * bg[:, None, None, :]
    return rgb


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
