"""Choices the engines make for the user: device, working resolution, context views, depth range,
and which unseen views count as interpolation.

Plain functions of cameras and sizes (no I/O besides the optional triangulation), so that
reconstruct, evaluation and the benchmarks decide the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError

# The bundled defaults: the pair fine-tuned on real photos (models/MODEL_CARD.md; research-only
# use, inherited from its training data). diff3r-small / ff-small (synthetic rooms) stay bundled.
DEFAULT_MODEL = "diff3r-real"
DEFAULT_FF_MODEL = "ff-real"
MAX_SIDE = 256          # default working resolution cap (long side): chosen by measurement so that the
                        # default reconstruct and `refine --steps 200` finish in minutes on 2 CPU cores
MULTIPLE = 16           # the predictor works on multiples of 16
MAX_DEFAULT_CONTEXT = 3
# reconstruct's default refine: a short plain TTO after the photometric depth correction. On the
# viking sample it lifts the context views 22.1 -> 32.0 dB and the unseen ones 17.0 -> 18.6 dB for
# ~8 s on 2 cores (benchmarks/results/refine_default.json); anchoring it by the bundled models'
# Λ stops at 27.7 / 17.6 dB (their Λ holds the Gaussians too tightly for a short refine).
DEFAULT_REFINE_STEPS = 15
MAX_INTERP_VIEWS = 8    # unseen views rendered by default (the nearest "interpolation" views)


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


def working_resolution(width: int, height: int, resolution: Optional[int | tuple[int, int]]) -> tuple[int, int]:
    """The (W, H) the network works at: an int is the short side at the input's own aspect ratio,
    a pair is taken as is, None is :func:`default_resolution`."""
    if isinstance(resolution, int):
        from diff3r_cli.scene_io.images import native_size

        return native_size(width, height, resolution, MULTIPLE)
    if resolution is not None:
        return resolution[0], resolution[1]
    return default_resolution(width, height)


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


def context_views(scene, views: Optional[list[int]], source: Path) -> list[int]:
    """The context views of a reconstruction: ``views`` when given (checked against the input),
    else the input's own hint (e.g. an RE10K evaluation index), else :func:`choose_context`.
    ``source`` (the input path) is the file a UserError names."""
    n = len(scene)
    if views is not None:
        bad = [v for v in views if v < 0 or v >= n]
        if bad:
            raise UserError(f"--views {bad} out of range: the input has {n} views (0..{n - 1})", source,
                            "pick indices from `diff3r inspect`")
        context = list(views)
    else:
        hint = scene.extras.get("context_views")
        context = [int(i) for i in hint] if hint is not None else choose_context(scene.cameras)
    if len(context) < 2:
        raise UserError(f"{len(context)} context view(s); at least 2 are needed", source, "pass --views i,j")
    return context


def range_from_points(cams: Cameras, points: torch.Tensor) -> Optional[tuple[float, float]]:
    """Near/far from world points seen by the cameras: robust 2-98 % depth quantiles, widened."""
    _, z = cams.project(points.to(torch.float64))
    z = z[z > 1e-6]
    if z.numel() < 10:
        return None
    return _widened_quantiles(z)


def _widened_quantiles(z: torch.Tensor) -> tuple[float, float]:
    return float(torch.quantile(z, 0.02)) * 0.6, float(torch.quantile(z, 0.98)) * 1.6


def look_at_distance(cams: Cameras) -> float:
    """Mean distance along the optical axes to the least-squares point closest to all of them
    (10 × the baseline where the axes are parallel or meet behind the cameras)."""
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
    # parallel axes (no finite meeting point) or one behind the cameras: fall back to the baseline
    if not math.isfinite(dist) or dist <= 0 or dist > 1e3 * max(baseline, 1e-9):
        dist = 10 * max(baseline, 1e-3)
    return dist


def look_at_range(cams: Cameras) -> tuple[float, float]:
    """Near/far around the cameras' common look-at point (the last resort)."""
    dist = look_at_distance(cams)
    return dist * 0.25, dist * 4.0


