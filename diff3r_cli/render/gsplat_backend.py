"""gsplat backend: a thin wrapper around ``gsplat.rasterization`` in classic mode.

Settings are pinned to the conventions the torch backend implements (packed=False,
rasterize_mode="classic", render_mode="RGB+ED", near 0.01, eps2d 0.3, radius_clip 0), so
the two backends agree to float32 rounding. gsplat's CUDA kernels are float32 only: float64
Gaussians are rendered in float32 and the outputs cast back (the cast is differentiable).
gsplat has no forward-mode AD; use :func:`diff3r_cli.render.jvp.render_jvp` for Jv.
"""

from __future__ import annotations

import torch

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import RenderOutput


def render_gsplat(gaussians: Gaussians, cameras, background=None, tile_size: int = 16,
                  **kw) -> RenderOutput:
    """Render with gsplat (CUDA tensors only). Same outputs and meaning as ``render_torch``."""
    if kw:
        raise TypeError(f"render_gsplat got unexpected keyword arguments {sorted(kw)}")
    g = gaussians
    if not g.means.is_cuda:
        raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' on the CPU")
    try:
        from gsplat import rasterization  # lazy: importing gsplat may compile/load CUDA code
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"gsplat is not usable here ({exc}); use backend='torch'") from exc
    dt = g.means.dtype
    dev = g.means.device
    f32 = torch.float32
    K = cameras.K.to(device=dev, dtype=f32)
    w2c = cameras.w2c.to(device=dev, dtype=f32)
    C, H, W = K.shape[0], cameras.height, cameras.width
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, device=dev, dtype=f32)
        if tuple(bg.shape) == (3,):
            bg = bg[None].expand(C, 3)
        if tuple(bg.shape) != (C, 3):
            raise ValueError(f"background must have shape (3,) or ({C},3), got {tuple(bg.shape)}")
        bg = bg.contiguous()
    if g.num == 0:
        rgb = torch.zeros(C, H, W, 3, device=dev, dtype=dt)
        if bg is not None:
            rgb = rgb + bg.to(dt)[:, None, None, :]
        z = torch.zeros(C, H, W, device=dev, dtype=dt)
        return RenderOutput(rgb=rgb, depth=z, alpha=z.clone())
    colors, alphas, _meta = rasterization(
        means=g.means.to(f32).contiguous(),
        quats=g.quats.to(f32).contiguous(),
        scales=torch.exp(g.log_scales.to(f32)).contiguous(),
        opacities=torch.sigmoid(g.opacity_logits.to(f32)).contiguous(),
        colors=g.sh.to(f32).contiguous(),
        viewmats=w2c.contiguous(),
        Ks=K.contiguous(),
        width=W,
        height=H,
        near_plane=0.01,
        far_plane=1e10,
        radius_clip=0.0,
        eps2d=0.3,
        sh_degree=g.sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=bg,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    # gsplat's ED channel is Σwz / max(α, 1e-10), which is 0 where α = 0, as ours.
    return RenderOutput(rgb=colors[..., :3].to(dt), depth=colors[..., 3].to(dt),
                        alpha=alphas[..., 0].to(dt))


__all__ = ["render_gsplat"]
