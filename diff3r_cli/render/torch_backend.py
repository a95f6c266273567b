"""Pure-PyTorch differentiable Gaussian rasterizer matching gsplat 1.5 "classic" mode.

Pipeline (all cameras at once):

1. Project: world -> camera, EWA covariance with gsplat's clamped Jacobian, 2D covariance
   dilated by ``EPS2D``·I, conic = its inverse. Cull (non-differentiably, like gsplat) camera
   entries before the near plane / beyond the far plane, with opacity < 1/255, a non-positive
   determinant, or a footprint box entirely off-screen.
2. Bin (no autograd): for every surviving (camera, Gaussian) entry, enumerate the pixels of
   the tight box around the ellipse where α can reach 1/255, evaluate α and keep the pairs
   with α >= 1/255. Chunked, so memory grows with the number of overlaps, never N×pixels.
3. Sort pairs by (camera, pixel, depth) and apply the transmittance cut-off (a pixel stops
   before the first Gaussian whose inclusion would bring T to <= 1e-4).
4. Composite (autograd + forward-mode AD): recompute α on the surviving pairs from the
   differentiable per-entry parameters, segmented front-to-back transmittance by a float64
   cumulative sum of log(1-α), weights w = α·T, scatter-add colour / depth / alpha.

Only out-of-place ops on differentiable tensors, so ``torch.func.jvp`` and
``torch.autograd.forward_ad`` work as well as ``backward``.
"""

from __future__ import annotations

import math

import torch

from diff3r_cli.gaussians import Gaussians, quat_to_rotmat
from diff3r_cli.render import RenderOutput
from diff3r_cli.render.sh import eval_sh

NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3             # 2D covariance dilation (gsplat eps2d)
EXTEND_MAX = 3.33       # footprint radius in standard deviations (gsplat)
ALPHA_MIN = 1.0 / 255.0  # pairs below this α are skipped
ALPHA_MAX = 0.999       # α clamp; gsplat 1.5's CUDA kernel uses 0.999 (DESIGN.md says 0.99)
T_MIN = 1e-4            # compositing stops before T·(1-α) <= T_MIN (exclusive, as gsplat)

# Maximum number of candidate (pixel, Gaussian) box pairs handled at once in the binning pass.
DEFAULT_CHUNK = 1 << 22


def _prepare_background(background, C: int, like: torch.Tensor) -> torch.Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if tuple(bg.shape) == (3,):
        bg = bg[None].expand(C, 3)
    if tuple(bg.shape) != (C, 3):
        raise ValueError(f"background must have shape (3,) or ({C},3), got {tuple(bg.shape)}")
    return bg


def _empty_output(C: int, H: int, W: int, bg, like: torch.Tensor) -> RenderOutput:
    rgb = torch.zeros(C, H, W, 3, dtype=like.dtype, device=like.device)
    if bg is not None:
        rgb = rgb + bg[:, None, None, :]
    # Keep the graph connected so callers can always backward (gradients are zero).
    zero = like.sum() * 0
    z = torch.zeros(C, H, W, dtype=like.dtype, device=like.device) + zero
    return RenderOutput(rgb=rgb + zero, depth=z, alpha=z.clone())