DEPTH_RANGES = ("fitted", "normalised")
# The "normalised" convention of models trained on scale-normalised data (RE10K practice; our real
# corpus is scaled so the 5th percentile of SfM depths is 2 and read with near 1 / far 100): at
# inference the scene is seen as if scaled the same way, i.e. near = p5/2 and far = 50·p5.
NORMALISED_P5, NORMALISED_NEAR, NORMALISED_FAR = 2.0, 1.0, 100.0


def normalised_range(p5: float) -> tuple[float, float]:
    """near/far of the "normalised" convention for a scene whose 5th-percentile depth is ``p5``."""
    s = p5 / NORMALISED_P5
    return NORMALISED_NEAR * s, NORMALISED_FAR * s


def _depth_evidence(scene, context: list[int], triangulate: bool):
    """The best depth information the scene offers: ("scene", (near, far)) from hints, or
    (source, z) with z the depths of stored depth maps / sparse or triangulated points in the
    context cameras, or ("camera look-at", distance)."""
    cams = scene.cameras[context]
    ex = scene.extras
    if "near" in ex and "far" in ex:
        return "scene", (float(ex["near"]), float(ex["far"]))
    if "depths" in ex:
        d = ex["depths"][context].reshape(-1).float()
        d = d[torch.isfinite(d) & (d > 0)]
        if d.numel():
            return "depth maps", d
    if "points3d" in ex and len(ex["points3d"]) >= 10:
        _, z = cams.project(ex["points3d"].to(torch.float64))
        z = z[z > 1e-6]
        if z.numel() >= 10:
            return "sparse points", z
    if triangulate and len(context) >= 2:
        from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

        tri = triangulate_known_cameras(scene.images[context], cams)
        if tri["num_points"] >= 10:
            _, z = cams.project(tri["points3d"].to(torch.float64))
            z = z[z > 1e-6]
            if z.numel() >= 10:
                return f"triangulated matches ({tri['num_points']} points, {tri['reprojection_error']:.2f} px)", z
    return "camera look-at", look_at_distance(cams)


def estimate_depth_range(scene, context: list[int], triangulate: bool = True,
                         convention: str = "fitted") -> tuple[float, float, str]:
    """Near/far planes for the cost volume, from what the scene offers; returns (near, far, source).

    Priority: sidecar/transforms near/far hints, stored depths (synthetic/RE10K extras), sparse
    3D points (COLMAP/SfM), features of the context views triangulated with their known poses
    (transforms.json, RE10K: pycolmap), else the cameras' common look-at point.
    convention: the model's (``PredictorConfig.depth_range``): "fitted" brackets the depths
    seen (robust 2-98 % quantiles, widened); "normalised" places them as the model saw them in
    training (:func:`normalised_range` of the 5th-percentile depth).
    """
    if convention not in DEPTH_RANGES:
        raise ValueError(f"unknown depth-range convention {convention!r} (use {', '.join(DEPTH_RANGES)})")
    source, ev = _depth_evidence(scene, context, triangulate)
    if source == "scene":
        return ev[0], ev[1], source
    if source == "camera look-at":
        if convention == "normalised":
            return (*normalised_range(0.5 * ev), source)
        return ev * 0.25, ev * 4.0, source
    if source == "depth maps" and convention == "fitted":
        return float(ev.min()) * 0.8, float(ev.max()) * 1.2, source
    return (*range_from_depths(ev, convention), source)


def range_from_depths(z: torch.Tensor, convention: str = "fitted") -> tuple[float, float]:
    """Near/far in a model's convention from sampled scene depths z (any shape, > 0): "normalised" from
    the 5th percentile, "fitted" the robust 2-98 % quantiles widened."""
    z = z.reshape(-1).double()
    if convention == "normalised":
        return normalised_range(float(torch.quantile(z, 0.05)))
    return _widened_quantiles(z)


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


__all__ = ["DEFAULT_REFINE_STEPS", "DEFAULT_MODEL", "DEFAULT_FF_MODEL", "MAX_SIDE", "MULTIPLE", "pick_device", "default_resolution", "working_resolution",
           "choose_context", "context_views", "range_from_points", "look_at_distance", "look_at_range", "estimate_depth_range",
           "DEPTH_RANGES", "normalised_range",
           "split_unseen"]
