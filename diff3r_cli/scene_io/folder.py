"""A bare folder of images, posed by pycolmap structure-from-motion on the CPU.

SIFT extraction, exhaustive matching and incremental mapping run in a temporary directory on
PNG copies of the images (EXIF rotation applied, longest side capped for speed). When
incremental mapping cannot register every image of a 2-3 image set (small baselines defeat
its initialization), the poses come from two-view geometry instead: the relative pose of the
best-matched pair (baseline set to 1), further images by PnP against the pair's triangulated
matches. That fallback is announced with a warning and recorded in ``scene.extras``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap
import torch
from PIL import Image

from diff3r_cli.errors import UserError
from diff3r_cli.interrupts import temp_path
from diff3r_cli.scene_io.colmap_run import SfmProgress, clear_matches, match_all_pairs, quiet_colmap
from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, load_image, plan_frame, quarter_turn, resample, stack_views
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.two_view import rigid_4x4, two_view_poses
from diff3r_cli.scene_io.undistort import is_identity_distortion, pinhole_K, undistort_image

log = logging.getLogger(__name__)

SFM_HELP = ("what usually helps: photos with more overlap (each sharing most of its view with a neighbour), "
            "fewer photos of the part that matters, or --views to pick overlapping ones")
# Matchings tried while photos stay unposed (pycolmap's matches vary between runs; see _map_with_rematch).
MATCH_ATTEMPTS = 2


def list_images(path: Path) -> list[Path]:
    """Image files of a folder (or of its images/ subfolder), sorted by name."""
    folder = path / "images" if (path / "images").is_dir() and not _direct_images(path) else path
    return _direct_images(folder)


def _direct_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _mapping_options(n: int, loose: bool, seed: int) -> pycolmap.IncrementalPipelineOptions:
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = seed
    opts.mapper.random_seed = seed
    opts.triangulation.random_seed = seed
    opts.min_model_size = 2
    opts.multiple_models = False
    if n <= 3:
        # Two or three views cannot constrain lens distortion; keep the BA to focal + pose.
        opts.ba_refine_extra_params = False
    if loose:
        # Small baselines (adjacent video/LLFF frames) fail the default 16-degree init angle.
        opts.triangulation.ignore_two_view_tracks = False
        opts.mapper.init_min_tri_angle = 2.0
        opts.mapper.init_min_num_inliers = 30
        opts.mapper.abs_pose_min_num_inliers = 15
        opts.mapper.filter_min_tri_angle = 0.5
        opts.triangulation.min_angle = 0.5
    return opts


def exif_focal_px(path: Path, width: int, height: int) -> float | None:
    """Focal length in pixels from EXIF FocalLengthIn35mmFilm (36 mm = the long side), or None.

    COLMAP reads this prior itself from the original files; our SfM runs on re-encoded copies, so
    we pass it on explicitly.
    """
    try:
        with Image.open(path) as img:
            f35 = img.getexif().get_ifd(0x8769).get(0xA405)
    except Exception:  # unreadable EXIF is no reason to fail: fall back to COLMAP's size prior
        return None
    try:
        f35 = float(f35)
    except (TypeError, ValueError):
        return None
    return f35 / 36.0 * max(width, height) if f35 > 0 else None


def _write_sfm_copies(images: list[torch.Tensor], names: list[str], folder: Path, max_image_size: int
                      ) -> list[tuple[int, int]]:
    """PNG copies of the images, longest side capped at ``max_image_size``; returns their sizes."""
    folder.mkdir()
    sizes = []
    for im, name in zip(images, names):
        h, w = im.shape[:2]
        s = min(1.0, max_image_size / max(w, h))
        sw, sh = max(1, round(w * s)), max(1, round(h * s))
        sizes.append((sw, sh))
        small = resample(im, sw, sh) if (sw, sh) != (w, h) else im
        Image.fromarray((small.numpy() * 255).round().astype(np.uint8)).save(folder / name, compress_level=1)
    return sizes


def _reader_options(n: int, f_prior: float | None, size: tuple[int, int], sfm_size: tuple[int, int],
                    camera_mode: str) -> pycolmap.ImageReaderOptions:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE" if n <= 3 else "SIMPLE_RADIAL"
    if f_prior is not None and camera_mode == "single":
        # camera_params are one set for all images, in pixels of the SfM copies (all one size here)
        sw0, sh0 = sfm_size
        f = f_prior * sw0 / size[0]
        extra = ",0" if reader.camera_model == "SIMPLE_RADIAL" else ""
        reader.camera_params = f"{f!r},{sw0 / 2!r},{sh0 / 2!r}{extra}"
    return reader


def _features_and_matches(tmp: Path, names: list[str], reader: pycolmap.ImageReaderOptions, camera_mode: str,
                          max_image_size: int, prog: SfmProgress, seed: int = 0) -> Path:
    """SIFT features and exhaustive matches (repeatable: ``colmap_run.match_all_pairs``) of the copies in
    tmp/images into tmp/database.db."""
    n = len(names)
    db = tmp / "database.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    mode = pycolmap.CameraMode.SINGLE if camera_mode == "single" else pycolmap.CameraMode.PER_IMAGE
    task = prog.stage("SfM: SIFT features", n)
    pycolmap.extract_features(db, tmp / "images", image_names=names, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    prog.done(task, n)
    task = prog.stage("SfM: exhaustive matching", n * (n - 1) // 2)
    match_all_pairs(db, seed)
    prog.done(task)
    return db


def _incremental_mapping(tmp: Path, db: Path, n: int, seed: int, focal: float | None, prog: SfmProgress,
                         attempt: int = 0) -> tuple[pycolmap.Reconstruction | None, bool]:
    """The reconstruction registering the most images (default, then looser initialization) and
    whether the looser one was used."""
    best, loose_used = None, False
    for loose in (False, True):
        task = prog.stage("SfM: incremental mapping" + (" (looser init)" if loose else ""), n)
        out = tmp / (f"sparse{attempt}" + ("_loose" if loose else ""))
        out.mkdir()
        opts = _mapping_options(n, loose, seed)
        if focal is not None:  # the user knows it: do not let bundle adjustment drift it
            opts.ba_refine_focal_length = False
            opts.mapper.abs_pose_refine_focal_length = False
        recs = pycolmap.incremental_mapping(db, tmp / "images", out, opts,
                                            next_image_callback=lambda: prog.advance(task))
        rec = max(recs.values(), key=lambda r: r.num_reg_images(), default=None)
        prog.done(task, rec.num_reg_images() if rec else 0)
        if rec is not None and (best is None or rec.num_reg_images() > best.num_reg_images()):
            best, loose_used = rec, loose
        if best is not None and best.num_reg_images() == n:
            break
    return best, loose_used


def _map_with_rematch(tmp: Path, db: Path, n: int, seed: int, focal: float | None, prog: SfmProgress
                      ) -> tuple[pycolmap.Reconstruction | None, bool, int]:
    """``_incremental_mapping``, matched and mapped again (up to ``MATCH_ATTEMPTS`` in all) while photos
    are left unposed; the reconstruction posing the most photos, whether it used the looser
    initialization, and how many matchings ran.

    pycolmap's matches differ from run to run (``colmap_run.match_all_pairs``); on sacre_coeur that
    decided between posing 3 and 10 of its 10 photos, so one unlucky matching should not decide it.
    """
    best, loose_used, attempt = None, False, 0
    for attempt in range(MATCH_ATTEMPTS):
        if attempt:
            task = prog.stage("SfM: matching again (photos left unposed)", n * (n - 1) // 2)
            clear_matches(db)
            match_all_pairs(db, seed + attempt)
            prog.done(task)
        rec, loose = _incremental_mapping(tmp, db, n, seed, focal, prog, attempt)
        if rec is not None and (best is None or rec.num_reg_images() > best.num_reg_images()):
            best, loose_used = rec, loose
        if best is not None and best.num_reg_images() == n:
            break
    return best, loose_used, attempt + 1


def _reconstruction_poses(rec: pycolmap.Reconstruction, names: list[str]) -> dict:
    """The run_sfm result fields of an incremental reconstruction."""
    w2c, cams = {}, {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        w2c[im.name] = rigid_4x4(pose.matrix())
        cams[im.name] = rec.cameras[im.camera_id]
    return dict(w2c=w2c, cameras=cams, reprojection_error=float(rec.compute_mean_reprojection_error()),
                num_registered=rec.num_reg_images(), dropped=[nm for nm in names if nm not in w2c],
                points3d=torch.tensor(np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)))


def run_sfm(image_paths: list[Path], max_image_size: int = 1024, progress: bool = True, seed: int = 0,
            camera_mode: str = "auto", workdir: str | Path | None = None, strategy: str = "auto",
            focal: float | None = None) -> dict:
    """Pose images with pycolmap SfM; returns a dict with per-name w2c (4,4) and pycolmap cameras
    (at the loaded images' full size), the loaded images, reprojection error, counts and flags.

    strategy "auto": incremental mapping (default, then looser initialization), two-view fallback
    when needed; "two_view": skip the mapper and use the two-view poses directly.
    focal: known focal length in pixels of the (EXIF-rotated) first image, kept fixed; without it an
    EXIF 35 mm-equivalent focal of the first image is the starting guess when all images share a camera.
    """
    t0 = time.perf_counter()
    images = [load_image(p) for p in image_paths]
    n = len(images)
    names = [f"{i:04d}_{p.stem}.png" for i, p in enumerate(image_paths)]
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    if camera_mode == "auto":
        camera_mode = "single" if len(set(sizes)) == 1 else "per_image"
    if focal is not None and (camera_mode != "single" or not focal > 0):
        raise UserError(f"a fixed focal length ({focal}) needs positive pixels and images of one size from one camera",
                        image_paths[0].parent, "drop the focal option or use photos from one camera at one size")
    with tempfile.TemporaryDirectory(prefix="diff3r_sfm_", dir=workdir) as tmp, temp_path(tmp), quiet_colmap(), \
            SfmProgress(progress, n) as prog:
        tmp = Path(tmp)  # registered: removed even when a signal ends the process inside COLMAP
        sfm_sizes = _write_sfm_copies(images, names, tmp / "images", max_image_size)
        f_prior = focal if focal is not None else exif_focal_px(image_paths[0], *sizes[0])
        reader = _reader_options(n, f_prior, sizes[0], sfm_sizes[0], camera_mode)
        db = _features_and_matches(tmp, names, reader, camera_mode, max_image_size, prog, seed)
        best, loose_used, attempts = _map_with_rematch(tmp, db, n, seed, focal, prog) if strategy == "auto" \
            else (None, False, 0)
        n_reg = best.num_reg_images() if best is not None else 0
        result = {"images": images, "names": names, "num_images": n, "loose_init": loose_used, "fallback": None,
                  "match_attempts": attempts}
        if n_reg == n or (n > 3 and n_reg >= 2):
            result.update(_reconstruction_poses(best, names))
        else:
            if strategy == "auto":
                log.warning("incremental SfM registered %d of %d images; posing them from two-view geometry "
                            "instead (relative pose of the best pair, baseline set to 1, focal from the size prior)",
                            n_reg, n)
            w2c, cams, err, dropped, X = two_view_poses(db, image_paths[0].parent)
            result.update(w2c=w2c, cameras=cams, reprojection_error=err, num_registered=len(w2c), dropped=dropped,
                          fallback="two_view", points3d=torch.from_numpy(X))
        result["sfm_sizes"] = sfm_sizes
    result["seconds"] = time.perf_counter() - t0
    return result


def load_folder_scene(path: str | Path, resolution: tuple[int, int] | None = None, views: list[int] | None = None,
                      mode: str = "resize_crop", max_image_size: int = 1024, progress: bool = True,
                      camera_mode: str = "auto", seed: int = 0, strategy: str = "auto",
                      focal: float | None = None) -> Scene:
    """Pose a folder of images by SfM and return them as a Scene.

    views: indices into the name-sorted images (only those are posed). Images of different sizes are
    resampled to ``resolution`` (width, height) or, by default, to the majority's frame
    (``plan_frame``: photos of the minority orientation turned a quarter turn, said in one line).
    Fewer than 3 posed images (of 3 or more) is a UserError saying what usually helps. Extras:
    reprojection_error (mean, pixels at SfM resolution), num_registered, num_images, sfm_seconds,
    match_attempts, fallback (None or "two_view"), dropped (names SfM could not pose), undistorted.
    focal: known focal length (pixels, first image's size), e.g. from a calibration; kept fixed.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError("image folder does not exist", path, "check the path")
    paths = list_images(path)
    if views is not None:
        bad = [v for v in views if not -len(paths) <= v < len(paths)]
        if bad:
            raise UserError(f"view indices {bad} out of range: the folder has {len(paths)} images", path,
                            f"choose views in 0..{len(paths) - 1}")
        paths = [paths[v] for v in views]
    if len(paths) < 2:
        raise UserError(f"{len(paths)} image(s) found; at least 2 views are needed", path, "add more photos")
    if strategy not in ("auto", "two_view"):
        raise UserError(f"unknown SfM strategy {strategy!r}", path, "use 'auto' or 'two_view'")
    r = run_sfm(paths, max_image_size=max_image_size, progress=progress, seed=seed, camera_mode=camera_mode,
                strategy=strategy, focal=focal)
    if r["dropped"]:
        dropped_files = [str(paths[r["names"].index(nm)]) for nm in r["dropped"]]
        log.warning("SfM could not pose %d image(s), left out: %s (%s)", len(dropped_files), ", ".join(dropped_files),
                    SFM_HELP)
    keep = [i for i, nm in enumerate(r["names"]) if nm in r["w2c"]]
    if len(keep) < min(3, len(paths)):
        raise UserError(f"SfM posed only {len(keep)} of {len(paths)} images; at least {min(3, len(paths))} are needed",
                        path, SFM_HELP)
    imgs, Ks, w2cs, any_undistorted = [], [], [], False
    for i in keep:
        nm = r["names"][i]
        img = r["images"][i]
        cam = pycolmap.Camera(r["cameras"][nm].todict())
        cam.rescale(img.shape[1], img.shape[0])  # SfM ran on a downscaled copy: exact for the edge convention
        if is_identity_distortion(cam):
            K = pinhole_K(cam)
        else:
            img, K, _ = undistort_image(img, cam)
            any_undistorted = True
        imgs.append(img)
        Ks.append(K)
        w2cs.append(r["w2c"][nm])
    plan = plan_frame([(im.shape[1], im.shape[0]) for im in imgs],
                      None if resolution is None else (int(resolution[0]), int(resolution[1])))
    for k, turn in enumerate(plan.turned):
        if turn:
            imgs[k], Ks[k], w2cs[k] = quarter_turn(imgs[k], Ks[k], w2cs[k].to(Ks[k].dtype))
    if len({(im.shape[1], im.shape[0]) for im in imgs}) > 1 or any(plan.turned):
        log.warning("notice: %s", plan.line)
    stacked, cams = stack_views(imgs, Ks, w2cs, plan.width, plan.height, mode, announce=False)
    extras = {"reprojection_error": r["reprojection_error"], "num_registered": r["num_registered"],
              "num_images": r["num_images"], "sfm_seconds": r["seconds"], "fallback": r["fallback"],
              "loose_init": r["loose_init"], "match_attempts": r["match_attempts"],
              "dropped": [str(paths[r["names"].index(nm)]) for nm in r["dropped"]],
              "undistorted": any_undistorted, "turned": [str(paths[i]) for i, t in zip(keep, plan.turned) if t],
              "frame": plan.line}
    if "points3d" in r:
        extras["points3d"] = r["points3d"].to(torch.float64)
    return Scene(stacked, cams, [str(paths[i]) for i in keep], "folder", path, extras)
