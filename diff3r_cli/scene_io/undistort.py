"""Undistortion of images from any COLMAP camera model to a pinhole camera.

The pinhole target keeps the image size, focal lengths and principal point of the distorted
camera; each target pixel centre is mapped through the exact distortion model (pycolmap's
``img_from_cam``) and bilinearly sampled from the distorted image. Pixels whose source lies
outside the distorted image are reported in a validity mask (and filled from the border).
"""

from __future__ import annotations

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F

from diff3r_cli.interrupts import reclaim

reclaim()  # importing pycolmap installed glog's SIGTERM handler (a C++ stack trace): put ours back

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# Models whose rays all lie in front of the camera and can be mapped to a pinhole image.
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE", "FOV",
                    "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE",
                    "RAD_TAN_THIN_PRISM_FISHEYE", "SIMPLE_DIVISION", "DIVISION", "SIMPLE_FISHEYE",
                    "FISHEYE")


def model_name(camera: pycolmap.Camera) -> str:
    """The COLMAP model name of a pycolmap camera (e.g. 'OPENCV')."""
    return camera.model.name if hasattr(camera.model, "name") else str(camera.model).split(".")[-1]


def pinhole_K(camera: pycolmap.Camera) -> torch.Tensor:
    """(3,3) float64 pinhole intrinsics with the camera's focal lengths and principal point."""
    K = torch.eye(3, dtype=torch.float64)
    K[0, 0] = camera.focal_length_x
    K[1, 1] = camera.focal_length_y
    K[0, 2] = camera.principal_point_x
    K[1, 2] = camera.principal_point_y
    return K


def is_identity_distortion(camera: pycolmap.Camera) -> bool:
    """True for pinhole models and distorted models whose distortion parameters are all zero."""
    name = model_name(camera)
    if name in PINHOLE_MODELS:
        return True
    if name in ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"):
        extra = list(camera.extra_params_idxs())
        return bool(np.all(np.asarray(camera.params)[extra] == 0))
    return False


def source_pixels(camera: pycolmap.Camera, K: torch.Tensor, width: int, height: int) -> np.ndarray:
    """(H,W,2) positions in the distorted image of the centres of the pinhole image's pixels."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    Kn = K.numpy()
    x = (u - Kn[0, 2]) / Kn[0, 0]
    y = (v - Kn[1, 2]) / Kn[1, 1]
    rays = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)
    src = camera.img_from_cam(rays, check_cheirality=False)
    return np.asarray(src, dtype=np.float64).reshape(height, width, 2)


def undistort_image(image: torch.Tensor, camera: pycolmap.Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remap a distorted (H,W,3) image to the pinhole camera of :func:`pinhole_K`.

    Returns (image, K (3,3) float64, valid mask (H,W) bool). The image must have the camera's size.
    """
    h, w = image.shape[:2]
    K = pinhole_K(camera)
    src = source_pixels(camera, K, w, h)
    valid = np.isfinite(src).all(-1)
    src = np.where(np.isfinite(src), src, -1e6)
    valid &= (src[..., 0] >= 0) & (src[..., 0] <= w) & (src[..., 1] >= 0) & (src[..., 1] <= h)
    # grid_sample with align_corners=False maps -1/+1 to the outer pixel edges: exactly the
    # pixel-edge convention (pixel centre of column j at j + 0.5).
    grid = torch.from_numpy(np.stack([2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1], -1)).float()
    x = image.permute(2, 0, 1)[None].float()
    out = F.grid_sample(x, grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 1).contiguous(), K, torch.from_numpy(valid)


def opencv_camera(K: torch.Tensor | np.ndarray, width: int, height: int, k1: float = 0.0, k2: float = 0.0,
                  p1: float = 0.0, p2: float = 0.0, k3: float = 0.0, k4: float = 0.0,
                  fisheye: bool = False) -> pycolmap.Camera:
    """A pycolmap camera for OpenCV-style parameters (transforms.json); FULL_OPENCV if k3/k4 are set."""
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fisheye:
        model, params = "OPENCV_FISHEYE", [fx, fy, cx, cy, k1, k2, k3, k4]
    elif k3 != 0.0 or k4 != 0.0:
        model, params = "FULL_OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, 0.0, 0.0]
    else:
        model, params = "OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2]
    return pycolmap.Camera(model=model, width=int(width), height=int(height), params=params)
