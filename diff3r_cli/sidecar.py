"""The JSON sidecar next to an exported splat: ``scene.ply`` -> ``scene.json``.

It records what a later ``refine``/``render`` needs and a splat viewer ignores: the input
image paths (relative to the sidecar when possible, so the pair can be moved together with
the images), the cameras (K in pixels, w2c, OpenCV convention), which views were context
views, the working resolution, the model id, and free-form extras.

Schema (version 1)::

    {"diff3r_sidecar": 1,
     "images": ["images/0001.png", ...],           # relative to the sidecar's folder
     "cameras": {"K": [[[..3..]x3]...], "w2c": [[[..4..]x4]...], "width": W, "height": H},
     "context_views": [0, 1],
     "resolution": [H, W],
     "model": "diff3r-re10k-256" | "/path/to/weights.safetensors" | null,
     "extras": {...}}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.fsio import atomic_output

SIDECAR_VERSION = 1


def sidecar_path(ply_path: str | Path) -> Path:
    """scene.ply -> scene.json (same folder, same stem)."""
    return Path(ply_path).with_suffix(".json")


def _jsonable(obj: Any) -> Any:
    """Tensors/arrays/paths/Cameras -> plain JSON types (float64 kept exactly via repr)."""
    if isinstance(obj, Cameras):
        return {"K": _jsonable(obj.K), "w2c": _jsonable(obj.w2c), "width": obj.width, "height": obj.height}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().to(torch.float64 if obj.is_floating_point() else obj.dtype).tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError("sidecar values must be finite")
    return obj


def _relative(p: str | Path, base: Path) -> str:
    """Path of p relative to base when both are on the same filesystem root; else absolute."""
    ap = Path(os.path.abspath(p))
    try:
        return Path(os.path.relpath(ap, base)).as_posix()
    except ValueError:  # e.g. different drives on Windows
        return str(ap)


def write_sidecar(ply_path: str | Path, scene_info: dict) -> Path:
    """Write ``<stem>.json`` next to ``ply_path`` atomically; returns the sidecar path.

    scene_info keys (all optional): images (list of paths; relative ones are taken relative
    to the current directory), cameras (Cameras or dict K/w2c/width/height), context_views,
    resolution, model, extras; unknown keys are kept as they are.
    """
    out = sidecar_path(ply_path)
    base = Path(os.path.abspath(out.parent))
    info = dict(scene_info)
    doc: dict[str, Any] = {"diff3r_sidecar": SIDECAR_VERSION}
    if "images" in info:
        doc["images"] = [_relative(p, base) for p in info.pop("images")]
    for key in ("cameras", "context_views", "resolution", "model", "extras"):
        if key in info:
            doc[key] = _jsonable(info.pop(key))
    doc.update(_jsonable(info))
    text = json.dumps(doc, indent=1, allow_nan=False)
    with atomic_output(out, "w") as f:
        f.write(text + "\n")
    return out


def read_sidecar(ply_path: str | Path) -> dict:
    """Read the sidecar of ``ply_path``; image paths come back absolute.

    Raises UserError when it is missing or malformed.
    """
    p = sidecar_path(ply_path)
    if not p.exists():
        raise UserError("no sidecar found (it records the input cameras and views that refine/render need)", p,
                        f"keep the .json that reconstruct wrote next to {Path(ply_path).name} (move them together), "
                        "or re-run `diff3r reconstruct` to recreate both")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"sidecar is not valid JSON ({e})", p, "re-run reconstruct to rewrite it") from None
    if not isinstance(doc, dict) or "diff3r_sidecar" not in doc:
        raise UserError("not a diff3r sidecar", p, "re-run reconstruct to rewrite it")
    if "images" in doc:
        base = p.parent.resolve()
        doc["images"] = [os.path.normpath(base / q) for q in doc["images"]]
    return doc


def cameras_from_sidecar(doc: dict, path: str | Path | None = None) -> Cameras:
    """Cameras (float64) recorded in a sidecar dict; UserError if absent or malformed."""
    cams = doc.get("cameras")
    try:
        K = torch.tensor(cams["K"], dtype=torch.float64)
        w2c = torch.tensor(cams["w2c"], dtype=torch.float64)
        if K.dim() != 3 or K.shape[1:] != (3, 3) or w2c.shape[1:] != (4, 4) or len(K) != len(w2c):
            raise ValueError("shapes")
        return Cameras(K, w2c, int(cams["width"]), int(cams["height"]))
    except (TypeError, KeyError, ValueError, RuntimeError):
        raise UserError("sidecar has no valid cameras (K (C,3,3), w2c (C,4,4), width, height)", path,
                        "re-run reconstruct to rewrite it") from None


def scene_info(scene, context_views: list[int] | None = None, model: str | None = None,
               extras: dict | None = None) -> dict:
    """Build a sidecar dict from a scene_io Scene (images, cameras, resolution)."""
    return {"images": list(scene.paths), "cameras": scene.cameras,
            "context_views": list(range(len(scene))) if context_views is None else list(context_views),
            "resolution": [scene.height, scene.width], "model": model, "extras": dict(extras or {})}




def resolve_images(doc: dict, images_dir: str | Path | None = None, sidecar: str | Path | None = None) -> list[Path]:
    """The sidecar's input image paths, or the same file names inside ``images_dir``.

    Raises UserError naming the first missing image (and the --images fix) so that refine
    fails before any optimisation starts.
    """
    names = doc.get("images")
    if not names:
        raise UserError("sidecar records no input images", sidecar, "re-run reconstruct to rewrite it")
    paths = [Path(images_dir) / Path(p).name if images_dir is not None else Path(p) for p in names]
    for p in paths:
        if not p.is_file():
            raise UserError("input image not found", p,
                            "pass --images DIR with the folder that now holds the input images")
    return paths


def write_splat(ply_path: str | Path, gaussians, uncertainty: torch.Tensor | None, info: dict,
                layout: str = "viewer") -> tuple[Path, Path]:
    """Write ``scene.ply`` (``layout``: see diff3r_cli.ply) and its ``scene.json`` (ply first: a
    sidecar never points at nothing)."""
    from diff3r_cli.ply import write_ply

    ply = write_ply(ply_path, gaussians, uncertainty, layout=layout)
    return ply, write_sidecar(ply, info)


__all__ = ["write_sidecar", "read_sidecar", "sidecar_path", "cameras_from_sidecar", "scene_info",
           "resolve_images", "write_splat"]
