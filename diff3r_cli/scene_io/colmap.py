"""COLMAP sparse models (binary or text) read through pycolmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.images import image_size, load_image, stack_posed_views
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.undistort import (DISTORTED_MODELS, PINHOLE_MODELS, is_identity_distortion,
                                           model_name, pinhole_K, undistort_image)
from diff3r_cli.interrupts import reclaim

reclaim()  # importing pycolmap installed glog's SIGTERM handler (a C++ stack trace): put ours back

MODEL_FILES = ("cameras.bin", "cameras.txt")


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds a COLMAP sparse model (cameras/images/points3D, .bin or .txt)."""
    return path.is_dir() and any((path / f).is_file() for f in MODEL_FILES)


def find_model(path: Path) -> tuple[Path, Path | None]:
    """Locate (sparse model dir, images dir or None) from a dataset root or a model dir."""
    path = Path(path)
    if is_model_dir(path):
        # <root>/sparse/0 or <root>/sparse: the images live in <root>/images.
        for cand in (path.parent.parent / "images", path.parent / "images", path / "images"):
            if cand.is_dir() and cand.resolve() != path.resolve():
                return path, cand
        return path, None
    for sub in ("sparse/0", "sparse", "colmap/sparse/0", "distorted/sparse/0"):
        if is_model_dir(path / sub):
            images = path / "images"
            return path / sub, (images if images.is_dir() else None)
    if (path / "sparse").is_dir():
        subs = sorted(p for p in (path / "sparse").iterdir() if is_model_dir(p))
        if subs:
            return subs[0], (path / "images" if (path / "images").is_dir() else None)
    raise UserError("no COLMAP sparse model found (expected cameras.bin/.txt, images.bin/.txt, points3D.bin/.txt)",
                    path, "point to the dataset root holding sparse/0 and images/, or to the model folder")


def read_reconstruction(model_dir: Path) -> pycolmap.Reconstruction:
    """Read a sparse model with pycolmap; malformed files become a UserError."""
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on malformed files
        raise UserError(f"cannot read COLMAP model ({e.__class__.__name__}: {str(e).strip()[:200]})", model_dir,
                        "check that cameras, images and points3D files are complete and of one format") from None


def _w2c(image: pycolmap.Image) -> torch.Tensor:
    pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :4] = torch.from_numpy(np.asarray(pose.matrix(), dtype=np.float64))
    return w2c


def _matching_camera(camera: pycolmap.Camera, path: Path) -> tuple[pycolmap.Camera, bool]:
    """Adapt the camera to the image file's size; returns (camera, apply_exif).

    COLMAP reads pixels without EXIF rotation, so a rotated-EXIF photo matches unrotated. A
    uniformly downscaled image folder (images_2, images_4 as in LLFF/Mip-NeRF 360) rescales the camera.
    """
    cw, ch = camera.width, camera.height
    for exif in (False, True):
        if image_size(path, exif) == (cw, ch):
            return camera, exif
    w, h = image_size(path, False)
    if abs(w / cw - h / ch) < 0.01 * max(w / cw, h / ch):
        cam = pycolmap.Camera(camera.todict())
        cam.rescale(w, h)
        return cam, False
    raise UserError(f"image is {w}x{h} but its COLMAP camera {camera.camera_id} is {cw}x{ch}", path,
                    "use the images the model was built from (or a uniformly downscaled copy)")


def load_colmap_scene(path: str | Path, resolution: tuple[int, int] | None = None, views: list[int] | None = None,
                      images_dir: str | Path | None = None, mode: str = "resize_crop") -> Scene:
    """Read a COLMAP dataset: registered images sorted by name, undistorted to pinhole when needed.

    path: dataset root (sparse/0 + images/) or the sparse model folder; images_dir overrides where
    the images are. resolution: (width, height) to resample to; required when sizes differ.
    views: indices into the name-sorted registered images. Extras: points3d (P,3), points3d_rgb (P,3),
    undistorted (bool), valid_mask (C,H,W) when any view was undistorted.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("path does not exist", path, "check the dataset path")
    model_dir, found_images = find_model(path)
    img_dir = Path(images_dir) if images_dir is not None else found_images
    if img_dir is None or not img_dir.is_dir():
        raise UserError("images folder not found next to the COLMAP model", img_dir or model_dir,
                        "pass images_dir (the folder the model's image names are relative to)")
    rec = read_reconstruction(model_dir)
    posed = [im for im in rec.images.values() if im.has_pose]
    posed.sort(key=lambda im: im.name)
    if views is not None:
        bad = [v for v in views if not -len(posed) <= v < len(posed)]
        if bad:
            raise UserError(f"view indices {bad} out of range: the model has {len(posed)} posed images", model_dir,
                            f"choose views in 0..{len(posed) - 1}")
        posed = [posed[v] for v in views]
    if len(posed) < 2:
        raise UserError(f"only {len(posed)} posed image(s); at least 2 views are needed", model_dir,
                        "use a model with more registered images or select more views")

    for im in posed:
        name = model_name(rec.cameras[im.camera_id])
        if name not in PINHOLE_MODELS and name not in DISTORTED_MODELS:
            raise UserError(f"unsupported camera model {name} (camera {im.camera_id})", model_dir,
                            "re-run COLMAP with a pinhole, radial, OpenCV or fisheye camera model")
        if not (img_dir / im.name).is_file():
            raise UserError("image named in the COLMAP model does not exist", img_dir / im.name,
                            "restore the file or pass the right images folder")

    images, Ks, w2cs, masks, any_undistorted = [], [], [], [], False
    for im in posed:
        cam, exif = _matching_camera(rec.cameras[im.camera_id], img_dir / im.name)
        img = load_image(img_dir / im.name, exif=exif)
        if is_identity_distortion(cam):
            K, valid = pinhole_K(cam), torch.ones(img.shape[:2], dtype=torch.bool)
        else:
            img, K, valid = undistort_image(img, cam)
            any_undistorted = True
        images.append(img)
        Ks.append(K)
        w2cs.append(_w2c(im))
        masks.append(valid)

    stacked, cams, extras = stack_posed_views(images, Ks, w2cs, masks, resolution, mode, img_dir,
                                              any_undistorted)
    extras["model_dir"] = str(model_dir)
    if rec.num_points3D() > 0:
        pts = rec.points3D.values()
        extras["points3d"] = torch.tensor(np.array([p.xyz for p in pts]), dtype=torch.float64)
        extras["points3d_rgb"] = torch.tensor(np.array([p.color for p in pts]), dtype=torch.float32) / 255.0
    return Scene(stacked, cams, [str(img_dir / im.name) for im in posed], "colmap", path, extras)
