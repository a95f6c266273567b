"""A twice-differentiable RGB render: the torch backend's stages with autograd compositing.

The torch backend composites in an ``autograd.Function`` whose hand-written backward is
first order only. Unrolled differentiation through an optimiser, and Hessian-vector products
by double backward, need second derivatives: this renderer reuses the backend's projection
and pair binning (no autograd there, exactly the same pairs) and writes the front-to-back
compositing out again in plain autograd ops. It matches ``render(..., backend="torch").rgb``
to round-off (tests/test_implicit.py) and is several times slower; the tests and
``benchmarks/layer.py`` use it as a reference, the library never picks it on its own.
"""

from __future__ import annotations

from typing import Optional

import torch

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import torch_backend as tb
from diff3r_cli.render.sh import eval_sh


def render_rgb_autograd(g: Gaussians, cameras, background: Optional[torch.Tensor] = None,
                        backend: str = "torch") -> torch.Tensor:
    """RGB (C,H,W,3) like ``render(g, cameras, background, backend="torch").rgb``, twice
    differentiable. ``backend`` is accepted (and ignored) so that the function can serve as
    an energy's render function."""
    dt = g.dtype
    K = cameras.K.to(dtype=dt)
    w2c = cameras.w2c.to(dtype=dt)
    C, H, W = K.shape[0], cameras.height, cameras.width
    n_pix = C * H * W
    ent = tb.project_gaussians(g, K, w2c, W, H)
    if ent is None:
        return torch.zeros(C, H, W, 3, dtype=dt) + 0 * sum(t.sum() for t in g.tensors())
    centers = torch.linalg.inv(w2c)[:, :3, 3]
    color = torch.clamp_min(eval_sh(g.sh[ent.gid], g.means[ent.gid] - centers[ent.cam]) + 0.5, 0.0)
    pairs = tb.bin_pairs(ent, C, W, H)
    e_idx, key = pairs.entry, pairs.pixel
    px = (key % W).to(dt) + 0.5
    py = ((key // W) % H).to(dt) + 0.5
    m = ent.mean2d[e_idx]
    con = ent.conic[e_idx]
    dx = m[:, 0] - px
    dy = m[:, 1] - py
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    alpha = torch.clamp_max(ent.opacity[e_idx] * torch.exp(-sigma), tb.ALPHA_MAX)
    # Exclusive log-transmittance within each pixel's run of pairs (float64 cumsum), written
    # with autograd ops (the backend's segmented sums are constants of its own backward).
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


__all__ = ["render_rgb_autograd"]
