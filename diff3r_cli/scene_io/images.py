"""Image decoding and scene resampling with exactly matching intrinsics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.scene import Scene

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _pil_to_rgb(img: Image.Image, background: float) -> np.ndarray:
    """PIL image of any mode -> float32 (H,W,3) in [0,1]; alpha is composited over ``background``."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale PNGs: keep the precision instead of clipping through mode "L".
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        a = rgba[..., 3:4]
        return rgba[..., :3] * a + background * (1.0 - a)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path, exif: bool = True, background: float = 1.0) -> torch.Tensor:
    """Decode an image file to a float32 tensor (H,W,3) in [0,1].

    EXIF orientation is applied when ``exif`` (what a photo viewer shows); greyscale becomes RGB;
    transparent pixels are composited over ``background`` (white, the NeRF-synthetic practice).
    Raises UserError naming the file when it is missing, unreadable or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("image file not found", path, "check the path or the poses file that names it")
    try:
        with Image.open(path) as img:
            img.load()
            if exif:
                img = ImageOps.exif_transpose(img)
            arr = _pil_to_rgb(img, background)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image ({e.__class__.__name__}: {e})", path,
                        "replace or remove the corrupt file") from None
    return torch.from_numpy(np.ascontiguousarray(arr))


def image_size(path: str | Path, exif: bool = True) -> tuple[int, int]:
    """(width, height) of an image file without decoding the pixels (EXIF rotation applied)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif:
                orientation = img.getexif().get(0x0112, 1)
                if orientation in (5, 6, 7, 8):  # 90-degree rotations swap the axes
                    w, h = h, w
    except FileNotFoundError:
        raise UserError("image file not found", path, "check the path or the poses file that names it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image ({e})", path, "replace or remove the corrupt file") from None
    return w, h


def resample(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (H,W,3) to (height,width,3); antialiased bilinear, pixel-edge aligned (align_corners=False)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    x = image.permute(2, 0, 1)[None].float()
    down = width < image.shape[1] or height < image.shape[0]
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=down)
    return y[0].permute(1, 2, 0).clamp(0, 1).contiguous()


def native_size(width: int, height: int, short: int, multiple: int = 16) -> tuple[int, int]:
    """(width, height) keeping the aspect ratio with the short side scaled to ``short``, then each side
    cropped down to a multiple of ``multiple`` (a side already below ``multiple`` is kept as is).

    Use with ``resize_crop`` to the returned size: the crop is centred and the intrinsics stay exact.
    """
    if short <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"invalid sizes: image {width}x{height}, short side {short}")
    s = short / min(width, height)
    # +1e-9: 376 * (128 / 376) must not floor to 127
    w, h = int(width * s + 1e-9), int(height * s + 1e-9)
    snap = lambda x: x // multiple * multiple if x >= multiple else x  # noqa: E731
    return snap(w), snap(h)


def resize_view(image: torch.Tensor, K: torch.Tensor, width: int, height: int,
                mode: str = "resize_crop") -> tuple[torch.Tensor, torch.Tensor]:
    """Resample one view (H,W,3) with intrinsics K (3,3) to (width,height); returns (image, K').

    mode "resize_crop": scale to cover the target then centre-crop (keeps the aspect ratio);
    mode "resize": stretch each axis independently. Both are exact for the pixel-edge convention.
    """
    h0, w0 = image.shape[:2]
    cam = Cameras(K[None].clone(), torch.eye(4, dtype=K.dtype)[None], w0, h0)
    if mode == "resize":
        return resample(image, width, height), cam.resized(width, height).K[0]
    if mode != "resize_crop":
        raise UserError(f"unknown resize mode {mode!r}", None, "use 'resize_crop' or 'resize'")
    new, (left, top, cw, ch), (sw, sh) = cam.resize_crop(width, height)
    scaled = resample(image, sw, sh)
    return scaled[top:top + ch, left:left + cw].contiguous(), new.K[0]


