"""Classical multi-view depth: a photometric (ZNCC) plane sweep around a depth guess, per view.

For every pixel of a reference view, depth hypotheses d0·s (s log-spaced around 1) are projected
into each other view; the source image is sampled there and compared with the reference image by
zero-mean normalised cross-correlation over a w×w RGB window (the 3·w² values of the window form
one vector). The cost of a hypothesis is the best (smallest 1 − ZNCC) over the other views, so a
pixel occluded in one view can still be matched in another. The best hypothesis is refined by a
parabola through its neighbours' costs.

A depth is accepted only where matching can decide it (the gates):
- the ZNCC of the best hypothesis is at least ``min_zncc``;
- the reference window has texture (standard deviation >= ``min_std``);
- the best hypothesis is not at either end of the search range;
- the baseline resolves depth: moving the depth by ±10 % shifts the pixel by >= ``min_shift_px``
  in the best source view (small baselines and forward motion otherwise give depth by chance).

Two passes: a wide one on a half-resolution copy (cheap, finds the basin), then a narrow one at
full resolution around it; a 3×3 median of the accepted log-depth ratios removes isolated
outliers. Finally the despeckle (:func:`despeckle`): an accepted depth more than 3 % away from the
median of the accepted depths of similar colour in a window of 13 % of the short side takes that
median, unless its match is a confident one (ZNCC ≥ 0.9). The sweep's depth is right on average
(about 1.5 % error) but noisy from pixel to pixel, which, seen from 30–45° away, scatters a surface
into speckle; the window's median keeps depth edges (straight ones, and thin structures whose colour
differs from what surrounds them). Cameras follow the project's convention (OpenCV axes, K in
pixels, pixel centres at +0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from diff3r_cli.cameras import Cameras
from diff3r_cli.geometry import pixel_centres, scale_intrinsics


@dataclass
class SweepConfig:
    """Settings of :func:`sweep_depth` (defaults: the issue-20 recipe, split into two passes)."""

    lo: float = 0.4               # search range of the first pass, as factors of the guess
    hi: float = 2.5
    coarse: int = 48              # hypotheses of the first (half-resolution) pass
    fine_range: float = 0.12      # second pass: ± this log-factor around the first pass's depth
    fine: int = 13                # hypotheses of the second (full-resolution) pass
    window: int = 7               # ZNCC window (odd)
    min_zncc: float = 0.5
    min_std: float = 0.02         # texture gate: std of the reference window (images in [0,1])
    min_shift_px: float = 1.0     # baseline gate: pixel shift for a ±10 % depth change
    median: bool = True
    chunk: int = 16               # hypotheses evaluated at once (memory)
    # despeckle (see the module docstring): window as a fraction of the short side (0: off), the
    # log-depth distance from the window's median beyond which a depth is replaced, and the colour
    # difference (mean |ΔRGB|, images in [0,1]) within which a neighbour votes
    despeckle: float = 0.13
    despeckle_tol: float = 0.03
    despeckle_gate: float = 0.1
    despeckle_keep_zncc: float = 0.9  # matches this good are left as they are (fern's fronds: same
                                      # colour, real depth detail, distinct texture)
    despeckle_samples: int = 9        # the window is read on at most this many pixels a side


@dataclass
class SweepResult:
    """Per view: depth (V,H,W) (the guess where rejected), accepted mask, best ZNCC."""

    depth: torch.Tensor
    valid: torch.Tensor
    score: torch.Tensor

    @property
    def accepted_fraction(self) -> float:
        return float(self.valid.float().mean())


def box_mean(x: torch.Tensor, w: int) -> torch.Tensor:
    """Mean over a w×w window, clipped at the border, of x (N,H,W): summed-area table, O(1) per pixel."""
    n, h, wd = x.shape
    r = w // 2
    c = F.pad(x, (r + 1, r, r + 1, r)).cumsum(1).cumsum(2)          # zeros outside add nothing
    s = c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(wd, device=x.device)
    ny = (ys + r + 1).clamp(max=h) - (ys - r).clamp(min=0)
    nx = (xs + r + 1).clamp(max=wd) - (xs - r).clamp(min=0)
    return s / (ny[:, None] * nx[None, :]).to(x.dtype)


def _window_stats(img: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (1,H,W) of the w×w RGB windows of img (3,H,W)."""
    mu = box_mean(img.mean(0)[None], w)
    var = (box_mean((img * img).mean(0)[None], w) - mu * mu).clamp_min(0)
    return mu, var.sqrt()


