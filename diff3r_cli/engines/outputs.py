"""What the engines write besides the .ply: PNG images, the camera-path video (MP4/GIF), and the
render folder of `reconstruct` / `render` (written atomically, with PSNR against ground truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.engines.progress import Reporter
from diff3r_cli.fsio import atomic_dir
from diff3r_cli.gaussians import Gaussians

VIDEO_FPS = 12


@dataclass(frozen=True)
class NamedViews:
    """Views to render under a name: cameras, their ground truth (or None) and their input indices."""

    cameras: Cameras
    ground_truth: Optional[torch.Tensor]
    indices: list[int]
    appearance: Optional[torch.Tensor] = None  # (C,6) per-view gain/bias applied to the renders (context views)


@dataclass
class RenderFolder:
    """What :func:`write_renders` wrote: the folder, the path's frame count, the video (if any),
    and per named view set the PSNR against its ground truth and the input indices rendered."""

    folder: Path
    frames: int
    video: Optional[Path] = None
    psnr: dict[str, float] = field(default_factory=dict)
    views: dict[str, list[int]] = field(default_factory=dict)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(H,W,3) float in [0,1] -> uint8, rounded (values outside [0,1] are clamped)."""
    return (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(path: Path, img: torch.Tensor) -> None:
    Image.fromarray(to_uint8(img)).save(path)


def mean_psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR averaged over views (C,H,W,3), the convention of `eval` and the papers."""
    from diff3r_cli.metrics import psnr

    return float(psnr(pred.float(), gt.float()).mean())


def render_views(g: Gaussians, cameras: Cameras, batch: int = 4,
                 advance: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Render (C,H,W,3) in chunks of cameras (bounded memory); ``advance(n)`` after each chunk."""
    from diff3r_cli.render import render_images

    return render_images(g, cameras, chunk=batch, advance=advance)


def _write_named(tmp: Path, g: Gaussians, named: dict[str, NamedViews], report: Reporter, result: RenderFolder) -> None:
    """<name>_<index>.png (+ _gt.png) per named view set; PSNR where there is ground truth."""
    for name, nv in named.items():
        with report.step(f"render {name} views", len(nv.cameras)) as adv:
            imgs = render_views(g, nv.cameras, advance=adv)
        if nv.appearance is not None:
            from diff3r_cli.optim.appearance import apply_appearance

            imgs = apply_appearance(imgs, nv.appearance).clamp(0, 1)
        for k, im in zip(nv.indices, imgs):
            save_png(tmp / f"{name}_{k:02d}.png", im)
        if nv.ground_truth is not None:
            for k, im in zip(nv.indices, nv.ground_truth):
                save_png(tmp / f"{name}_{k:02d}_gt.png", im)
            result.psnr[name] = mean_psnr(imgs, nv.ground_truth)
            result.views[name] = list(nv.indices)


def _write_path(tmp: Path, dest: Path, g: Gaussians, path_cams: Cameras, fmt: Optional[str],
                report: Reporter) -> Optional[Path]:
    """frame_NNNN.png for every path camera, plus path.mp4 / path.gif; returns the video's final path."""
    from diff3r_cli.video import write_gif, write_mp4

    with report.step("render camera path", len(path_cams)) as adv:
        frames = render_views(g, path_cams, advance=adv)
    arr = [to_uint8(f) for f in frames]
    video = None
    with report.step("write frames" + (f" + {fmt}" if fmt and len(arr) > 1 else ""), len(arr)) as adv:
        for i, a in enumerate(arr):
            Image.fromarray(a).save(tmp / f"frame_{i:04d}.png")
            adv(1)
        if fmt == "mp4" and len(arr) > 1:
            write_mp4(tmp / "path.mp4", arr, fps=VIDEO_FPS)
            video = dest / "path.mp4"
        elif fmt == "gif" and len(arr) > 1:
            write_gif(tmp / "path.gif", arr, fps=VIDEO_FPS)
            video = dest / "path.gif"
    return video


def write_renders(dest: Path, g: Gaussians, path_cams: Cameras, video: bool | str,
                  named: Optional[dict[str, NamedViews]] = None, report: Optional[Reporter] = None) -> RenderFolder:
    """Render a camera path (+ named views with ground truth for PSNR) into `dest` atomically.

    Path frames are frame_NNNN.png; video: True/"mp4" adds path.mp4 (H.264), "gif" path.gif, ""/False
    none. named views are written as <name>_<index>.png (+ _gt.png), the index being the view's
    index in the input.
    """
    report = report or Reporter()
    fmt = "mp4" if video is True else (video or None)
    result = RenderFolder(folder=dest, frames=len(path_cams))
    with atomic_dir(dest) as tmp:
        _write_named(tmp, g, named or {}, report, result)
        result.video = _write_path(tmp, dest, g, path_cams, fmt, report)
    return result


__all__ = ["NamedViews", "RenderFolder", "VIDEO_FPS", "to_uint8", "save_png", "mean_psnr", "render_views",
           "write_renders"]
