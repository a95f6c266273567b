"""Scene readers: COLMAP models, transforms.json, RE10K chunks and bare image folders (posed by SfM).

``load_scene(path)`` detects the format and returns a :class:`Scene` (images (C,H,W,3) in [0,1],
OpenCV-convention cameras sharing one image size). Resolutions are (width, height).
"""

from __future__ import annotations

from pathlib import Path

from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, load_image, resize_scene
from diff3r_cli.scene_io.scene import Scene

FORMATS = ("colmap", "transforms", "re10k", "folder", "ply")

__all__ = ["Scene", "detect_format", "load_scene", "load_image", "resize_scene", "FORMATS"]


def _has_images(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file())


def _is_re10k(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".torch"
    if (path / "index.json").is_file() and any(path.glob("*.torch")):
        return True
    if any((path / s / "index.json").is_file() for s in ("train", "test")):
        return True
    return any(path.glob("*.torch"))


def detect_format(path: str | Path) -> str:
    """Which reader a path needs: "colmap" | "transforms" | "re10k" | "folder" | "ply".

    Raises UserError when the path does not exist or holds nothing recognisable.
    """
    from diff3r_cli.scene_io.colmap import is_model_dir

    path = Path(path)
    if not path.exists():
        raise UserError("path does not exist", path, "check the spelling of the scene path")
    if path.is_file():
        if path.suffix.lower() == ".ply":
            return "ply"
        if path.suffix.lower() == ".json" and path.name.startswith("transforms"):
            return "transforms"
        if path.suffix == ".torch":
            return "re10k"
        raise UserError("unrecognised scene file", path,
                        "give a folder of images, a COLMAP dataset, a transforms.json, an RE10K folder or a .ply")
    if is_model_dir(path) or any(is_model_dir(path / s) for s in ("sparse/0", "sparse")):
        return "colmap"
    if (path / "sparse").is_dir() and any(is_model_dir(p) for p in (path / "sparse").iterdir()):
        return "colmap"
    if any((path / n).is_file() for n in ("transforms.json", "transforms_train.json")):
        return "transforms"
    if _is_re10k(path):
        return "re10k"
    if _has_images(path) or _has_images(path / "images"):
        return "folder"
    raise UserError("no images, poses or splat found in this folder", path,
                    "give a folder of images, a COLMAP dataset, a transforms.json, an RE10K folder or a .ply")


def load_scene(path: str | Path, resolution: tuple[int, int] | None = None, views: list[int] | None = None,
               format: str | None = None, **kw) -> Scene:
    """Read posed images from ``path`` with the reader its format needs.

    resolution: (width, height) to resample every view to (exact intrinsics; "resize_crop" by
    default, pass mode="resize" to stretch); None keeps the native size (a folder of mixed sizes is
    resampled to the first image's size; other formats then raise a UserError).
    views: indices of the views to keep (reader order: name-sorted for COLMAP/folders, file order for
    transforms.json, frame order for RE10K). Extra keywords go to the reader (e.g. images_dir for COLMAP,
    key/split for RE10K, progress/max_image_size/strategy for SfM; ``progress`` is ignored by the others).
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt != "folder":
        kw.pop("progress", None)  # only SfM has a progress display; callers may pass it uniformly
    if resolution is not None:
        resolution = (int(resolution[0]), int(resolution[1]))
        if resolution[0] <= 0 or resolution[1] <= 0:
            raise UserError(f"invalid resolution {resolution[0]}x{resolution[1]}", path, "give a positive WIDTHxHEIGHT")
    if views is not None and len(views) < 2:
        raise UserError(f"{len(views)} view(s) selected; at least 2 views are needed", path, "select 2 or more views")
    if fmt == "colmap":
        from diff3r_cli.scene_io.colmap import load_colmap_scene
        scene = load_colmap_scene(path, resolution=resolution, views=views, **kw)
    elif fmt == "transforms":
        from diff3r_cli.scene_io.transforms import load_transforms_scene
        scene = load_transforms_scene(path, resolution=resolution, views=views, **kw)
    elif fmt == "folder":
        from diff3r_cli.scene_io.folder import load_folder_scene
        scene = load_folder_scene(path, resolution=resolution, views=views, **kw)
    elif fmt == "re10k":
        from diff3r_cli.scene_io.re10k import load_re10k_scene
        mode = kw.pop("mode", "resize_crop")
        scene = load_re10k_scene(path, key=kw.pop("key", None), frames=views, **kw)
        if resolution is not None:
            scene = resize_scene(scene, resolution[0], resolution[1], mode)
    elif fmt == "ply":
        raise UserError("a .ply holds Gaussians, not posed images", path,
                        "use `diff3r refine` for .ply files, or give the images the splat was made from")
    else:
        raise UserError(f"unknown scene format {fmt!r}", path, f"use one of {', '.join(FORMATS)}")
    if len(scene) < 2:
        raise UserError(f"only {len(scene)} view(s) found; at least 2 are needed", path, "add more views")
    return scene
