"""End-to-end engines behind `diff3r reconstruct`, `refine` and `render`.

The CLI parses options and calls these; they are plain library functions (usable from
Python) that return a dict of figures and paths.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.fsio import atomic_dir
from diff3r_cli.gaussians import Gaussians

DEFAULT_MODEL = "diff3r-small"
MAX_SIDE = 256          # default working resolution cap (long side): chosen by measurement so that the
                        # default reconstruct and `refine --steps 200` finish in minutes on 2 CPU cores
MULTIPLE = 16           # the predictor works on multiples of 16
MAX_DEFAULT_CONTEXT = 3
MAX_INTERP_VIEWS = 8    # unseen views rendered by default (the nearest "interpolation" views)
PATH_FRAMES = 24        # reconstruct's camera path: a 2 s clip at 12 fps (rendering dominates the run time)
VIDEO_FPS = 12


# --- small helpers --------------------------------------------------------------------------

def pick_device(device: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible", None,
                        "use --device cpu (or auto)")
    return torch.device(device)


def default_resolution(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Native size capped at max_side on the long side, each side a multiple of 16 (crop, no stretch)."""
    s = min(1.0, max_side / max(width, height))
    w = max(MULTIPLE, int(width * s) // MULTIPLE * MULTIPLE)
    h = max(MULTIPLE, int(height * s) // MULTIPLE * MULTIPLE)
    return w, h


def choose_context(cameras: Cameras, count: int = MAX_DEFAULT_CONTEXT) -> list[int]:
    """Default context views: the most central camera and its nearest neighbours.

    Feed-forward predictors expect nearby views with overlap; picking neighbours of the
    central camera (rather than spreading views over the whole capture) keeps that true.
    """
    n = len(cameras)
    if n <= count:
        return list(range(n))
    c = cameras.centers.to(torch.float64)
    mid = int(torch.argmin((c - c.mean(0)).norm(dim=1)))
    order = torch.argsort((c - c[mid]).norm(dim=1)).tolist()
    return sorted(order[:count])


def _range_from_points(cams: Cameras, points: torch.Tensor) -> Optional[tuple[float, float]]:
    """Near/far from world points seen by the cameras: robust 2-98 % depth quantiles, widened."""
    _, z = cams.project(points.to(torch.float64))
    z = z[z > 1e-6]
    if z.numel() < 10:
        return None
    return float(torch.quantile(z, 0.02)) * 0.6, float(torch.quantile(z, 0.98)) * 1.6


def estimate_depth_range(scene, context: list[int], triangulate: bool = True) -> tuple[float, float, str]:
    """Near/far planes for the cost volume, from what the scene offers.

    Priority: sidecar/transforms near/far hints, stored depths (synthetic/RE10K extras), sparse
    3D points (COLMAP/SfM), features of the context views triangulated with their known poses
    (transforms.json, RE10K: pycolmap), else the cameras' common look-at point.
    """
    cams = scene.cameras[context]
    ex = scene.extras
    if "near" in ex and "far" in ex:
        return float(ex["near"]), float(ex["far"]), "scene"
    if "depths" in ex:
        d = ex["depths"][context].reshape(-1).float()
        d = d[torch.isfinite(d) & (d > 0)]
        if d.numel():
            return float(d.min()) * 0.8, float(d.max()) * 1.2, "depth maps"
    if "points3d" in ex and len(ex["points3d"]) >= 10:
        rng = _range_from_points(cams, ex["points3d"])
        if rng is not None:
            return rng[0], rng[1], "sparse points"
    if triangulate and len(context) >= 2:
        from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

        tri = triangulate_known_cameras(scene.images[context], cams)
        rng = _range_from_points(cams, tri["points3d"]) if tri["num_points"] >= 10 else None
        if rng is not None:
            return rng[0], rng[1], (f"triangulated matches ({tri['num_points']} points, "
                                    f"{tri['reprojection_error']:.2f} px)")
    # look-at: least-squares point closest to all optical axes
    c2w = cams.c2w.to(torch.float64)
    o, d = c2w[:, :3, 3], c2w[:, :3, 2]
    A = torch.zeros(3, 3, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    for oi, di in zip(o, d):
        P = torch.eye(3, dtype=torch.float64) - torch.outer(di, di)
        A += P
        b += P @ oi
    baseline = float((o - o.mean(0)).norm(dim=1).max()) if len(o) > 1 else 1.0
    try:
        p = torch.linalg.solve(A + 1e-9 * torch.eye(3, dtype=torch.float64), b)
        dist = float(((p - o) * d).sum(1).mean())
    except RuntimeError:
        dist = -1.0
    if not math.isfinite(dist) or dist <= 0 or dist > 1e3 * max(baseline, 1e-9):
        dist = 10 * max(baseline, 1e-3)
    return dist * 0.25, dist * 4.0, "camera look-at"


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(path: Path, img: torch.Tensor) -> None:
    Image.fromarray(_to_uint8(img)).save(path)


def save_gif(path: Path, frames: list[np.ndarray], fps: int = 15) -> None:
    from diff3r_cli.video import write_gif

    write_gif(path, frames, fps)


def mean_psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR averaged over views (C,H,W,3), the convention of `eval` and the papers."""
    from diff3r_cli.metrics import psnr

    return float(psnr(pred.float(), gt.float()).mean())


def photometric_psnr(photometric: float) -> float:
    """PSNR implied by the TTO energy's photometric term 1/(2P)·Σ‖R−I‖² (3 channels per pixel)."""
    mse = 2.0 * photometric / 3.0
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# --- prediction -------------------------------------------------------------------------------

def predict(model, images: torch.Tensor, cameras: Cameras, near: float, far: float,
            device: torch.device) -> tuple[Gaussians, torch.Tensor]:
    """Run the predictor on context views: images (V,H,W,3) -> (Gaussians, Λ (N,5)) on `device`."""
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(images[None].to(device, torch.float32), cameras.K[None].to(device, torch.float32),
                    cameras.w2c[None].to(device, torch.float32),
                    torch.tensor([near], device=device), torch.tensor([far], device=device))
    g = out.gaussians[0].detach()
    lam = out.lam[0].detach()
    if not g.is_finite() or not bool(torch.isfinite(lam).all()):
        raise NumericalError("the predictor produced non-finite Gaussians")
    return g, lam


class _TTOProgress:
    """Rich progress bar (stderr, with ETA) fed by the optimiser's per-step callback.

    It also keeps the best iterate seen so far (lowest E), so an interrupted refine can still
    write it: Adam hands each iterate over when asked for snapshots (see refine_gaussians).
    """

    def __init__(self, steps: int, label: str, enabled: bool = True):
        self.best_energy = float("inf")
        self.best_theta: Optional[torch.Tensor] = None
        self.best_step = -1
        self.p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                              TextColumn("E={task.fields[energy]}"), TimeElapsedColumn(), TextColumn("eta"),
                              TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.task = self.p.add_task(label, total=steps, energy="-")

    def __enter__(self):
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *a):
        if self.p is not None:
            if a[0] is not None and not issubclass(a[0], KeyboardInterrupt):
                self.p.live.transient = True  # an error: leave only its one-line message
            self.p.__exit__(*a)

    def __call__(self, rec: dict) -> None:
        theta = rec.pop("theta", None)  # not kept in the history: one copy (the best) is enough
        e = rec.get("energy", float("nan"))
        if theta is not None and math.isfinite(e) and e < self.best_energy:
            self.best_energy, self.best_theta, self.best_step = e, theta, rec.get("step", 0)
        if self.p is not None:
            self.p.update(self.task, completed=min(rec.get("step", 0), self.p.tasks[0].total),
                          energy=f"{e:.5f}")


class RefineInterrupted(KeyboardInterrupt):
    """A signal stopped refinement; ``best`` is the best iterate so far (None if none was seen)."""

    def __init__(self, cause: BaseException, best: Optional[Gaussians], step: int, energy: float):
        super().__init__(str(cause))
        self.cause, self.best, self.step, self.energy = cause, best, step, energy
        # the CLI's exit status (130/143) follows the signal when this escapes uncaught
        self.signum = getattr(cause, "signum", 2)
        self.exit_code = getattr(cause, "exit_code", 130)


def refine_gaussians(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                     steps: int, optimizer: str = "adam", show_progress: bool = True) -> tuple[Gaussians, list[dict]]:
    """Uncertainty-weighted TTO (lam=None: plain TTO) with a progress bar; NaN-guarded.

    On Ctrl-C/SIGTERM raises RefineInterrupted carrying the best iterate so far (Adam; LM keeps
    no iterates in its callback, so its partial result is None).
    """
    from diff3r_cli.optim.tto import optimize

    cams = cameras.to(g0.device, g0.dtype)
    imgs = images.to(g0.device, g0.dtype)
    # Adam's snapshots hand every iterate to the callback, which keeps only the best one
    extra = {"snapshots": set(range(steps + 1))} if optimizer == "adam" else {}
    with _TTOProgress(steps, f"refine ({optimizer})", enabled=show_progress) as bar:
        try:
            g, hist = optimize(g0, lam, cams, imgs, steps, optimizer=optimizer, progress=bar, **extra)
        except KeyboardInterrupt as e:
            best = g0.detach().unflatten(bar.best_theta) if bar.best_theta is not None else None
            raise RefineInterrupted(e, best, bar.best_step, bar.best_energy) from None
    if not g.is_finite():
        raise NumericalError("refinement produced non-finite Gaussians")
    return g, hist


# --- rendering outputs --------------------------------------------------------------------------

def render_views(g: Gaussians, cameras: Cameras, batch: int = 4, advance=None) -> torch.Tensor:
    """Render (C,H,W,3) in chunks of cameras (bounded memory); ``advance(n)`` after each chunk."""
    from diff3r_cli.render import render

    cams = cameras.to(g.device, g.dtype)
    outs = []
    with torch.no_grad():
        for i in range(0, len(cams), batch):
            outs.append(render(g, cams[i:i + batch]).rgb.clamp(0, 1).cpu())
            if advance is not None:
                advance(len(cams[i:i + batch]))
    return torch.cat(outs)


def make_path(kind: str, cameras: Cameras, g: Gaussians, frames: int) -> Cameras:
    from diff3r_cli.camera_paths import interpolate_path, orbit_path

    if kind == "input":
        return cameras
    if kind == "interpolate":
        return interpolate_path(cameras, frames)
    if kind == "orbit":
        target = g.means.detach().median(dim=0).values.cpu()
        return orbit_path(cameras, target, frames)
    raise UserError(f"unknown camera path {kind!r}", None, "use interpolate, orbit or input")


def split_unseen(cameras: Cameras, context: list[int], max_interp: int = MAX_INTERP_VIEWS) -> tuple[list[int], list[int]]:
    """Split the views that are not context views into (interpolation, extrapolation) views.

    Interpolation views sit between or near the context cameras: the centre lies within three
    quarters of the context baseline (the largest distance between two context centres) of a
    context centre, and the optical axis is within the context cameras' largest mutual angle (+10°) of
    that camera's axis. The ``max_interp`` nearest of them are kept; every other view is an
    extrapolation view (e.g. the far side of an object), which 2-3 context photos cannot
    predict and which is therefore only evaluated on request.
    """
    others = [i for i in range(len(cameras)) if i not in set(context)]
    if not others:
        return [], []
    c = cameras.centers.to(torch.float64)
    axis = cameras.c2w.to(torch.float64)[:, :3, 2]
    cc, ca = c[context], axis[context]
    base = float(torch.cdist(cc, cc).max()) if len(context) > 1 else 0.0
    cos_ctx = (ca @ ca.T).clamp(-1, 1)
    max_angle = float(torch.rad2deg(torch.acos(cos_ctx.min()))) + 10.0
    scored = []
    for j in others:
        d = (cc - c[j]).norm(dim=1)
        k = int(d.argmin())
        ang = float(torch.rad2deg(torch.acos((ca[k] @ axis[j]).clamp(-1, 1))))
        if base > 0 and float(d[k]) <= 0.75 * base and ang <= max_angle:
            scored.append((float(d[k]), j))
    interp = sorted(j for _, j in sorted(scored)[:max_interp])
    return interp, [j for j in others if j not in set(interp)]


def write_renders(dest: Path, g: Gaussians, path_cams: Cameras, video: bool | str,
                  named: dict[str, tuple[Cameras, Optional[torch.Tensor], list[int]]] | None = None,
                  steps=None) -> dict:
    """Render a camera path (+ named views with ground truth for PSNR) into `dest` atomically.

    Path frames are frame_NNNN.png; video: True/"mp4" adds path.mp4 (H.264), "gif" path.gif.
    named: {name: (cameras, ground truth or None, input view indices)} -> <name>_<index>.png
    (+ _gt.png), the index being the view's index in the input, and psnr_<name>.
    """
    from diff3r_cli.progress import Steps
    from diff3r_cli.video import write_gif, write_mp4

    steps = steps or Steps(enabled=False)
    figures: dict = {}
    fmt = "mp4" if video is True else (video or None)
    with atomic_dir(dest) as tmp:
        for name, (cams, gt, idx) in (named or {}).items():
            with steps.step(f"render {name} views", len(cams)) as adv:
                imgs = render_views(g, cams, advance=adv)
            for k, im in zip(idx, imgs):
                save_png(tmp / f"{name}_{k:02d}.png", im)
            if gt is not None:
                for k, im in zip(idx, gt):
                    save_png(tmp / f"{name}_{k:02d}_gt.png", im)
                figures[f"psnr_{name}"] = round(mean_psnr(imgs, gt), 2)
                figures[f"{name}_views"] = ",".join(map(str, idx))
        with steps.step("render camera path", len(path_cams)) as adv:
            frames = render_views(g, path_cams, advance=adv)
        arr = [_to_uint8(f) for f in frames]
        with steps.step("write frames" + (f" + {fmt}" if fmt and len(arr) > 1 else ""), len(arr)) as adv:
            for i, a in enumerate(arr):
                Image.fromarray(a).save(tmp / f"frame_{i:04d}.png")
                adv(1)
            if fmt == "mp4" and len(arr) > 1:
                write_mp4(tmp / "path.mp4", arr, fps=VIDEO_FPS)
                figures["video"] = str(dest / "path.mp4")
            elif fmt == "gif" and len(arr) > 1:
                write_gif(tmp / "path.gif", arr, fps=VIDEO_FPS)
                figures["video"] = str(dest / "path.gif")
    figures["renders"] = str(dest)
    figures["frames"] = len(path_cams)
    return figures


# --- engines -----------------------------------------------------------------------------------

def reconstruct_command(path: Path, out: Path, model: Optional[str] = None, views: Optional[list[int]] = None,
                        resolution: Optional[int | tuple[int, int]] = None, device: str = "auto", refine_steps: int = 0,
                        uncertainty: bool = True, render: bool = True, optimizer: str = "adam",
                        frames: int = PATH_FRAMES, eval_all: bool = False, video: str = "mp4",
                        show_progress: bool = True, ply_layout: str = "viewer") -> dict:
    """Load posed images, predict Gaussians, optionally refine, write .ply + sidecar (+ renders).

    Renders (render=True): the context views, the unseen views between or near them
    (``split_unseen``; psnr_interp), a camera path through the context cameras (PNG frames and
    path.mp4, or path.gif with video="gif", none with video=""); with eval_all also every other
    unseen view (psnr_extrap).
    """
    from diff3r_cli.model.io import load_model, resolve_model_path
    from diff3r_cli.progress import Steps
    from diff3r_cli.scene_io import detect_format, load_scene
    from diff3r_cli.scene_io.images import resize_scene
    from diff3r_cli.sidecar import scene_info, write_splat

    t_start = time.perf_counter()
    dev = pick_device(device)
    model_path = resolve_model_path(model or DEFAULT_MODEL)
    t0 = time.perf_counter()
    # input errors first: they are the user's most likely mistake. SfM shows its own progress.
    if detect_format(path) == "folder":
        scene = load_scene(path, progress=show_progress)
    else:
        with Steps(show_progress) as st, st.step("read images"):
            scene = load_scene(path)
    t_load = time.perf_counter() - t0
    n = len(scene)
    if views is not None:
        bad = [v for v in views if v < 0 or v >= n]
        if bad:
            raise UserError(f"--views {bad} out of range: the input has {n} views (0..{n - 1})", path,
                            "pick indices from `diff3r inspect`")
        context = list(views)
    else:
        hint = scene.extras.get("context_views")
        context = [int(i) for i in hint] if hint is not None else choose_context(scene.cameras)
    if len(context) < 2:
        raise UserError(f"{len(context)} context view(s); at least 2 are needed", path, "pass --views i,j")
    if isinstance(resolution, int):  # the short side, at the input's own aspect ratio
        from diff3r_cli.scene_io.images import native_size
        res = native_size(scene.width, scene.height, resolution, MULTIPLE)
    else:
        res = resolution or default_resolution(scene.width, scene.height)
    with Steps(show_progress) as st:
        with st.step("load model"):
            net = load_model(model_path, device="cpu")
        if (res[0], res[1]) != (scene.width, scene.height):
            with st.step(f"resample {n} views to {res[0]}x{res[1]}"):
                scene = resize_scene(scene, res[0], res[1])
        with st.step("depth range"):
            near, far, range_src = estimate_depth_range(scene, context)
        ctx_cams = scene.cameras[context]
        ctx_imgs = scene.images[context]
        t0 = time.perf_counter()
        with st.step(f"predict Gaussians from {len(context)} views"):
            g, lam = predict(net, ctx_imgs, ctx_cams, near, far, dev)
        t_pred = time.perf_counter() - t0
    t_ref = 0.0
    if refine_steps > 0:
        t0 = time.perf_counter()
        g, _ = refine_gaussians(g, lam if uncertainty else None, ctx_cams.to(dev), ctx_imgs.to(dev),
                                refine_steps, optimizer, show_progress=show_progress)
        t_ref = time.perf_counter() - t0
    g = g.detach().to("cpu")
    lam_out = lam.detach().cpu() if uncertainty else None

    held = [i for i in range(len(scene)) if i not in context]
    interp, extrap = split_unseen(scene.cameras, context)
    info = scene_info(scene, context_views=context, model=model_path.stem,
                      extras={"input": str(Path(path).resolve()), "format": scene.format, "near": near, "far": far,
                              "depth_range_from": range_src, "refine_steps": refine_steps,
                              "uncertainty": uncertainty, "held_out_views": held, "interp_views": interp})
    result = {"gaussians": len(g), "views": f"{len(context)} context ({','.join(map(str, context))}), "
                                            f"{len(interp)} interpolation, {len(extrap)} extrapolation",
              "resolution": f"{scene.width}x{scene.height}",
              "depth_range": f"{near:.3g}..{far:.3g} ({range_src})", "device": str(dev),
              "load_s": round(t_load, 2), "predict_s": round(t_pred, 2), "refine_s": round(t_ref, 2), "ply": str(out)}
    with Steps(show_progress) as st:
        with st.step("write .ply, sidecar and network inputs"):
            # exactly what the network saw (resized/cropped/undistorted), so refine re-uses it bit for bit
            inputs_dir = out.with_name(out.stem + "_inputs")
            with atomic_dir(inputs_dir) as tmp:
                for k, i in enumerate(context):
                    save_png(tmp / f"context_{k:02d}.png", scene.images[i])
            info["context_images"] = [str(inputs_dir / f"context_{k:02d}.png") for k in range(len(context))]
            write_splat(out, g, lam_out, info, layout=ply_layout)
        if render:
            named = {"context": (ctx_cams, ctx_imgs, context)}
            if interp:
                named["interp"] = (scene.cameras[interp], scene.images[interp], interp)
            if eval_all and extrap:
                named["extrap"] = (scene.cameras[extrap], scene.images[extrap], extrap)
            result.update(write_renders(out.with_name(out.stem + "_renders"), g,
                                        make_path("interpolate", ctx_cams, g, frames), video=video,
                                        named=named, steps=st))
    result["total_s"] = round(time.perf_counter() - t_start, 2)
    return result


def _load_context_images(doc: dict, sidecar: Path, images_dir: Optional[Path], cams: Cameras) -> torch.Tensor:
    """The context images refine optimises against: the exact network inputs saved by reconstruct,
    or (with --images / when those are gone) the original files resized and centre-cropped to the
    stored cameras' size (a distorted camera's undistortion is not redone on this path)."""
    from diff3r_cli.scene_io.images import load_image, resize_view

    ctx = doc.get("context_views") or []
    saved = doc.get("context_images")
    paths: list[Path]
    if images_dir is None and saved:
        base = sidecar.parent
        paths = [Path(p) if Path(p).is_absolute() else base / p for p in saved]
        if all(p.is_file() for p in paths):
            return torch.stack([load_image(p) for p in paths])
    from diff3r_cli.sidecar import resolve_images
    originals = resolve_images(doc, images_dir, sidecar)
    paths = [originals[i] for i in ctx] if ctx and len(originals) > max(ctx) else originals
    imgs = []
    for p in paths:
        im = load_image(p)
        if im.shape[:2] != (cams.height, cams.width):
            # the crop depends only on the sizes, so any K does; same resampling as reconstruct
            im, _ = resize_view(im, torch.eye(3, dtype=torch.float64), cams.width, cams.height)
        imgs.append(im)
    return torch.stack(imgs)


def _context_cameras(doc: dict, sidecar: Path) -> Cameras:
    from diff3r_cli.sidecar import cameras_from_sidecar

    cams = cameras_from_sidecar(doc, sidecar)
    ctx = doc.get("context_views")
    if ctx:
        if max(ctx) >= len(cams):
            raise UserError("sidecar context views do not match its cameras", sidecar, "re-run reconstruct")
        cams = cams[ctx]
    return cams


def refine_command(ply: Path, steps: int = 200, optimizer: str = "adam", uncertainty: bool = True,
                   images: Optional[Path] = None, out: Optional[Path] = None, device: str = "auto",
                   show_progress: bool = True, ply_layout: str = "viewer") -> dict:
    """Uncertainty-weighted TTO of a reconstructed .ply on its context views; writes `out` atomically.

    Works at the scene's saved resolution (the network inputs stored by reconstruct). Ctrl-C or
    SIGTERM writes the best iterate so far to `out` (sidecar extras.partial = true), then re-raises.
    """
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import read_sidecar, sidecar_path, write_splat

    ply = Path(ply)
    out = Path(out) if out is not None else ply.with_name(ply.stem + ".refined.ply")
    g0, lam = read_ply(ply)
    doc = read_sidecar(ply)
    sc = sidecar_path(ply)
    cams = _context_cameras(doc, sc)
    imgs = _load_context_images(doc, sc, images, cams)
    if len(imgs) != len(cams):
        raise UserError(f"{len(imgs)} images for {len(cams)} context cameras", sc, "pass --images with the input views")
    if uncertainty and lam is None:
        raise UserError("this .ply stores no uncertainty weights", ply, "pass --no-uncertainty for plain TTO")
    dev = pick_device(device)
    g0 = g0.to(dev, torch.float32)
    lam_used = lam.to(dev, torch.float32) if uncertainty else None
    info = {k: v for k, v in doc.items() if k != "diff3r_sidecar"}
    info["extras"] = dict(info.get("extras") or {})
    info["extras"].update({"refined_from": str(ply.resolve()), "refine_steps": steps, "optimizer": optimizer,
                           "uncertainty": uncertainty, "partial": False})
    t0 = time.perf_counter()
    try:
        g, hist = refine_gaussians(g0, lam_used, cams, imgs.to(dev), steps, optimizer, show_progress=show_progress)
    except RefineInterrupted as e:
        # keep the work done so far: the best iterate, written atomically and marked partial
        if e.best is not None and e.best.is_finite():
            info["extras"].update({"partial": True, "steps_done": e.step, "energy": e.energy})
            write_splat(out, e.best.to("cpu"), lam.cpu() if lam is not None else None, info, layout=ply_layout)
            print(f"interrupted: wrote the best iterate so far (step {e.step} of {steps}) to {out} "
                  f"(marked partial in {out.with_suffix('.json').name})", file=sys.stderr, flush=True)
        raise e.cause from None
    dt = time.perf_counter() - t0
    g = g.to("cpu")
    write_splat(out, g, lam.cpu() if lam is not None else None, info, layout=ply_layout)
    first, last = hist[0], hist[-1]  # history holds E at θ0 and at every iterate, final included
    return {"steps_run": len(hist) - 1, "energy": f"{first['energy']:.5g} -> {last['energy']:.5g}",
            "context_psnr": f"{photometric_psnr(first['photometric']):.2f} -> "
                            f"{photometric_psnr(last['photometric']):.2f} dB",
            "time_s": round(dt, 2), "ply": str(out)}


def render_command(ply: Path, out: Path, path: str = "interpolate", frames: int = 60, video: bool | str = False,
                   device: str = "auto", show_progress: bool = True) -> dict:
    """Render a .ply along a camera path built from its sidecar cameras into PNGs (+ path.mp4 with
    video=True/"mp4", path.gif with video="gif")."""
    from diff3r_cli.progress import Steps

    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import read_sidecar, sidecar_path

    g, _ = read_ply(ply)
    doc = read_sidecar(ply)
    cams = _context_cameras(doc, sidecar_path(ply))
    dev = pick_device(device)
    g = g.to(dev, torch.float32)
    with Steps(show_progress) as st:
        return write_renders(Path(out), g, make_path(path, cams, g, frames), video=video, steps=st)


__all__ = ["reconstruct_command", "refine_command", "render_command", "predict", "refine_gaussians",
           "render_views", "estimate_depth_range", "choose_context", "default_resolution", "pick_device",
           "mean_psnr", "split_unseen", "RefineInterrupted"]