def crop_notice(sizes: list[tuple[int, int]], width: int, height: int, mode: str = "resize_crop") -> str | None:
    """One line describing what "resize_crop" to (width,height) cuts from views of other aspect ratios.

    Each view is scaled to cover the target and centre-cropped, its intrinsics shifted/scaled
    exactly (Cameras.resize_crop), so nothing is distorted, only cut. None when nothing is cut.
    """
    if mode != "resize_crop":
        return None
    cut = []
    for w, h in sizes:
        s = max(width / w, height / h)
        cut_w, cut_h = 1 - width / (w * s), 1 - height / (h * s)
        if max(cut_w, cut_h) > 0.01:
            cut.append((cut_w, cut_h))
    if not cut:
        return None
    worst_w = max(c[0] for c in cut)
    worst_h = max(c[1] for c in cut)
    parts = ([f"up to {worst_w:.0%} of the width"] if worst_w > 0.01 else []) + \
            ([f"up to {worst_h:.0%} of the height"] if worst_h > 0.01 else [])
    return (f"{len(cut)} of {len(sizes)} views have another aspect ratio than the working size {width}x{height}: "
            f"each is scaled to cover it and centre-cropped ({' and '.join(parts)} cut; intrinsics adjusted "
            f"exactly); pass --resolution WxH to choose the working size")


