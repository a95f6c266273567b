"""What `refine` and `render` read back from a reconstructed splat: its context cameras and the
context images the network saw (both described by the sidecar written next to the .ply)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError


def context_cameras(doc: dict, sidecar: Path) -> Cameras:
    """The sidecar's cameras, restricted to its context views when it names them."""
    from diff3r_cli.sidecar import cameras_from_sidecar

    cams = cameras_from_sidecar(doc, sidecar)
    ctx = doc.get("context_views")
    if ctx:
        if max(ctx) >= len(cams):
            raise UserError("sidecar context views do not match its cameras", sidecar, "re-run reconstruct")
        cams = cams[ctx]
    return cams


def _saved_network_inputs(doc: dict, sidecar: Path) -> Optional[torch.Tensor]:
    """The exact network inputs reconstruct saved (<stem>_inputs/), or None when any is gone."""
    from diff3r_cli.scene_io.images import load_image

    saved = doc.get("context_images")
    if not saved:
        return None
    base = sidecar.parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in saved]
    if not all(p.is_file() for p in paths):
        return None
    return torch.stack([load_image(p) for p in paths])


def context_images(doc: dict, sidecar: Path, images_dir: Optional[Path], cams: Cameras) -> torch.Tensor:
    """The context images refine optimises against: the exact network inputs saved by reconstruct,
    or (with ``images_dir`` / when those are gone) the original files resized and centre-cropped to
    the stored cameras' size (a distorted camera's undistortion is not redone on this path)."""
    from diff3r_cli.scene_io.images import load_image, resize_view
    from diff3r_cli.sidecar import resolve_images

    if images_dir is None:
        saved = _saved_network_inputs(doc, sidecar)
        if saved is not None:
            return saved
    ctx = doc.get("context_views") or []
    originals = resolve_images(doc, images_dir, sidecar)
    paths = [originals[i] for i in ctx] if ctx and len(originals) > max(ctx) else originals
    imgs = []
    for p in paths:
        im = load_image(p)
        if im.shape[:2] != (cams.height, cams.width):
            # the crop depends only on the sizes, so any K does; same resampling as reconstruct
            im, _ = resize_view(im, torch.eye(3, dtype=torch.float64), cams.width, cams.height)
        imgs.append(im)
    return torch.stack(imgs)


__all__ = ["context_cameras", "context_images"]
