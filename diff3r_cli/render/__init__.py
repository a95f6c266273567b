"""render(gaussians, cameras, background=None, backend="auto") -> RenderOutput.

Conventions (gsplat classic mode): EWA projection, 2D covariance dilated by 0.3·I, footprint
radius ceil(3.33σ), near plane 0.01, α = min(0.999, o·exp(−½dᵀΣ⁻¹d)), α < 1/255 skipped,
compositing stops when transmittance < 1e-4, front to back by camera depth. (gsplat 1.5's CUDA
kernel clamps α at 0.999, not the 0.99 of the original 3DGS code, and all backends follow it;
the cut-off is exclusive: a Gaussian that would bring T·(1-α) to <= 1e-4 and all behind it
are skipped.)

Backends: ``cpu`` (compiled C++ kernel, the default for CPU tensors), ``torch`` (pure
PyTorch, the readable reference; CPU and CUDA), ``gsplat`` (CUDA, the default for CUDA
tensors). ``auto`` picks by device; ``DIFF3R_RENDER_BACKEND=torch|cpu|gsplat`` overrides
what ``auto`` picks (the CLI's ``--backend`` sets it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

BACKENDS = ("auto", "cpu", "torch", "gsplat")
ENV_BACKEND = "DIFF3R_RENDER_BACKEND"


@dataclass
class RenderOutput:
    rgb: torch.Tensor    # (C,H,W,3)
    depth: torch.Tensor  # (C,H,W) expected depth: sum_i w_i z_i / alpha where alpha > 0, else 0 (gsplat "ED")
    alpha: torch.Tensor  # (C,H,W) accumulated opacity


_warned_fallback = False


def resolve_backend(backend: str, like: torch.Tensor) -> str:
    """The concrete backend ``render`` uses for tensors like ``like``.

    "auto": ``$DIFF3R_RENDER_BACKEND`` if set, else gsplat for CUDA tensors and the compiled
    "cpu" backend for CPU tensors, falling back to "torch" (one warning line saying why)
    where the kernel cannot be compiled or loaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r} (use {', '.join(BACKENDS)})")
    if backend != "auto":
        return backend
    env = os.environ.get(ENV_BACKEND, "").strip()
    if env and env != "auto":
        if env not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={env!r} is not a render backend (use cpu, torch or gsplat)")
        return env
    if like.is_cuda:
        return "gsplat"
    from diff3r_cli.render import cpu_ext

    if cpu_ext.load():
        return "cpu"
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        print(f"diff3r: warning: compiled CPU rasterizer unavailable ({cpu_ext.unavailable_reason()}); "
              "using the slower torch backend", file=sys.stderr, flush=True)
    return "torch"


def render(gaussians, cameras, background=None, backend: str = "auto", **kw) -> RenderOutput:
    """Render Gaussians into every camera. backend: "auto" | "cpu" | "torch" | "gsplat"."""
    backend = resolve_backend(backend, gaussians.means)
    if backend == "cpu":
        from diff3r_cli.render.cpu_backend import render_cpu
        return render_cpu(gaussians, cameras, background=background, **kw)
    if backend == "torch":
        from diff3r_cli.render.torch_backend import render_torch
        return render_torch(gaussians, cameras, background=background, **kw)
    from diff3r_cli.render.gsplat_backend import render_gsplat
    return render_gsplat(gaussians, cameras, background=background, **kw)


def render_images(gaussians, cameras, backend: str = "auto", chunk: int = 4,
                  advance: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """RGB images (C,H,W,3) on the CPU, clamped to [0,1], without autograd, ``chunk`` cameras at a
    time (bounded memory on long camera paths); ``advance(n)`` after each chunk of n cameras."""
    cams = cameras.to(gaussians.device, gaussians.dtype)
    outs = []
    with torch.no_grad():
        for i in range(0, len(cams), chunk):
            part = cams[i:i + chunk]
            outs.append(render(gaussians, part, backend=backend).rgb.clamp(0, 1).cpu())
            if advance is not None:
                advance(len(part))
    return torch.cat(outs)


__all__ = ["render", "render_images", "RenderOutput", "resolve_backend", "BACKENDS", "ENV_BACKEND"]
