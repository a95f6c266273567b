"""End-to-end engines behind `diff3r reconstruct`, `refine` and `render`.

The CLI parses options and calls these; they are plain library functions (usable from
Python) that return a dict of figures and paths.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import Gaussians

DEFAULT_MODEL = "diff3r-small"
MAX_SIDE = 512          # default working resolution cap (long side), CPU-friendly
MULTIPLE = 16           # the predictor works on multiples of 16
MAX_DEFAULT_CONTEXT = 3


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


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp folder next to `dest`; on success it replaces `dest` (old copy removed after)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_png(path: Path, img: torch.Tensor) -> None:
    Image.fromarray(_to_uint8(img)).save(path)


def save_gif(path: Path, frames: list[np.ndarray], fps: int = 15) -> None:
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)


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
    """Rich progress bar fed by the optimiser's per-step callback."""

    def __init__(self, steps: int, label: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("E={task.fields[energy]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          transient=False)
        self.task = self.p.add_task(label, total=steps, energy="-")

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)

    def __call__(self, rec: dict) -> None:
        self.p.update(self.task, completed=min(rec.get("step", 0) + 1, self.p.tasks[0].total),
                      energy=f"{rec.get('energy', float('nan')):.5f}")


def refine_gaussians(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                     steps: int, optimizer: str = "adam", show_progress: bool = True) -> tuple[Gaussians, list[dict]]:
    """Uncertainty-weighted TTO (lam=None: plain TTO) with a progress bar; NaN-guarded."""
    from diff3r_cli.optim.tto import optimize

    cams = cameras.to(g0.device, g0.dtype)
    imgs = images.to(g0.device, g0.dtype)
    if show_progress:
        with _TTOProgress(steps, f"refine ({optimizer})") as bar:
            g, hist = optimize(g0, lam, cams, imgs, steps, optimizer=optimizer, progress=bar)
    else:
        g, hist = optimize(g0, lam, cams, imgs, steps, optimizer=optimizer)
    if not g.is_finite():
        raise NumericalError("refinement produced non-finite Gaussians")
    return g, hist


# --- rendering outputs --------------------------------------------------------------------------

def render_views(g: Gaussians, cameras: Cameras, batch: int = 4) -> torch.Tensor:
    """Render (C,H,W,3) in chunks of cameras (bounded memory)."""
    from diff3r_cli.render import render

    cams = cameras.to(g.device, g.dtype)
    outs = []
    with torch.no_grad():
        for i in range(0, len(cams), batch):
            outs.append(render(g, cams[i:i + batch]).rgb.clamp(0, 1).cpu())
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


def write_renders(dest: Path, g: Gaussians, path_cams: Cameras, video: bool,
                  named: dict[str, tuple[Cameras, Optional[torch.Tensor]]] | None = None) -> dict:
    """Render a camera path (+ optional named views, with ground truth for PSNR) into `dest` atomically."""
    figures: dict = {}
    with atomic_dir(dest) as tmp:
        frames = render_views(g, path_cams)
        arr = [_to_uint8(f) for f in frames]
        for i, a in enumerate(arr):
            Image.fromarray(a).save(tmp / f"frame_{i:04d}.png")
        if video and len(arr) > 1:
            save_gif(tmp / "path.gif", arr)
        for name, (cams, gt) in (named or {}).items():
            imgs = render_views(g, cams)
            for i, im in enumerate(imgs):
                save_png(tmp / f"{name}_{i:02d}.png", im)
                if gt is not None:
                    save_png(tmp / f"{name}_{i:02d}_gt.png", gt[i])
            if gt is not None:
                figures[f"psnr_{name}"] = round(mean_psnr(imgs, gt), 2)
    figures["renders"] = str(dest)
    figures["frames"] = len(path_cams)
    return figures


# --- engines -----------------------------------------------------------------------------------

def reconstruct_command(path: Path, out: Path, model: Optional[str] = None, views: Optional[list[int]] = None,
                        resolution: Optional[int | tuple[int, int]] = None, device: str = "auto", refine_steps: int = 0,
                        uncertainty: bool = True, render: bool = True, optimizer: str = "adam",
                        frames: int = 30) -> dict:
    """Load posed images, predict Gaussians, optionally refine, write .ply + sidecar (+ renders)."""
    from diff3r_cli.model.io import load_model, resolve_model_path
    from diff3r_cli.scene_io import load_scene
    from diff3r_cli.scene_io.images import resize_scene
    from diff3r_cli.sidecar import scene_info, write_splat

    t_start = time.perf_counter()
    dev = pick_device(device)
    model_path = resolve_model_path(model or DEFAULT_MODEL)
    t0 = time.perf_counter()
    scene = load_scene(path, progress=True)  # input errors first: they are the user's most likely mistake
    t_load = time.perf_counter() - t0
    net = load_model(model_path, device="cpu")
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
    if (res[0], res[1]) != (scene.width, scene.height):
        scene = resize_scene(scene, res[0], res[1])
    near, far, range_src = estimate_depth_range(scene, context)
    ctx_cams = scene.cameras[context]
    ctx_imgs = scene.images[context]

    t0 = time.perf_counter()
    g, lam = predict(net, ctx_imgs, ctx_cams, near, far, dev)
    t_pred = time.perf_counter() - t0
    t_ref = 0.0
    if refine_steps > 0:
        t0 = time.perf_counter()
        g, _ = refine_gaussians(g, lam if uncertainty else None, ctx_cams.to(dev), ctx_imgs.to(dev),
                                refine_steps)
        t_ref = time.perf_counter() - t0
    g = g.detach().to("cpu")
    lam_out = lam.detach().cpu() if uncertainty else None

    held = [i for i in range(len(scene)) if i not in context]
    info = scene_info(scene, context_views=context, model=model_path.stem,
                      extras={"input": str(Path(path).resolve()), "format": scene.format, "near": near, "far": far,
                              "depth_range_from": range_src, "refine_steps": refine_steps,
                              "uncertainty": uncertainty, "held_out_views": held})
    # exactly what the network saw (resized/cropped/undistorted), so refine re-uses it bit for bit
    inputs_dir = out.with_name(out.stem + "_inputs")
    with atomic_dir(inputs_dir) as tmp:
        for k, i in enumerate(context):
            save_png(tmp / f"context_{k:02d}.png", scene.images[i])
    info["context_images"] = [str(inputs_dir / f"context_{k:02d}.png") for k in range(len(context))]
    write_splat(out, g, lam_out, info)

    result = {"gaussians": len(g), "views": f"{len(context)} context ({','.join(map(str, context))}), "
                                            f"{len(held)} held out", "resolution": f"{scene.width}x{scene.height}",
              "depth_range": f"{near:.3g}..{far:.3g} ({range_src})", "device": str(dev),
              "load_s": round(t_load, 2), "predict_s": round(t_pred, 2), "refine_s": round(t_ref, 2), "ply": str(out)}
    if render:
        named = {"context": (ctx_cams, ctx_imgs)}
        if held:
            named["heldout"] = (scene.cameras[held], scene.images[held])
        result.update(write_renders(out.with_name(out.stem + "_renders"), g,
                                    make_path("interpolate", ctx_cams, g, frames), video=True, named=named))
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
                   images: Optional[Path] = None, out: Optional[Path] = None, device: str = "auto") -> dict:
    """Uncertainty-weighted TTO of a reconstructed .ply on its context views; writes `out` atomically."""
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
    t0 = time.perf_counter()
    g, hist = refine_gaussians(g0, lam_used, cams, imgs.to(dev), steps, optimizer)
    dt = time.perf_counter() - t0
    g = g.to("cpu")
    info = {k: v for k, v in doc.items() if k != "diff3r_sidecar"}
    info["extras"] = dict(info.get("extras") or {})
    info["extras"].update({"refined_from": str(ply.resolve()), "refine_steps": steps, "optimizer": optimizer,
                           "uncertainty": uncertainty})
    write_splat(out, g, lam.cpu() if lam is not None else None, info)
    first, last = hist[0], hist[-1]  # history holds E at θ0 and at every iterate, final included
    return {"steps_run": len(hist) - 1, "energy": f"{first['energy']:.5g} -> {last['energy']:.5g}",
            "context_psnr": f"{photometric_psnr(first['photometric']):.2f} -> "
                            f"{photometric_psnr(last['photometric']):.2f} dB",
            "time_s": round(dt, 2), "ply": str(out)}


def render_command(ply: Path, out: Path, path: str = "interpolate", frames: int = 60, video: bool = False,
                   device: str = "auto") -> dict:
    """Render a .ply along a camera path built from its sidecar cameras into PNGs (+ GIF)."""
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import read_sidecar, sidecar_path

    g, _ = read_ply(ply)
    doc = read_sidecar(ply)
    cams = _context_cameras(doc, sidecar_path(ply))
    dev = pick_device(device)
    g = g.to(dev, torch.float32)
    return write_renders(Path(out), g, make_path(path, cams, g, frames), video=video)


__all__ = ["reconstruct_command", "refine_command", "render_command", "predict", "refine_gaussians",
           "render_views", "estimate_depth_range", "choose_context", "default_resolution", "pick_device",
           "mean_psnr"]
