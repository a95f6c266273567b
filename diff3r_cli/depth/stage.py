"""The depth stage of the pipeline: a prediction's geometry taken from the photos.

Shared by `reconstruct` and `eval` so both score the same thing.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from diff3r_cli.depth.backdrop import with_backdrop
from diff3r_cli.depth.covisible import anchor_sets, anchor_weights, calibrated, covisible
from diff3r_cli.depth.fuse import floaters
from diff3r_cli.depth.pixel_gaussians import view_depths, with_depths
from diff3r_cli.depth.sweep import SweepResult, sweep_depth
from diff3r_cli.gaussians import Gaussians

# The sweep must accept at least this many pixels before its depths may set the depth range.
RANGE_MIN_ACCEPTED = 200
# A photo range closer than this (|log near ratio|) to the one given is not worth a second prediction.
RANGE_TOLERANCE = 0.01


class MatchedPrediction(NamedTuple):
    """θ0 with depth from the photos, its TTO anchor (the predicted Λ rows, scaled down where another
    view sees the Gaussian: depth/covisible.py), the sweep's accepted share, the range used, the
    final sweep, which Gaussians another view sees (these two None where the prediction is not
    pixel-aligned), how many backdrop Gaussians are appended last (depth/backdrop.py), and the
    first network pass's own depth (V,H,W) at the range given (None where not pixel-aligned)."""

    gaussians: Gaussians
    lam: torch.Tensor
    accepted: float
    near: float
    far: float
    sweep: Optional[SweepResult] = None
    covisible: Optional[torch.Tensor] = None
    backdrop: int = 0
    network_depth: Optional[torch.Tensor] = None


def photo_range(res: SweepResult, convention: str = "fitted") -> Optional[tuple[float, float]]:
    """Near/far in a model's convention from the depths the sweep accepted; None with too few."""
    from diff3r_cli.engines.policy import range_from_depths

    z = res.depth[res.valid]
    if z.numel() < RANGE_MIN_ACCEPTED:
        return None
    if z.numel() > 1_000_000:  # torch.quantile's input limit; a strided sample keeps the quantiles
        z = z[:: z.numel() // 1_000_000 + 1]
    return range_from_depths(z, convention)


def _fuse(g: Gaussians, cams, res: SweepResult) -> tuple[Gaussians, torch.Tensor]:
    """The Gaussians at the matched depths, and which of them to keep (not floaters)."""
    g = with_depths(g, cams, res.depth)
    return g, ~floaters(g, cams, res.depth, res.valid)


def _pixel_aligned(g: Gaussians, images: torch.Tensor) -> bool:
    v, h, w = images.shape[:3]
    return len(g) == v * h * w


def match_depth(g: Gaussians, lam: torch.Tensor, images: torch.Tensor,
                cameras) -> tuple[Gaussians, torch.Tensor, float]:
    """The prediction with depth from the photos: each pixel's Gaussian moved to the depth the views
    agree on (ZNCC sweep, where it decides), then the Gaussians that contradict another view's matched
    surface dropped (diff3r_cli.depth.fuse). Returns (Gaussians, their Λ rows, accepted share)."""
    cams = cameras.to(g.device)
    if not _pixel_aligned(g, images):  # not one Gaussian per context pixel (e.g. a backbone that crops)
        return g, lam, 0.0
    res = sweep_depth(images.to(g.device), cams, view_depths(g, cams))
    g, keep = _fuse(g, cams, res)
    return g[keep], lam[keep], res.accepted_fraction


def predict_matched(model: torch.nn.Module, images: torch.Tensor, cameras, near: float, far: float,
                    device=None, rerange: bool = True, anchor: bool = True,
                    backdrop: bool = True, calibrate: bool = True) -> MatchedPrediction:
    """Predict, then take the depth from the photos (:func:`match_depth`), with the depth range itself
    set by matching (rerange).

    A predictor's depth follows the near/far it is given (the cost volume's planes and the training
    scale live there), so a range that is off by 2× moves every unmatched pixel by 2×. With rerange,
    the first prediction only seeds the sweep (which searches 0.4-2.5× around it); the depths the
    sweep accepts give the range in the model's convention (PredictorConfig.depth_range), and the
    network predicts again in that range before the final sweep. The given range then only has to
    be within the sweep's reach.

    anchor: the returned Λ is the TTO anchor of :func:`diff3r_cli.depth.covisible.anchor_weights`
    (the predicted rows where only the Gaussian's own view sees it, a small fraction elsewhere),
    times the model's learned calibration per set and group where it has one and ``calibrate``
    (``PredictorConfig.anchor_log_scales``, :func:`diff3r_cli.depth.covisible.calibrated`);
    without, the predicted rows as they are.

    backdrop: append a far, blurred backdrop behind the scene (:mod:`diff3r_cli.depth.backdrop`),
    last, with the median predicted Λ row; it is not covisible.
    """
    from diff3r_cli.model.inference import predict_gaussians

    g, lam = predict_gaussians(model, images, cameras, near, far, device)
    cams = cameras.to(g.device)
    if not _pixel_aligned(g, images):
        return MatchedPrediction(g, lam, 0.0, near, far)
    imgs = images.to(g.device)
    first = view_depths(g, cams)
    res = sweep_depth(imgs, cams, first)
    if rerange:
        convention = getattr(getattr(model, "cfg", None), "depth_range", "fitted")
        r = photo_range(res, convention)
        if r is not None and abs(math.log(r[0] / near)) > RANGE_TOLERANCE:
            near, far = r
            g, lam = predict_gaussians(model, images, cameras, near, far, device)
            res = sweep_depth(imgs, cams, view_depths(g, cams))
    g, keep = _fuse(g, cams, res)
    seen = covisible(g, cams)
    row = lam.median(0).values if backdrop else None  # the network's typical row, before anchoring
    if anchor:
        lam = anchor_weights(lam, seen)
    g, lam, seen = g[keep], lam[keep], seen[keep]
    n = 0
    if backdrop:
        g, lam, n = with_backdrop(g, lam, cams, imgs, row=row)
        seen = torch.cat([seen, seen.new_zeros(n)])
    log_scales = getattr(getattr(model, "cfg", None), "anchor_log_scales", None)
    if anchor and calibrate and log_scales is not None:
        lam = calibrated(lam, anchor_sets(seen, n), log_scales)
    return MatchedPrediction(g, lam, res.accepted_fraction, near, far, res, seen, n, first)


__all__ = ["MatchedPrediction", "match_depth", "photo_range", "predict_matched"]
