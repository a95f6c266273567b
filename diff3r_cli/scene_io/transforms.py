"""transforms.json readers: instant-ngp, nerfstudio and Blender (NeRF-synthetic) layouts.

Poses are camera-to-world in the OpenGL convention (x right, y up, z backward) and are turned
into OpenCV world-to-camera matrices. Intrinsics come from fl_x/fl_y/cx/cy or camera_angle_x/y,
top-level or per frame (a frame's value overrides the top level). Distortion k1 k2 (k3 k4) p1 p2
is removed by remapping to a pinhole camera with the same focal lengths and principal point.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.geometry import scale_intrinsics
from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, load_image, stack_posed_views
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.undistort import opencv_camera, undistort_image

TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def find_transforms(path: Path) -> Path:
    """The transforms file for a path that is either the file or the folder holding it."""
    if path.is_file():
        return path
    for name in TRANSFORMS_NAMES:
        if (path / name).is_file():
            return path / name
    raise UserError("no transforms.json found", path, "point to the transforms.json file or its folder")


def resolve_image_path(base: Path, file_path: str, json_path: Path) -> Path:
    """Image file for a frame's file_path, which may lack its extension (Blender: './train/r_0')."""
    p = base / file_path
    if p.is_file():
        return p
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            cand = p.with_name(p.name + ext)
            if cand.is_file():
                return cand
    raise UserError(f"image named in {json_path.name} does not exist", p,
                    "restore the file or fix the frame's file_path")


def _num(v, key: str, json_path: Path) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"field {key!r} is not a number: {v!r}", json_path, "fix the transforms file") from None
    if not math.isfinite(x):
        raise UserError(f"field {key!r} is not finite", json_path, "fix the transforms file")
    return x


def frame_intrinsics(meta: dict, frame: dict, img_w: int, img_h: int, json_path: Path) -> tuple[torch.Tensor, dict, bool]:
    """(K (3,3) float64 at the image's own size, distortion dict, fisheye) for one frame.

    Intrinsics are given for the (w, h) of the file (or the image itself when w/h are absent);
    images stored downscaled by a uniform factor get their intrinsics scaled to match.
    """
    def get(key, default=None):
        if key in frame:
            return frame[key]
        return meta.get(key, default)

    w = _num(get("w"), "w", json_path) if get("w") is not None else float(img_w)
    h = _num(get("h"), "h", json_path) if get("h") is not None else float(img_h)
    # A frame's own focal (fl_* or camera_angle_*) beats the file's; fl_* beats the angle at one level.
    level = frame if any(k in frame for k in ("fl_x", "camera_angle_x")) else meta
    if level.get("fl_x") is not None:
        fx = _num(level["fl_x"], "fl_x", json_path)
    elif level.get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * _num(level["camera_angle_x"], "camera_angle_x", json_path))
    else:
        raise UserError("no focal length: need fl_x or camera_angle_x", json_path, "add the intrinsics to the file")
    level_y = frame if any(k in frame for k in ("fl_y", "camera_angle_y")) else meta
    if level_y.get("fl_y") is not None:
        fy = _num(level_y["fl_y"], "fl_y", json_path)
    elif level_y.get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * _num(level_y["camera_angle_y"], "camera_angle_y", json_path))
    else:
        fy = fx
    cx = _num(get("cx"), "cx", json_path) if get("cx") is not None else w / 2
    cy = _num(get("cy"), "cy", json_path) if get("cy") is not None else h / 2
    if fx <= 0 or fy <= 0:
        raise UserError(f"non-positive focal length ({fx}, {fy})", json_path, "fix fl_x/fl_y or camera_angle_x")
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)
    if (img_w, img_h) != (round(w), round(h)):
        sx, sy = img_w / w, img_h / h
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise UserError(f"image is {img_w}x{img_h} but the transforms file says {w:g}x{h:g}", json_path,
                            "fix w/h or use the images the poses were made for")
        K = scale_intrinsics(K, sx, sy)
    dist = {k: _num(get(k, 0.0), k, json_path) for k in DISTORTION_KEYS}
    fisheye = str(get("camera_model", "OPENCV")).upper() == "OPENCV_FISHEYE"
    return K, dist, fisheye


