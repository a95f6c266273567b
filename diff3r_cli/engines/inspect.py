"""`diff3r inspect`: what diff3r sees in a path, as a JSON-ready dict (the CLI prints it as JSON
or as tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def inspect_ply(path: Path) -> dict:
    """Summary of a splat .ply: counts, SH degree, bounds, uncertainty statistics."""
    from diff3r_cli.gaussians import GROUPS
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import sidecar_path

    g, lam = read_ply(path)
    info: dict[str, Any] = {"format": "ply", "path": str(path), "num_gaussians": g.num,
                            "sh_degree": g.sh_degree, "has_uncertainty": lam is not None}
    if g.num:
        info["bounds"] = {"min": g.means.min(0).values.tolist(), "max": g.means.max(0).values.tolist()}
        info["median_scale"] = float(g.scales.max(1).values.median())
        info["mean_opacity"] = float(g.opacities.mean())
        if lam is not None:
            info["uncertainty_mean"] = {k: float(v) for k, v in zip(GROUPS, lam.mean(0))}
    sc = sidecar_path(path)
    info["sidecar"] = str(sc) if sc.exists() else None
    return info


def _list_images(path: Path, fmt: str) -> dict:
    """A bare image folder without SfM: file names and sizes only (decoding the headers)."""
    from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, image_size

    def images_in(d: Path) -> list[Path]:
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    files = images_in(path) or images_in(path / "images")  # same rule as detect_format
    views = []
    for p in files:
        w, h = image_size(p)
        views.append({"image": str(p), "width": w, "height": h, "K": None, "w2c": None})
    return {"format": fmt, "posed": False, "note": "unposed (SfM on reconstruct)", "views": views}


def inspect_input(path: Path, sfm: bool = False) -> dict:
    """Summary of an input dataset; a bare image folder is listed without running SfM unless sfm."""
    from diff3r_cli.scene_io import detect_format, load_scene

    fmt = detect_format(path)
    if fmt == "ply":
        return inspect_ply(path)
    if fmt == "folder" and not sfm:
        return _list_images(path, fmt)
    scene = load_scene(path)
    K, w2c, centers = scene.cameras.K, scene.cameras.w2c, scene.cameras.centers
    views = [{"image": str(scene.paths[i]), "width": scene.width, "height": scene.height,
              "K": K[i].tolist(), "w2c": w2c[i].tolist(), "center": centers[i].tolist()}
             for i in range(len(scene))]
    return {"format": scene.format, "posed": True, "views": views}


def inspect_path(path: Path, sfm: bool = False) -> dict:
    """A .ply file or an input dataset, whichever ``path`` is."""
    if path.is_file() and path.suffix.lower() == ".ply":
        return inspect_ply(path)
    from diff3r_cli.model.io import WEIGHT_SUFFIXES, inspect_weights

    if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
        return inspect_weights(path)
    return inspect_input(path, sfm=sfm)


__all__ = ["inspect_ply", "inspect_input", "inspect_path"]