def project_gaussians(g: Gaussians, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int):
    """EWA-project every Gaussian into every camera and cull like gsplat.

    Returns a dict of per-entry tensors for the surviving (camera, Gaussian) entries, sorted
    by (camera, depth): ``cam`` (E,), ``gid`` (E,), ``mean2d`` (E,2), ``conic`` (E,3)
    (inverse 2D covariance entries a, b, c of [[a,b],[b,c]]), ``depth`` (E,), ``opacity``
    (E,), ``cov2d`` (E,3) (dilated covariance xx, xy, yy), differentiable w.r.t. ``g``.
    """
    C = K.shape[0]
    R = w2c[:, :3, :3]
    t = w2c[:, :3, 3]
    opac_all = torch.sigmoid(g.opacity_logits)
    with torch.no_grad():
        # Culling decisions are discrete and must not see tangents/gradients.
        z_all = torch.einsum("cj,nj->cn", R[:, 2].detach(), g.means.detach()) + t[:, 2:3].detach()
        ok = (z_all >= NEAR_PLANE) & (z_all <= FAR_PLANE) & (opac_all.detach() >= ALPHA_MIN)[None]
        cam, gid = ok.nonzero(as_tuple=True)
    if cam.numel() == 0:
        return None

    means = g.means[gid]
    Rc = R[cam]                                               # (E,3,3)
    p = torch.einsum("eij,ej->ei", Rc, means) + t[cam]        # camera coordinates
    rot = quat_to_rotmat(g.quats[gid])
    s = torch.exp(g.log_scales[gid])
    M = rot * s[:, None, :]                                   # R S
    cov3 = M @ M.transpose(1, 2)                              # world covariance
    cov_c = Rc @ cov3 @ Rc.transpose(1, 2)

    Ke = K[cam]
    fx, fy, cx, cy = Ke[:, 0, 0], Ke[:, 1, 1], Ke[:, 0, 2], Ke[:, 1, 2]
    x, y, z = p.unbind(-1)
    rz = 1.0 / z
    # gsplat clamps the point used in the Jacobian to 1.3x the view frustum (per side).
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz,
                     zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(-1, 2, 3)
    cov2 = J @ cov_c @ J.transpose(1, 2)
    a = cov2[:, 0, 0] + EPS2D
    b = 0.5 * (cov2[:, 0, 1] + cov2[:, 1, 0])
    c = cov2[:, 1, 1] + EPS2D
    det = a * c - b * b
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    opac = opac_all[gid]

    with torch.no_grad():
        a_, c_, det_, m_, o_ = a.detach(), c.detach(), det.detach(), mean2d.detach(), opac.detach()
        # Opacity-aware extent (gsplat): beyond it α < 1/255 everywhere.
        extend = torch.sqrt(2.0 * torch.log((o_ / ALPHA_MIN).clamp_min(1.0))).clamp_max(EXTEND_MAX)
        rx = torch.ceil(extend * a_.clamp_min(0).sqrt())
        ry = torch.ceil(extend * c_.clamp_min(0).sqrt())
        keep = (det_ > 0) & torch.isfinite(det_) & torch.isfinite(m_).all(-1)
        keep &= (rx > 0) | (ry > 0)
        keep &= (m_[:, 0] + rx > 0) & (m_[:, 0] - rx < width) & (m_[:, 1] + ry > 0) & (m_[:, 1] - ry < height)
        idx = keep.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return None
        # Sort entries by (camera, depth): stable sort by depth, then stable sort by camera.
        d_sel = z.detach()[idx]
        o1 = torch.sort(d_sel, stable=True).indices
        o2 = torch.sort(cam[idx][o1], stable=True).indices
        idx = idx[o1[o2]]

    a, b, c, det = a[idx], b[idx], c[idx], det[idx]
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    return {
        "cam": cam[idx], "gid": gid[idx], "mean2d": mean2d[idx], "conic": conic,
        "depth": z[idx], "opacity": opac[idx], "cov2d": torch.stack([a, b, c], -1),
        "extend": extend[idx],
    }


def _alpha(mean2d, conic, opac, px, py):
    """α of pairs at pixel centres (px, py) (already +0.5)."""
    dx = mean2d[:, 0] - px
    dy = mean2d[:, 1] - py
    sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
    return torch.clamp_max(opac * torch.exp(-sigma), ALPHA_MAX)


