"""render(gaussians, cameras, background=None, backend="auto") -> RenderOutput.

Conventions (gsplat classic mode): EWA projection, 2D covariance dilated by 0.3·I, footprint
radius ceil(3.33σ), near plane 0.01, α = min(0.99, o·exp(−½dᵀΣ⁻¹d)), α < 1/255 skipped,
compositing stops when transmittance < 1e-4, front to back by camera depth. (gsplat 1.5's CUDA
kernel clamps α at 0.999, not 0.99, and both backends follow it; the cut-off is exclusive: a
Gaussian that would bring T·(1-α) to <= 1e-4 and all behind it are skipped.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RenderOutput:
    rgb: torch.Tensor    # (C,H,W,3)
    depth: torch.Tensor  # (C,H,W) expected depth: sum_i w_i z_i / alpha where alpha > 0, else 0 (gsplat "ED")
    alpha: torch.Tensor  # (C,H,W) accumulated opacity


def render(gaussians, cameras, background=None, backend: str = "auto", **kw) -> RenderOutput:
    """Render Gaussians into every camera. backend: "auto" | "torch" | "gsplat"."""
    if backend == "auto":
        backend = "gsplat" if gaussians.means.is_cuda else "torch"
    if backend == "torch":
        from diff3r_cli.render.torch_backend import render_torch
        return render_torch(gaussians, cameras, background=background, **kw)
    if backend == "gsplat":
        from diff3r_cli.render.gsplat_backend import render_gsplat
        return render_gsplat(gaussians, cameras, background=background, **kw)
    raise ValueError(f"unknown render backend {backend!r} (use auto, torch or gsplat)")


__all__ = ["render", "RenderOutput"]
