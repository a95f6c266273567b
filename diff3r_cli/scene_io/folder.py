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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pycolmap
import torch
from PIL import Image

from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, load_image, resample, stack_views
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.undistort import is_identity_distortion, pinhole_K, undistort_image
from diff3r_cli.interrupts import reclaim, temp_path

reclaim()  # importing pycolmap installed glog's SIGTERM handler (a C++ stack trace): put ours back

log = logging.getLogger(__name__)


def list_images(path: Path) -> list[Path]:
    """Image files of a folder (or of its images/ subfolder), sorted by name."""
    folder = path / "images" if (path / "images").is_dir() and not _direct_images(path) else path
    return _direct_images(folder)


def _direct_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


@contextmanager
def _quiet_colmap(level: int = 3):
    """Silence COLMAP's glog chatter (INFO lines per image) unless the user asked for it."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = level
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


class _Progress:
    """A rich progress display on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total_images: int):
        self.enabled = enabled
        self.total = total_images
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self.p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            if exc[0] is not None:  # error or interrupt: leave only its one-line message on stderr
                for t in list(self.p.tasks):
                    self.p.remove_task(t.id)
                self.p.live.transient = True
            self.p.__exit__(*exc)

    def stage(self, description: str, total: int | None = None):
        if not self.enabled:
            return None
        return self.p.add_task(description, total=total)

    def done(self, task, completed: int | None = None):
        """Mark a stage finished (``completed`` of its total, e.g. registered images, when given)."""
        if self.enabled and task is not None:
            total = next(t.total for t in self.p.tasks if t.id == task) or 1
            self.p.update(task, completed=total if completed is None else completed, total=total)

    def advance(self, task, n: int = 1):
        if self.enabled and task is not None:
            self.p.advance(task, n)


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