def load_transforms_scene(path: str | Path, resolution: tuple[int, int] | None = None, views: list[int] | None = None,
                          mode: str = "resize_crop", background: float = 1.0) -> Scene:
    """Read a transforms.json scene (frames in file order; ``views`` indexes them).

    resolution: (width, height) to resample to; required when image sizes differ. Transparent
    images (Blender) are composited over ``background``. Extras: undistorted, valid_mask.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("path does not exist", path, "check the dataset path")
    json_path = find_transforms(path)
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"invalid JSON ({e})", json_path, "fix or regenerate the transforms file") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise UserError("no 'frames' list", json_path, "a transforms file needs a non-empty 'frames' list")
    if views is not None:
        bad = [v for v in views if not -len(frames) <= v < len(frames)]
        if bad:
            raise UserError(f"view indices {bad} out of range: the file has {len(frames)} frames", json_path,
                            f"choose views in 0..{len(frames) - 1}")
        frames = [frames[v] for v in views]
    if len(frames) < 2:
        raise UserError(f"only {len(frames)} frame(s); at least 2 views are needed", json_path, "select more views")
    base = json_path.parent
    # Check every file first so the user learns of all-or-nothing problems before decoding starts.
    paths = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise UserError(f"frame {i} lacks file_path or transform_matrix", json_path, "fix the frame entry")
        paths.append(resolve_image_path(base, str(fr["file_path"]), json_path))

    images, Ks, w2cs, masks, any_undistorted = [], [], [], [], False
    for fr, p in zip(frames, paths):
        try:
            c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        except (TypeError, ValueError):
            raise UserError(f"transform_matrix of {fr['file_path']} is not a matrix", json_path, "fix the frame") from None
        if c2w.shape not in ((4, 4), (3, 4)) or not torch.isfinite(c2w).all():
            raise UserError(f"transform_matrix of {fr['file_path']} must be a finite 4x4 or 3x4 matrix", json_path,
                            "fix the frame")
        R = c2w[:3, :3]
        if abs(float(torch.linalg.det(R))) < 1e-8:
            raise UserError(f"transform_matrix of {fr['file_path']} has a singular rotation", json_path, "fix the frame")
        img = load_image(p, background=background)
        K, dist, fisheye = frame_intrinsics(meta, fr, img.shape[1], img.shape[0], json_path)
        valid = torch.ones(img.shape[:2], dtype=torch.bool)
        if any(v != 0.0 for v in dist.values()) or fisheye:
            cam = opencv_camera(K, img.shape[1], img.shape[0], fisheye=fisheye, **dist)
            img, K, valid = undistort_image(img, cam)
            any_undistorted = True
        cams = Cameras.from_c2w_opengl(K, c2w, img.shape[1], img.shape[0])
        images.append(img)
        Ks.append(K)
        w2cs.append(cams.w2c[0])
        masks.append(valid)

    stacked, cams, extras = stack_posed_views(images, Ks, w2cs, masks, resolution, mode, json_path,
                                              any_undistorted)
    extras["transforms"] = str(json_path)
    # optional diff3r hints (ignored by other tools): which frames are the intended inputs, depth range
    hint = meta.get("diff3r_context_views")
    if views is None and isinstance(hint, list) and len(hint) >= 2 and all(
            isinstance(i, int) and 0 <= i < len(images) for i in hint):
        extras["context_views"] = list(hint)
    if isinstance(meta.get("near"), (int, float)) and isinstance(meta.get("far"), (int, float)):
        extras["near"], extras["far"] = float(meta["near"]), float(meta["far"])
    return Scene(stacked, cams, [str(p) for p in paths], "transforms", path, extras)
