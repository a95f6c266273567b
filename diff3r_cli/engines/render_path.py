"""`diff3r render`: novel views of a splat along a camera path built from its sidecar cameras."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.engines.outputs import RenderFolder, write_renders
from diff3r_cli.engines.progress import ProgressCallback, Reporter
from diff3r_cli.gaussians import Gaussians

PATH_KINDS = ("interpolate", "orbit", "input")


def camera_path(kind: str, cameras: Cameras, g: Gaussians, frames: int) -> Cameras:
    """The cameras of a path: "input" (the cameras themselves), "interpolate" (through them, in
    order) or "orbit" (around the median Gaussian)."""
    from diff3r_cli.camera_paths import interpolate_path, orbit_path

    if kind == "input":
        return cameras
    if kind == "interpolate":
        return interpolate_path(cameras, frames)
    if kind == "orbit":
        target = g.means.detach().median(dim=0).values.cpu()
        return orbit_path(cameras, target, frames)
    raise ValueError(f"unknown camera path {kind!r} (use {', '.join(PATH_KINDS)})")


def render_splat(ply: Path, out: Path, path: str = "interpolate", frames: int = 60, video: bool | str = False,
                 device: str = "auto", progress: Optional[ProgressCallback] = None) -> RenderFolder:
    """Render a .ply along a camera path built from its sidecar cameras into PNGs (+ path.mp4 with
    video=True/"mp4", path.gif with video="gif")."""
    from diff3r_cli.engines.policy import pick_device
    from diff3r_cli.engines.splat_inputs import context_cameras
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import read_sidecar, sidecar_path

    g, _ = read_ply(ply)
    doc = read_sidecar(ply)
    cams = context_cameras(doc, sidecar_path(ply))
    g = g.to(pick_device(device), torch.float32)
    return write_renders(Path(out), g, camera_path(path, cams, g, frames), video=video, report=Reporter(progress))


__all__ = ["PATH_KINDS", "camera_path", "render_splat"]