def _ray_terms(K_ref: torch.Tensor, w2c_ref: torch.Tensor, K_src: torch.Tensor, w2c_src: torch.Tensor,
               h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a (3,P), b (3,1) with the source pixel (homogeneous) of reference pixel p at depth d = d·a + b."""
    p = pixel_centres(h, w, K_ref.device, K_ref.dtype)
    rel = w2c_src @ torch.linalg.inv(w2c_ref)
    a = K_src @ rel[:3, :3] @ torch.linalg.inv(K_ref) @ p
    b = K_src @ rel[:3, 3:4]
    return a, b


def _project(a: torch.Tensor, b: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """depth (S,P) -> source pixel coordinates (S,P,2) and in-front mask (S,P)."""
    hom = depth[:, None, :] * a[None] + b[None]
    z = hom[:, 2]
    front = z > 1e-6
    z = torch.where(front, z, torch.ones_like(z))
    return torch.stack([hom[:, 0] / z, hom[:, 1] / z], -1), front


def _zncc_stack(ref: torch.Tensor, ref_stats: tuple[torch.Tensor, torch.Tensor], src: torch.Tensor,
                a: torch.Tensor, b: torch.Tensor, depth: torch.Tensor, w: int) -> torch.Tensor:
    """ZNCC (S,H,W) of the reference image against the source sampled at each depth map of ``depth`` (S,H,W).

    ref (3,H,W), src (3,Hs,Ws); pixels whose window falls partly behind the source or outside it get −1.
    """
    s, h, wd = depth.shape
    uv, front = _project(a, b, depth.reshape(s, -1))
    hs, ws = src.shape[-2:]
    gx = 2.0 * uv[..., 0] / ws - 1.0
    gy = 2.0 * uv[..., 1] / hs - 1.0
    inside = front & (gx.abs() <= 1) & (gy.abs() <= 1)
    grid = torch.stack([gx, gy], -1).reshape(1, s * h, wd, 2)
    warped = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped = warped.reshape(3, s, h, wd)
    mu_r, sd_r = ref_stats
    inside = inside.reshape(s, h, wd).to(warped.dtype)
    mu_s, ms2, mrs, cover = box_mean(torch.cat([warped.mean(0), (warped * warped).mean(0),
                                            (warped * ref[:, None]).mean(0), inside]), w).split(s)
    var_s = (ms2 - mu_s * mu_s).clamp_min(0)
    zncc = (mrs - mu_r * mu_s) / (sd_r * var_s.sqrt() + 1e-6)
    # the whole window must land inside the source image (clamped border samples match by accident)
    return torch.where(cover > 0.999, zncc.clamp(-1, 1), torch.full_like(zncc, -1.0))


def _sweep_view(images: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, i: int, guess: torch.Tensor,
                factors: torch.Tensor, cfg: SweepConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """One reference view: for each pixel, the best of the per-pixel hypotheses guess·factors.

    images (V,3,H,W); guess (H,W); factors (S,) or (S,H,W). Returns (best log-factor offset from the
    hypothesis grid incl. parabola step, best ZNCC, index of the best hypothesis, best source view).
    """
    v, _, h, w = images.shape
    ref = images[i]
    stats = _window_stats(ref, cfg.window)
    if factors.dim() == 1:
        factors = factors[:, None, None].expand(-1, h, w)
    n = factors.shape[0]
    score = torch.full((n, h, w), -1.0, dtype=images.dtype, device=images.device)
    who = torch.zeros((n, h, w), dtype=torch.long, device=images.device)
    for j in range(v):
        if j == i:
            continue
        a, b = _ray_terms(K[i], w2c[i], K[j], w2c[j], h, w)
        for k0 in range(0, n, cfg.chunk):
            z = _zncc_stack(ref, stats, images[j], a, b, guess[None] * factors[k0:k0 + cfg.chunk], cfg.window)
            better = z > score[k0:k0 + cfg.chunk]
            score[k0:k0 + cfg.chunk] = torch.where(better, z, score[k0:k0 + cfg.chunk])
            who[k0:k0 + cfg.chunk] = torch.where(better, torch.full_like(who[k0:k0 + cfg.chunk], j),
                                                 who[k0:k0 + cfg.chunk])
    best = score.argmax(0)                                               # (H,W)
    cost = 1.0 - score
    km, kp = (best - 1).clamp(0, n - 1), (best + 1).clamp(0, n - 1)
    c0 = cost.gather(0, best[None])[0]
    cm, cp = cost.gather(0, km[None])[0], cost.gather(0, kp[None])[0]
    curv = cm - 2 * c0 + cp
    step = torch.where(curv > 1e-6, 0.5 * (cm - cp) / curv.clamp_min(1e-6), torch.zeros_like(c0)).clamp(-0.5, 0.5)
    return step, score.gather(0, best[None])[0], best, who.gather(0, best[None])[0]


def _median3(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """3×3 median of x (H,W) over valid neighbours (invalid ones are replaced by the centre value)."""
    h, w = x.shape
    xp = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")
    vp = F.pad(valid[None, None].float(), (1, 1, 1, 1))
    patches = F.unfold(xp, 3).reshape(9, h, w)
    vpatch = F.unfold(vp, 3).reshape(9, h, w) > 0.5
    patches = torch.where(vpatch, patches, x[None].expand(9, h, w))
    return patches.median(0).values


def despeckle(log_depth: torch.Tensor, valid: torch.Tensor, image: torch.Tensor, window: int,
              tol: float = 0.03, gate: float = 0.1, samples: int = 9, rows: int = 32,
              keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log_depth (H,W) with each valid pixel more than ``tol`` from the median of the valid pixels of
    similar colour in its window×window neighbourhood (mean |ΔRGB| of image (H,W,3) below ``gate``)
    replaced by that median (the lower median for an even count); invalid pixels and those within
    tol are returned unchanged, and so are the pixels of ``keep`` (H,W) bool where given (they still
    vote: the sweep's confident matches).

    The neighbourhood is sampled on a grid of at most ``samples`` × ``samples`` pixels centred on
    the pixel (spacing ceil((window - 1) / (samples - 1)), so a 33-px window reads 81 pixels, not
    1,089: the median of a surface does not need every pixel, and the sweep's time budget does).
    Works in ``rows``-row chunks to bound memory."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    h, w = log_depth.shape
    step = max(1, -(-(window - 1) // (samples - 1)))
    half = (window // 2) // step          # samples on each side of the centre
    side, r = 2 * half + 1, half * step   # the grid's side, its reach in pixels
    x = F.pad(log_depth[None, None], (r, r, r, r), mode="replicate")[0, 0]
    vp = F.pad(valid[None, None].float(), (r, r, r, r))[0, 0]
    img = image.permute(2, 0, 1).to(log_depth.dtype)
    ip = F.pad(img[None], (r, r, r, r), mode="replicate")[0]
    out = log_depth.clone()
    n = side * side
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        px = F.unfold(x[None, None, y0:y1 + 2 * r], side, dilation=step).reshape(n, m, w)
        pv = F.unfold(vp[None, None, y0:y1 + 2 * r], side, dilation=step).reshape(n, m, w) > 0.5
        pc = F.unfold(ip[None, :, y0:y1 + 2 * r], side, dilation=step).reshape(3, n, m, w)
        similar = (pc - img[:, None, y0:y1]).abs().mean(0) < gate
        med = torch.where(pv & similar, px, torch.full_like(px, float("nan"))).nanmedian(0).values
        own = log_depth[y0:y1]
        swap = valid[y0:y1] & ~med.isnan() & ((own - med).abs() > tol)
        if keep is not None:
            swap &= ~keep[y0:y1]
        out[y0:y1] = torch.where(swap, med, own)
    return out


def _shift_gate(K: torch.Tensor, w2c: torch.Tensor, i: int, src: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pixel shift in the chosen source view for a ±10 % depth change around ``depth`` (H,W)."""
    h, w = depth.shape
    shift = torch.zeros_like(depth)
    for j in src.unique().tolist():
        a, b = _ray_terms(K[i], w2c[i], K[j], w2c[j], h, w)
        uv, _ = _project(a, b, torch.stack([depth.reshape(-1) * 0.9, depth.reshape(-1) * 1.1]))
        d = (uv[1] - uv[0]).norm(dim=-1).reshape(h, w)
        shift = torch.where(src == j, d, shift)
    return shift


def sweep_depth(images: torch.Tensor, cameras: Cameras, guess: torch.Tensor,
                cfg: SweepConfig | None = None) -> SweepResult:
    """Refine per-view z-depth guesses (V,H,W) by photometric matching between the views (V,H,W,3).

    Returns the matched depth where the gates accept it and the guess elsewhere (see the module
    docstring). Needs >= 2 views with one camera each; works in float32 on the CPU or GPU.
    """
    cfg = cfg or SweepConfig()
    v, h, w, _ = images.shape
    if v < 2 or len(cameras) != v or guess.shape != (v, h, w):
        raise ValueError(f"need >= 2 views with a camera and a guess each: images {tuple(images.shape)}, "
                         f"{len(cameras)} cameras, guess {tuple(guess.shape)}")
    dev = images.device
    img = images.permute(0, 3, 1, 2).float()
    K = cameras.K.to(dev, torch.float32)
    w2c = cameras.w2c.to(dev, torch.float32)
    guess = guess.to(dev, torch.float32).clamp_min(1e-6)
    log_grid = torch.linspace(math.log(cfg.lo), math.log(cfg.hi), cfg.coarse, device=dev)
    fine_grid = torch.linspace(-cfg.fine_range, cfg.fine_range, cfg.fine, device=dev)
    h2, w2 = max(h // 2, 8), max(w // 2, 8)
    img2 = F.interpolate(img, size=(h2, w2), mode="bilinear", align_corners=False, antialias=True)
    K2 = scale_intrinsics(K, w2 / w, h2 / h)
    guess2 = F.interpolate(guess[:, None], size=(h2, w2), mode="bilinear", align_corners=False)[:, 0]
    depths, valids, scores = [], [], []
    for i in range(v):
        # pass 1: wide, half resolution
        step, _, best, _ = _sweep_view(img2, K2, w2c, i, guess2[i], torch.exp(log_grid), cfg)
        dl = log_grid[1] - log_grid[0]
        log1 = log_grid[best] + step * dl
        log1 = F.interpolate(log1[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        # pass 2: narrow, full resolution, around the first pass's depth
        centre = guess[i] * torch.exp(log1)
        factors = torch.exp(fine_grid)[:, None, None].expand(-1, h, w)
        step2, score, best2, src = _sweep_view(img, K, w2c, i, centre, factors, cfg)
        dl2 = fine_grid[1] - fine_grid[0]
        log2 = log1 + fine_grid[best2] + step2 * dl2
        wide_edge = (log1 <= log_grid[0] + dl) | (log1 >= log_grid[-1] - dl)
        edge = (best2 == 0) | (best2 == cfg.fine - 1) | wide_edge
        sd = _window_stats(img[i], cfg.window)[1][0]                     # texture gate (full resolution)
        depth = guess[i] * torch.exp(log2)
        ok = (score >= cfg.min_zncc) & (sd >= cfg.min_std) & ~edge
        ok &= _shift_gate(K, w2c, i, src, depth) >= cfg.min_shift_px
        if cfg.median:
            log2 = torch.where(ok, _median3(log2, ok), log2)
        log_depth = guess[i].log() + log2
        if cfg.despeckle > 0:
            k = int(round(cfg.despeckle * min(h, w))) // 2 * 2 + 1
            log_depth = despeckle(log_depth, ok, img[i].permute(1, 2, 0), k, cfg.despeckle_tol,
                                  cfg.despeckle_gate, samples=cfg.despeckle_samples,
                                  keep=score >= cfg.despeckle_keep_zncc)
        depths.append(torch.where(ok, torch.exp(log_depth), guess[i]))
        valids.append(ok)
        scores.append(score)
    return SweepResult(torch.stack(depths), torch.stack(valids), torch.stack(scores))


__all__ = ["SweepConfig", "SweepResult", "box_mean", "despeckle", "sweep_depth"]