@torch.no_grad()
def bin_pairs(ent: dict, C: int, width: int, height: int, chunk: int = DEFAULT_CHUNK):
    """Enumerate (entry, pixel) pairs with α >= 1/255, sorted by (camera, pixel, depth),
    with the transmittance cut-off applied. Returns (entry_idx (M,), pixel_key (M,)) where
    pixel_key = cam·H·W + y·W + x. No autograd."""
    m2 = ent["mean2d"].detach()
    conic = ent["conic"].detach()
    opac = ent["opacity"].detach()
    cov = ent["cov2d"].detach()
    ext = ent["extend"]
    cam = ent["cam"]
    dev = m2.device
    E = m2.shape[0]
    # Tight box of the ellipse {dᵀΣ⁻¹d <= extend²} (half-widths extend·sqrt(Σxx), extend·sqrt(Σyy)),
    # in pixel indices whose centres (i+0.5) fall inside; a tiny margin guards rounding.
    hx = ext * cov[:, 0].sqrt() + 1e-3
    hy = ext * cov[:, 2].sqrt() + 1e-3
    x0 = torch.ceil(m2[:, 0] - hx - 0.5).clamp(0, width).long()
    x1 = torch.floor(m2[:, 0] + hx - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(m2[:, 1] - hy - 0.5).clamp(0, height).long()
    y1 = torch.floor(m2[:, 1] + hy - 0.5).clamp(-1, height - 1).long()
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    counts = bw * bh
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if E else 0
    starts = ends - counts
    hw = height * width
    out_e, out_k, out_a = [], [], []
    e_lo = 0
    while e_lo < E and total > 0:
        # Take entries until the chunk is full (at least one entry per chunk).
        base = int(starts[e_lo])
        e_hi = int(torch.searchsorted(ends, base + chunk, right=True))
        e_hi = max(e_hi, e_lo + 1)
        cnt = counts[e_lo:e_hi]
        n = int(cnt.sum())
        if n > 0:
            er = torch.repeat_interleave(torch.arange(e_lo, e_hi, device=dev), cnt)
            local = torch.arange(n, device=dev) - (starts[er] - base)
            w_ = bw[er]
            px = x0[er] + local % w_
            py = y0[er] + local // w_
            al = _alpha(m2[er], conic[er], opac[er], px.to(m2.dtype) + 0.5, py.to(m2.dtype) + 0.5)
            sel = al >= ALPHA_MIN
            er, px, py, al = er[sel], px[sel], py[sel], al[sel]
            out_e.append(er)
            out_k.append(cam[er] * hw + py * width + px)
            out_a.append(al)
        e_lo = e_hi
    if not out_e:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z.clone()
    e_idx = torch.cat(out_e)
    key = torch.cat(out_k)
    al = torch.cat(out_a)
    if e_idx.numel() == 0:
        return e_idx, key
    # Entries are already in (camera, depth) order, so the entry index is the depth rank.
    order = torch.sort(key * E + e_idx).indices
    e_idx, key, al = e_idx[order], key[order], al[order]
    # Transmittance cut-off: drop the first pair whose T_next <= T_MIN and all after it.
    log_t_incl, _ = _segmented_log_transmittance(torch.log1p(-al.double()), key)
    keep = log_t_incl > math.log(T_MIN)
    return e_idx[keep], key[keep]


def _segment_ids(key: torch.Tensor):
    """Segment id of each element of a sorted key vector and the index of each segment's start."""
    start = torch.ones_like(key, dtype=torch.bool)
    start[1:] = key[1:] != key[:-1]
    seg = torch.cumsum(start, 0) - 1
    return seg, start.nonzero(as_tuple=True)[0]


def _segmented_log_transmittance(log1m: torch.Tensor, key: torch.Tensor, seg=None):
    """Inclusive and exclusive log-transmittance within each run of equal keys.

    ``log1m`` = log(1-α) per pair (float64: a global cumsum in float32 would lose precision
    over millions of pairs). Differentiable and forward-AD friendly.
    """
    if seg is None:
        seg = _segment_ids(key)
    seg_id, seg_start = seg
    cs = torch.cumsum(log1m, 0)
    before = (cs - log1m)[seg_start]     # cumulative sum before each segment
    incl = cs - before[seg_id]
    return incl, incl - log1m


def render_torch(gaussians: Gaussians, cameras, background=None, chunk: int = DEFAULT_CHUNK,
                 **kw) -> RenderOutput:
    """Render ``gaussians`` into every camera with the pure-PyTorch rasterizer.

    Returns RenderOutput with rgb (C,H,W,3) = Σ wᵢcᵢ + T_final·background, depth (C,H,W)
    = expected depth Σ wᵢzᵢ / Σ wᵢ where Σ wᵢ > 0 (0 elsewhere), alpha (C,H,W) = Σ wᵢ.
    ``background``: (3,) or (C,3) colour, None = black. Works on CPU and CUDA, float32 and
    float64 (cameras are cast to the Gaussians' dtype), under autograd and forward-mode AD.
    """
    if kw:
        raise TypeError(f"render_torch got unexpected keyword arguments {sorted(kw)}")
    g = gaussians
    dev, dt = g.means.device, g.means.dtype
    K = cameras.K.to(device=dev, dtype=dt)
    w2c = cameras.w2c.to(device=dev, dtype=dt)
    C, H, W = K.shape[0], cameras.height, cameras.width
    bg = _prepare_background(background, C, g.means)
    if g.num == 0:
        return _empty_output(C, H, W, bg, g.means)
    ent = project_gaussians(g, K, w2c, W, H)
    if ent is None:
        return _empty_output(C, H, W, bg, g.means + 0 * sum(t.sum() for t in g.tensors()))
    e_idx, key = bin_pairs(ent, C, W, H, chunk=chunk)

    # Per-entry colour from SH, view direction from the camera centre to the mean (gsplat).
    centers = torch.linalg.inv(w2c)[:, :3, 3]
    dirs = g.means[ent["gid"]] - centers[ent["cam"]]
    color = torch.clamp_min(eval_sh(g.sh[ent["gid"]], dirs) + 0.5, 0.0)

    # One packed gather per pair (its backward is one index_add).
    packed = torch.cat([ent["mean2d"], ent["conic"], ent["opacity"][:, None], color,
                        ent["depth"][:, None]], dim=1)  # (E,10)
    P = packed[e_idx]
    pix = key % (H * W)
    px = (pix % W).to(dt) + 0.5
    py = (pix // W).to(dt) + 0.5
    al = _alpha(P[:, 0:2], P[:, 2:5], P[:, 5], px, py)
    log1m = torch.log1p(-al)
    _, log_t_excl = _segmented_log_transmittance(log1m.double(), key)
    w = al * torch.exp(log_t_excl).to(dt)
    vals = w[:, None] * torch.cat([P[:, 6:10], torch.ones_like(w)[:, None]], dim=1)  # rgb, z, 1
    acc = torch.zeros(C * H * W, 5, dtype=dt, device=dev).index_add(0, key, vals)
    acc = acc.reshape(C, H, W, 5)
    alpha = acc[..., 4]
    rgb = acc[..., :3]
    if bg is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * bg[:, None, None, :]
    depth = acc[..., 3] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha)


__all__ = ["render_torch", "project_gaussians", "bin_pairs"]
