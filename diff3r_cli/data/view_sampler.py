"""Which frames of a clip become context and target views: by frame gap, or by viewing angle and
shared content for real sequences (photo sets are sparse, videos dense)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.geometry import pixel_rays


@dataclass
class ViewSamplerConfig:
    """How context/target frames are drawn in training mode.

    min_gap/max_gap: frames between the first and the last context view (inclusive range).
    num_context >= 2: extra context views are drawn between the first and the last.
    num_target: target views drawn strictly between the outer context views when there are
    enough frames there (without replacement), else from the whole closed range.
    """

    num_context: int = 2
    num_target: int = 4
    min_gap: int = 8
    max_gap: int = 24
    # mode "angle" (real sequences): the outer context pair is drawn among pairs whose viewing
    # directions are min_angle..max_angle degrees apart and whose frusta share >= min_overlap of
    # the view (photo sets are sparse, videos dense: a frame gap alone means different things);
    # without such a pair, pairs min_gap..max_gap frames apart that share the view; else "gap".
    mode: str = "gap"
    min_angle: float = 15.0
    max_angle: float = 30.0
    min_overlap: float = 0.5


def sample_views(num_frames: int, cfg: ViewSamplerConfig, generator: torch.Generator
                 ) -> tuple[list[int], list[int]] | None:
    """Draw (context, target) frame indices, or None when the clip is too short for min_gap."""
    if cfg.num_context < 2 or cfg.num_target < 0 or cfg.min_gap < cfg.num_context - 1 or cfg.max_gap < cfg.min_gap:
        raise ValueError(f"invalid view sampler settings {cfg}")
    max_gap = min(cfg.max_gap, num_frames - 1)
    if max_gap < cfg.min_gap:
        return None
    gap = int(torch.randint(cfg.min_gap, max_gap + 1, (1,), generator=generator))
    start = int(torch.randint(0, num_frames - gap, (1,), generator=generator))
    return _fill_views(start, start + gap, cfg, generator)


def view_angles(cameras: Cameras) -> torch.Tensor:
    """(T,T) angle in degrees between the cameras' viewing directions (optical axes)."""
    d = cameras.c2w[:, :3, 2].to(torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    return torch.rad2deg(torch.arccos((d @ d.T).clamp(-1.0, 1.0)))


def view_overlap(cameras: Cameras, grid: int = 8, symmetric: bool = True) -> torch.Tensor:
    """(T,T) shared content: the fraction of view i's pixel grid, put at the scene depth, that view j sees
    (with ``symmetric``, the minimum of both directions).

    The scene depth of a pair is where the two optical axes pass closest, when they are > 5 deg apart
    and converge in front of both cameras (orbits, photo sets); otherwise (parallel or diverging
    axes: walks, fly-bys) the sequence's median converging depth, or 10x the median step between
    frames when fewer than a tenth of the pairs converge.
    """
    T = len(cameras)
    c2w = cameras.c2w.to(torch.float64)
    o, d = c2w[:, :3, 3], c2w[:, :3, 2]
    # closest approach of the axes o_i + s d_i and o_j + t d_j (least squares in s, t)
    b = (d[:, None] * d[None]).sum(-1)                      # d_i . d_j
    w = o[:, None] - o[None]                                # o_i - o_j
    dw_i, dw_j = (d[:, None] * w).sum(-1), (d[None] * w).sum(-1)
    den = 1.0 - b ** 2
    ok = den > math.sin(math.radians(5.0)) ** 2             # > 5 deg apart: else the crossing is ill-posed
    s_ = torch.where(ok, (b * dw_j - dw_i) / den.clamp_min(1e-12), torch.zeros_like(den))
    t_ = torch.where(ok, (dw_j - b * dw_i) / den.clamp_min(1e-12), torch.zeros_like(den))
    conv = ok & (s_ > 0) & (t_ > 0)
    pair_depth = 0.5 * (s_ + t_)
    if int(conv.sum()) >= max(1, (T * (T - 1)) // 10):
        fallback = float(pair_depth[conv].median())
    else:
        steps = (o[1:] - o[:-1]).norm(dim=1) if T > 1 else torch.ones(1, dtype=torch.float64)
        fallback = 10.0 * max(float(steps.median()), 1e-6)
    depth = torch.where(conv, pair_depth, torch.full_like(pair_depth, fallback))  # (T,T)
    # pixel grid of view i at depth(i,j), into world, into view j
    W, H = cameras.width, cameras.height
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    px = torch.stack(torch.meshgrid(u * W, u * H, indexing="xy"), -1).reshape(-1, 2)   # (G,2)
    K = cameras.K.to(torch.float64)
    rays = pixel_rays(K[:, None], px[:, 0][None], px[:, 1][None])                      # (T,G,3), z = 1
    pts_cam = rays[:, None] * depth[..., None, None]                                    # (T,T,G,3) in cam i
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    world = torch.einsum("iab,ijgb->ijga", R, pts_cam) + t[:, None, None]
    w2c = cameras.w2c.to(torch.float64)
    cam_j = torch.einsum("jab,ijgb->ijga", w2c[:, :3, :3], world) + w2c[None, :, None, :3, 3]
    z = cam_j[..., 2]
    uv = torch.einsum("jab,ijgb->ijga", K, cam_j)
    uv = uv[..., :2] / uv[..., 2:3].clamp_min(1e-12)
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
    frac = inside.double().mean(-1)
    return torch.minimum(frac, frac.T) if symmetric else frac


def sample_views_real(cameras: Cameras, cfg: ViewSamplerConfig, generator: torch.Generator
                      ) -> tuple[list[int], list[int]] | None:
    """Draw (context, target) for a real sequence by viewing angle and shared content (see ViewSamplerConfig)."""
    T = len(cameras)
    ang, ov = view_angles(cameras), view_overlap(cameras)
    # room for the extra context views and distinct targets strictly between the outer pair;
    # only when no such pair qualifies, at least one frame between
    for gap_min in dict.fromkeys((max(2, cfg.num_context - 1 + cfg.num_target), 2)):
        if T < gap_min + 1:
            continue
        i, j = torch.triu_indices(T, T, offset=gap_min)
        gap = j - i
        shared = ov[i, j] >= cfg.min_overlap
        by_angle = shared & (ang[i, j] >= cfg.min_angle) & (ang[i, j] <= cfg.max_angle) & (gap <= cfg.max_gap)
        by_gap = shared & (gap >= cfg.min_gap) & (gap <= cfg.max_gap)
        by_content = shared & (gap <= cfg.max_gap)  # e.g. a forward walk: few frames apart already differ a lot
        for cand in (by_angle, by_gap, by_content):
            idx = torch.nonzero(cand).flatten()
            if len(idx):
                k = int(idx[torch.randint(0, len(idx), (1,), generator=generator)])
                return _fill_views(int(i[k]), int(j[k]), cfg, generator)
    return sample_views(T, cfg, generator)


def _fill_views(start: int, end: int, cfg: ViewSamplerConfig, generator: torch.Generator
                ) -> tuple[list[int], list[int]]:
    """Context = start, end and num_context-2 frames drawn between; targets drawn between them."""
    inner = torch.arange(start + 1, end)
    extra = cfg.num_context - 2
    mids = inner[torch.randperm(len(inner), generator=generator)[:extra]].tolist() if extra else []
    context = [start] + sorted(mids) + [end]
    pool = torch.tensor([i for i in range(start + 1, end) if i not in context], dtype=torch.long)
    if len(pool) >= cfg.num_target:
        target = pool[torch.randperm(len(pool), generator=generator)[:cfg.num_target]]
    else:  # short gap: targets may repeat and include the context frames
        target = torch.randint(start, end + 1, (cfg.num_target,), generator=generator)
    return context, sorted(target.tolist())


__all__ = ["ViewSamplerConfig", "sample_views", "sample_views_real", "view_angles", "view_overlap"]