def quarter_turn(image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn one view (H,W,3) a quarter turn counter-clockwise, rolling its camera with it (exact).

    New pixel coordinates (pixel-edge convention) are u' = v, v' = W - u; the camera axes become
    x' = y, y' = -x, z' = z, so K' = [[fy, 0, cy], [0, fx, W - cx], [0, 0, 1]] and w2c' = R·w2c.
    Returns (image (W,H,3), K', w2c').
    """
    w0 = image.shape[1]
    turned = torch.rot90(image, 1, dims=(0, 1)).contiguous()
    K2 = torch.zeros_like(K)
    K2[0, 0], K2[0, 2] = K[1, 1], K[1, 2]  # zero skew, as every reader here produces
    K2[1, 1], K2[1, 2], K2[2, 2] = K[0, 0], w0 - K[0, 2], 1.0
    roll = torch.eye(4, dtype=w2c.dtype, device=w2c.device)
    roll[:2, :2] = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=w2c.dtype)
    return turned, K2, roll @ w2c


def _orientation(w: int, h: int) -> str:
    return "landscape" if w > h else "portrait" if h > w else "square"


@dataclass
class FramePlan:
    """The working frame of a set of photos: its size, which views turn a quarter turn, one line."""

    width: int
    height: int
    turned: list[bool]
    line: str


def plan_frame(sizes: list[tuple[int, int]], target: tuple[int, int] | None = None) -> FramePlan:
    """Choose the working size of photos of mixed sizes and orientations.

    The frame follows the majority orientation (landscape or portrait; a tie goes to landscape)
    and photos of the other orientation are turned a quarter turn (camera rolled with them, see
    :func:`quarter_turn`) instead of losing half their frame to a crop. The size: one held by
    more than half the photos (after turning), else that of the photo with the median aspect
    ratio. ``target`` (W,H) fixes the size; photos of mixed orientations are then turned towards its
    orientation (photos all of one orientation never are).
    """
    n = len(sizes)
    counts = {o: sum(_orientation(w, h) == o for w, h in sizes) for o in ("landscape", "portrait")}
    if target is not None:
        major = _orientation(*target)
    else:
        major = "portrait" if counts["portrait"] > counts["landscape"] else "landscape"
    other = "portrait" if major == "landscape" else "landscape"
    mixed = counts["landscape"] > 0 and counts["portrait"] > 0  # one orientation throughout: nothing turns
    turned = [mixed and major != "square" and _orientation(w, h) == other for w, h in sizes]
    oriented = [(h, w) if t else (w, h) for (w, h), t in zip(sizes, turned)]
    if target is not None:
        width, height = target
        how = f"working size {width}x{height} as asked"
    else:
        common = max(set(oriented), key=oriented.count)
        if oriented.count(common) * 2 > n:
            width, height = common
            how = f"working size {width}x{height}: the size of {oriented.count(common)} of the {n} photos"
        else:
            by_aspect = sorted(oriented, key=lambda s: s[0] / s[1])
            width, height = by_aspect[(n - 1) // 2]
            how = (f"working size {width}x{height}: the median aspect ratio of the {n} photos "
                   f"({counts[major]} {major}, {counts[other]} {other})")
    parts = [how]
    if any(turned):
        parts.append(f"{sum(turned)} {other} photo(s) turned a quarter turn to {major} (camera rolled with "
                     "it, nothing cropped for that)")
    cut = crop_fraction(oriented, width, height)
    if cut > 0.01:
        parts.append(f"the others centre-cropped by at most {cut:.0%} of a side (intrinsics exact)")
    return FramePlan(int(width), int(height), turned, "; ".join(parts))


def crop_fraction(sizes: list[tuple[int, int]], width: int, height: int) -> float:
    """The largest fraction of a side that "resize_crop" to (width,height) cuts from any of ``sizes``."""
    worst = 0.0
    for w, h in sizes:
        s = max(width / w, height / h)
        worst = max(worst, 1 - width / (w * s), 1 - height / (h * s))
    return worst


def stack_views(images: list[torch.Tensor], Ks: list[torch.Tensor], w2cs: list[torch.Tensor],
                width: int, height: int, mode: str = "resize_crop", announce: bool = True
                ) -> tuple[torch.Tensor, Cameras]:
    """Resample views of possibly different sizes to one size and batch them into (images, Cameras).

    When the views have mixed sizes, those whose aspect ratio differs are centre-cropped (see
    crop_notice), announced as one warning line on stderr unless ``announce`` is False (the caller
    says what it did in its own line).
    """
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    # only photos of mixed sizes need telling: a uniform trim to multiples of 16 is the documented default
    note = crop_notice(sizes, width, height, mode) if announce and len(set(sizes)) > 1 else None
    if note:
        import logging

        logging.getLogger("diff3r").warning("notice: %s", note)
    out_img, out_K = [], []
    for img, K in zip(images, Ks):
        im, k = resize_view(img, K.to(torch.float64), width, height, mode)
        out_img.append(im)
        out_K.append(k)
    w2c = torch.stack([w.to(torch.float64) for w in w2cs])
    return torch.stack(out_img), Cameras(torch.stack(out_K), w2c, width, height)


def stack_posed_views(images: list[torch.Tensor], Ks: list[torch.Tensor], w2cs: list[torch.Tensor],
                      masks: list[torch.Tensor], resolution: tuple[int, int] | None, mode: str,
                      source: str | Path, undistorted: bool) -> tuple[torch.Tensor, Cameras, dict]:
    """Batch a reader's views at one size; returns (images, cameras, extras).

    Without a resolution all views must share a size (UserError naming `source` otherwise).
    `masks` are per-view undistortion validity masks; when any view was undistorted they are
    resampled with the images into extras["valid_mask"].
    """
    sizes = {(img.shape[1], img.shape[0]) for img in images}
    if resolution is None:
        if len(sizes) > 1:
            raise UserError(f"images have different sizes {sorted(sizes)}", source,
                            "give a resolution (e.g. --resolution 512x384) to resample all views to one size")
        width, height = sizes.pop()
    else:
        width, height = int(resolution[0]), int(resolution[1])
    stacked, cams = stack_views(images, Ks, w2cs, width, height, mode)
    extras: dict = {"undistorted": undistorted}
    if undistorted:
        m, _ = stack_views([mk.float()[..., None].expand(-1, -1, 3) for mk in masks], Ks, w2cs, width, height, mode)
        extras["valid_mask"] = m[..., 0] > 0.999
    return stacked, cams, extras


def resize_scene(scene: Scene, width: int, height: int, mode: str = "resize_crop") -> Scene:
    """Scene with every image resampled to (width,height) and the intrinsics adjusted exactly."""
    if width <= 0 or height <= 0:
        raise UserError(f"invalid resolution {width}x{height}", None, "give a positive WIDTHxHEIGHT")
    if (width, height) == (scene.width, scene.height):
        return scene
    images, cams = stack_views(list(scene.images), list(scene.cameras.K), list(scene.cameras.w2c),
                               width, height, mode)
    extras = dict(scene.extras)
    if "valid_mask" in extras:  # the undistortion validity mask follows the pixels
        m = extras["valid_mask"].float()[..., None].expand(-1, -1, -1, 3)
        m2, _ = stack_views(list(m), list(scene.cameras.K), list(scene.cameras.w2c), width, height, mode)
        extras["valid_mask"] = m2[..., 0] > 0.999
    return Scene(images, cams.to(dtype=scene.cameras.dtype), list(scene.paths), scene.format, scene.root, extras)