def _triangulate(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of normalized image points (M,2) for 3x4 projections; (M,3)."""
    A = np.stack([x1[:, :1] * P1[2] - P1[0], x1[:, 1:] * P1[2] - P1[1],
                  x2[:, :1] * P2[2] - P2[0], x2[:, 1:] * P2[2] - P2[1]], axis=1)  # (M,4,4)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    return X[:, :3] / X[:, 3:4]


def _pair_key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _two_view_fallback(db_path: Path, names: list[str], folder: Path
                       ) -> tuple[dict, dict, float, list[str], np.ndarray]:
    """Poses from two-view geometry: ({name: w2c}, {name: camera}, mean reproj. error, dropped, points (P,3))."""
    with pycolmap.Database.open(str(db_path)) as db:
        images = {im.image_id: im for im in db.read_all_images()}
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        kps = {i: db.read_keypoints(i)[:, :2].astype(np.float64) for i in images}
        pair_ids, geoms = db.read_two_view_geometries()
    pairs = {}
    for pid, g in zip(pair_ids, geoms):
        a, b = pycolmap.pair_id_to_image_pair(pid)  # matches' columns follow this (a, b) order
        if len(g.inlier_matches) > 0:
            pairs[_pair_key(a, b)] = np.asarray(g.inlier_matches, dtype=np.int64) if a < b else \
                np.asarray(g.inlier_matches, dtype=np.int64)[:, ::-1]
    if not pairs:
        raise UserError("no two images share enough feature matches to be posed", folder,
                        "use overlapping photos of the same static scene, or provide poses (COLMAP/transforms.json)")
    (a, b), m = max(pairs.items(), key=lambda kv: len(kv[1]))
    ca, cb = cameras[images[a].camera_id], cameras[images[b].camera_id]
    ka, kb = np.ascontiguousarray(kps[a]), np.ascontiguousarray(kps[b])
    geom = pycolmap.estimate_calibrated_two_view_geometry(ca, ka, cb, kb, np.ascontiguousarray(m, dtype=np.uint32))
    ok = pycolmap.estimate_two_view_geometry_pose(ca, ka, cb, kb, geom)
    inl = np.asarray(geom.inlier_matches, dtype=np.int64)
    if not ok or len(inl) < 15:
        raise UserError(f"two-view geometry of {images[a].name} and {images[b].name} failed ({len(inl)} inliers)",
                        folder, "use photos with more overlap and some sideways camera motion")
    rel = np.asarray(geom.cam2_from_cam1.matrix(), dtype=np.float64)
    rel[:, 3] /= max(np.linalg.norm(rel[:, 3]), 1e-12)  # scale is unobservable: baseline := 1
    poses = {a: np.hstack([np.eye(3), np.zeros((3, 1))]), b: rel}
    # triangulate the pair's inliers (normalized coordinates) to pose any further image by PnP
    ia, ib = inl[:, 0], inl[:, 1]  # keypoint indices in images a and b
    na, nb = ca.cam_from_img(kps[a][ia]), cb.cam_from_img(kps[b][ib])
    X = _triangulate(poses[a], poses[b], na, nb)
    # keep points in front of both cameras (mismatches can triangulate behind them)
    front = ((X[:, 2] > 0) & ((X @ rel[:, :3].T + rel[:, 3])[:, 2] > 0)) & np.isfinite(X).all(1)
    X, ia, ib = X[front], ia[front], ib[front]
    track_a = {int(k): j for j, k in enumerate(ia)}
    track_b = {int(k): j for j, k in enumerate(ib)}
    errs = []
    for i, kp_idx in ((a, ia), (b, ib)):
        cam = cameras[images[i].camera_id]
        Xc = X @ poses[i][:, :3].T + poses[i][:, 3]
        errs.append(np.linalg.norm(cam.img_from_cam(Xc, check_cheirality=False) - kps[i][kp_idx], axis=1))
    dropped = []
    for i in images:
        if i in poses:
            continue
        p2d, p3d = [], []
        for other, track in ((a, track_a), (b, track_b)):
            mm = pairs.get(_pair_key(i, other))
            if mm is None:
                continue
            mi, mo = (mm[:, 0], mm[:, 1]) if i < other else (mm[:, 1], mm[:, 0])
            for ki, ko in zip(mi, mo):
                if int(ko) in track:
                    p2d.append(kps[i][ki])
                    p3d.append(X[track[int(ko)]])
        cam = cameras[images[i].camera_id]
        res = pycolmap.estimate_and_refine_absolute_pose(np.array(p2d), np.array(p3d), cam) if len(p2d) >= 6 else None
        if res is None or int(np.sum(res["inlier_mask"])) < 12:
            dropped.append(images[i].name)
            continue
        poses[i] = np.asarray(res["cam_from_world"].matrix(), dtype=np.float64)
        mask = np.asarray(res["inlier_mask"], dtype=bool)
        Xc = np.array(p3d)[mask] @ poses[i][:, :3].T + poses[i][:, 3]
        errs.append(np.linalg.norm(cam.img_from_cam(Xc, check_cheirality=False) - np.array(p2d)[mask], axis=1))
    w2c = {images[i].name: _to4x4(p) for i, p in poses.items()}
    cams = {images[i].name: cameras[images[i].camera_id] for i in poses}
    return w2c, cams, float(np.concatenate(errs).mean()), dropped, X


def _to4x4(m: np.ndarray) -> torch.Tensor:
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :4] = torch.from_numpy(np.asarray(m, dtype=np.float64))
    return out


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
    with tempfile.TemporaryDirectory(prefix="diff3r_sfm_", dir=workdir) as tmp, temp_path(tmp), _quiet_colmap(), \
            _Progress(progress, n) as prog:
        tmp = Path(tmp)  # registered: removed even when a signal ends the process inside COLMAP
        (tmp / "images").mkdir()
        sfm_sizes = []
        for im, name in zip(images, names):
            h, w = im.shape[:2]
            s = min(1.0, max_image_size / max(w, h))
            sw, sh = max(1, round(w * s)), max(1, round(h * s))
            sfm_sizes.append((sw, sh))
            small = resample(im, sw, sh) if (sw, sh) != (w, h) else im
            Image.fromarray((small.numpy() * 255).round().astype(np.uint8)).save(tmp / "images" / name,
                                                                                 compress_level=1)
        db = tmp / "database.db"
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "SIMPLE_PINHOLE" if n <= 3 else "SIMPLE_RADIAL"
        w0, h0 = sizes[0]
        f_prior = focal if focal is not None else exif_focal_px(image_paths[0], w0, h0)
        if f_prior is not None and camera_mode == "single":
            # camera_params are one set for all images, in pixels of the SfM copies (all one size here)
            sw0, sh0 = sfm_sizes[0]
            f = f_prior * sw0 / w0
            extra = ",0" if reader.camera_model == "SIMPLE_RADIAL" else ""
            reader.camera_params = f"{f!r},{sw0 / 2!r},{sh0 / 2!r}{extra}"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = max_image_size
        mode = pycolmap.CameraMode.SINGLE if camera_mode == "single" else pycolmap.CameraMode.PER_IMAGE
        task = prog.stage("SfM: SIFT features", n)
        pycolmap.extract_features(db, tmp / "images", image_names=names, camera_mode=mode, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        prog.done(task, n)
        task = prog.stage("SfM: exhaustive matching", n * (n - 1) // 2)
        pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
        prog.done(task)
        best, loose_used = None, False
        for loose in ((False, True) if strategy == "auto" else ()):
            task = prog.stage("SfM: incremental mapping" + (" (looser init)" if loose else ""), n)
            out = tmp / ("sparse_loose" if loose else "sparse")
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
        n_reg = best.num_reg_images() if best is not None else 0
        result = {"images": images, "names": names, "num_images": n, "loose_init": loose_used, "fallback": None}
        if n_reg == n or (n > 3 and n_reg >= 2):
            w2c, cams = {}, {}
            for im in best.images.values():
                if not im.has_pose:
                    continue
                pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
                w2c[im.name] = _to4x4(pose.matrix())
                cams[im.name] = best.cameras[im.camera_id]
            result.update(w2c=w2c, cameras=cams, reprojection_error=float(best.compute_mean_reprojection_error()),
                          num_registered=n_reg, dropped=[nm for nm in names if nm not in w2c],
                          points3d=torch.tensor(np.array([p.xyz for p in best.points3D.values()]).reshape(-1, 3)))
        else:
            if strategy == "auto":
                log.warning("incremental SfM registered %d of %d images; posing them from two-view geometry "
                            "instead (relative pose of the best pair, baseline set to 1, focal from the size prior)",
                            n_reg, n)
            w2c, cams, err, dropped, X = _two_view_fallback(db, names, image_paths[0].parent)
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
    resampled to ``resolution`` (width, height) or, by default, to the first image's size. Extras:
    reprojection_error (mean, pixels at SfM resolution), num_registered, num_images, sfm_seconds,
    fallback (None or "two_view"), dropped (names SfM could not pose), undistorted.
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
        log.warning("SfM could not pose %d image(s), left out: %s", len(dropped_files), ", ".join(dropped_files))
    keep = [i for i, nm in enumerate(r["names"]) if nm in r["w2c"]]
    if len(keep) < 2:
        raise UserError(f"SfM posed only {len(keep)} of {len(paths)} images", path,
                        "use overlapping photos of a static, textured scene, or provide poses")
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
    if resolution is None:
        width, height = imgs[0].shape[1], imgs[0].shape[0]
    else:
        width, height = int(resolution[0]), int(resolution[1])
    stacked, cams = stack_views(imgs, Ks, w2cs, width, height, mode)
    extras = {"reprojection_error": r["reprojection_error"], "num_registered": r["num_registered"],
              "num_images": r["num_images"], "sfm_seconds": r["seconds"], "fallback": r["fallback"],
              "loose_init": r["loose_init"], "dropped": [str(paths[r["names"].index(nm)]) for nm in r["dropped"]],
              "undistorted": any_undistorted}
    if "points3d" in r:
        extras["points3d"] = r["points3d"].to(torch.float64)
    return Scene(stacked, cams, [str(paths[i]) for i in keep], "folder", path, extras)
