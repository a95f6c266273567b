"""Sparse 3D points from images whose cameras are already known (pycolmap, poses held fixed).

Inputs with poses but no sparse points (transforms.json, RE10K chunks) still need a depth range
for the predictor's cost volume. A look-at guess from the optical axes is often off by a factor of
two or more; matching SIFT features between the views and triangulating them with the given
cameras measures the scene instead. Only the context views are used, so it takes a second or two.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras


def triangulate_known_cameras(images: torch.Tensor, cameras: Cameras,
                              workdir: str | Path | None = None) -> dict:
    """Match features between views (C,H,W,3) and triangulate them with the fixed cameras.

    Returns {"points3d": (P,3) float64 world points, "reprojection_error": mean px (nan when none),
    "num_points": P, "seconds": wall time}. P may be 0 (no matches): callers fall back.
    """
    import pycolmap

    from diff3r_cli.scene_io.colmap_run import match_all_pairs, quiet_colmap

    t0 = time.perf_counter()
    n = len(cameras)
    if images.shape[0] != n or n < 2:
        raise ValueError(f"need >= 2 views with one camera each, got {images.shape[0]} images, {n} cameras")
    K = cameras.K.to(torch.float64).cpu().numpy()
    w2c = cameras.w2c.to(torch.float64).cpu().numpy()
    names = [f"{i:04d}.png" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="diff3r_tri_", dir=workdir) as tmp, quiet_colmap():
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for im, name in zip(images, names):
            arr = (im.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(arr).save(tmp / "images" / name, compress_level=1)
        db = tmp / "database.db"
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        extraction = pycolmap.FeatureExtractionOptions()
        # the images are at working resolution already; never let COLMAP downscale them (K would not match)
        extraction.max_image_size = max(cameras.width, cameras.height)
        pycolmap.extract_features(db, tmp / "images", image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        match_all_pairs(db)
        rec = pycolmap.Reconstruction()
        with pycolmap.Database.open(str(db)) as d:
            for im in d.read_all_images():
                k = names.index(im.name)
                cam = d.read_camera(im.camera_id)
                # our intrinsics replace the extractor's size-based guess, in the database too:
                # the two-view geometry is not re-verified, but the triangulator reads the cameras from both
                cam.params = np.array([K[k, 0, 0], K[k, 1, 1], K[k, 0, 2], K[k, 1, 2]])
                d.update_camera(cam)
                rec.add_camera_with_trivial_rig(cam)
                rec.add_image_with_trivial_frame(pycolmap.Image(name=im.name, camera_id=im.camera_id,
                                                                image_id=im.image_id),
                                                 pycolmap.Rigid3d(w2c[k, :3, :4]))
        opts = pycolmap.IncrementalPipelineOptions()
        opts.triangulation.ignore_two_view_tracks = False  # 2 context views give only 2-view tracks
        out = tmp / "sparse"
        out.mkdir()
        try:
            res = pycolmap.triangulate_points(rec, db, tmp / "images", out, options=opts, refine_intrinsics=False)
        except Exception:  # no verified pairs and the like: report "no points", the caller falls back
            res = None
        pts = np.array([p.xyz for p in res.points3D.values()], dtype=np.float64).reshape(-1, 3) if res else \
            np.zeros((0, 3))
        err = float(res.compute_mean_reprojection_error()) if res is not None and len(pts) else float("nan")
    return {"points3d": torch.from_numpy(pts), "reprojection_error": err, "num_points": len(pts),
            "seconds": time.perf_counter() - t0}


__all__ = ["triangulate_known_cameras"]
