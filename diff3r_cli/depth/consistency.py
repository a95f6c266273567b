"""How far each context photo's pixels are confirmed by the other context views.

TTO fits every context pixel. Where a photo shows something the other photos do not (an occluder
in one view, a local exposure change, a reflection), the fit bakes it into the scene and the novel
views show it. The prediction already says where that happens: render view i from the Gaussians
predicted from the *other* views, and compare with photo i after a per-channel gain (so that a
whole-view exposure difference, which the exposure compensation handles, does not count). Where the
other views cover the pixel and the colours disagree, the pixel is less trustworthy.

The confidence is a Cauchy weight of the window-averaged colour difference d:
``w = 1 / (1 + (d / tau)²)``, 1 where the other views do not cover the pixel (their opacity below
``COVER``: nothing to compare with there). It weights the photometric term of the TTO
(``optim.energy``: the residual carries √w).

With two context views the test cannot tell which photo is wrong: an occluder's Gaussians in view i
also render into view j, where they contradict view j's photo. Both views lose the weight there (and
with :func:`confident_start`'s ``drop`` both views' Gaussians go), which is what keeps the occluder
out of the scene; a third view would break the tie.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.sweep import box_mean
from diff3r_cli.gaussians import Gaussians

if TYPE_CHECKING:
    from diff3r_cli.depth.anchor_head import AnchorHead

TAU = 0.1      # colour difference (mean over RGB, images in [0,1]) at which a pixel's weight is 1/2
WINDOW = 5     # box window of the difference (odd): single-pixel misregistration at edges is not an outlier
COVER = 0.5    # the other views' rendered opacity above which they cover a pixel
MIN_COVERED = 100  # pixels needed for the per-channel gain
PREPASS_STEPS = 50  # plain TTO steps before the confidences are measured (see confident_start)
# TTO budgets from which the confident start pays: the dropped Gaussians leave holes that the fit
# must fill (real test split, clean: −0.54 dB at 50 steps, +0.02 dB at 200; docs/RESULTS.md)
MIN_STEPS = 100


def _robust_gain(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-channel gain g with q ≈ g·p, (3,), as the median ratio over pixels not too dark: a least-squares
    gain would be pulled by the very outliers it is meant to expose (an occluder's colour)."""
    ones = torch.ones(3, dtype=q.dtype, device=q.device)
    if p.shape[0] < MIN_COVERED:
        return ones
    gains = []
    for c in range(3):
        lit = p[:, c] > 0.05
        gains.append((q[lit, c] / p[lit, c]).median() if int(lit.sum()) >= MIN_COVERED else ones[c])
    return torch.stack(gains)


def cross_view_difference(g: Gaussians, cameras: Cameras, images: torch.Tensor,
                          owner: Optional[torch.Tensor] = None, window: int = WINDOW,
                          backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(d, covered), both (V,H,W): each photo against its render from the other views' pixel
    Gaussians (after a robust gain per channel), window-averaged; and where those Gaussians
    cover the pixel. owner: each Gaussian's source view (``pixel_gaussians.source_views``; -1 for
    none, e.g. the backdrop, which then renders no view)."""
    from diff3r_cli.depth.pixel_gaussians import source_views
    from diff3r_cli.render import render

    v = len(cameras)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    with torch.no_grad():
        if owner is None:
            owner = source_views(g, cameras)
        ds, cov = [], []
        for i in range(v):
            gi = g[(owner >= 0) & (owner != i)]
            img = images[i].to(g.means)
            if gi.num == 0:
                ds.append(torch.zeros(img.shape[:2], dtype=img.dtype, device=img.device))
                cov.append(torch.zeros(img.shape[:2], dtype=torch.bool, device=img.device))
                continue
            out = render(gi, cameras[i:i + 1], backend=backend)
            alpha = out.alpha[0].to(img)
            covered = alpha > COVER
            # colour of the covering Gaussians, not dimmed where they cover only part of the pixel
            rgb = out.rgb[0].to(img) / alpha.clamp_min(COVER)[..., None]
            gain = _robust_gain(rgb[covered], img[covered])
            # averaged over the covered pixels of the window only: an uncovered neighbour has nothing
            # to compare with and must not raise the difference at the edge of the other views' frame
            c = covered.to(img.dtype)
            d_sum, c_sum = box_mean(torch.stack([(rgb * gain - img).abs().mean(-1) * c, c]), window)
            ds.append(d_sum / c_sum.clamp_min(1e-6) * c)
            cov.append(covered)
    return torch.stack(ds), torch.stack(cov)


def pixel_confidence(g: Gaussians, cameras: Cameras, images: torch.Tensor, tau: float = TAU,
                     window: int = WINDOW, backend: str = "auto", owner: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """(V,H,W) weights in (0,1] of the context photos' pixels for the TTO's photometric term: low where
    the other views' Gaussians contradict the photo (see the module docstring). owner: see
    :func:`cross_view_difference` (needed once TTO has moved the Gaussians off their pixel rays)."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    d, covered = cross_view_difference(g, cameras, images, owner=owner, window=window, backend=backend)
    w = 1.0 / (1.0 + (d / tau) ** 2)
    return torch.where(covered, w, torch.ones_like(w))


def settled_confidence(g0: Gaussians, cameras: Cameras, images: torch.Tensor, prepass: int = PREPASS_STEPS,
                       compensation: str = "auto", backend: str = "auto"
                       ) -> tuple[torch.Tensor, Gaussians, torch.Tensor]:
    """(owner, θ1, pixel weights): each Gaussian's source view (``pixel_gaussians.source_views`` of θ0),
    θ0 after ``prepass`` plain TTO steps, and the pixel confidences measured on θ1 (see
    :func:`confident_start` for why after a pre-pass)."""
    from diff3r_cli.depth.pixel_gaussians import source_views

    with torch.no_grad():
        owner = source_views(g0, cameras)
    g1 = g0
    if prepass > 0:
        from diff3r_cli.optim.tto import optimize

        g1, _ = optimize(g0, None, cameras, images, int(prepass), backend=backend, compensation=compensation)
    return owner, g1, pixel_confidence(g1, cameras, images, backend=backend, owner=owner)


def confident_start(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                    drop: bool = True, prepass: int = PREPASS_STEPS, compensation: str = "auto",
                    backend: str = "auto", head: Optional["AnchorHead"] = None
                    ) -> tuple[Gaussians, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(θ0, Λ, pixel weights, kept) for a TTO that trusts each context pixel as far as the other views
    confirm it: the weights come from the Gaussians after ``prepass`` plain TTO steps (θ0's own
    geometry errors make the views disagree on clean photos too; a short fit settles those, while
    what only one photo shows stays contradicted); with ``drop``, θ0 (and Λ) without the pixel
    Gaussians predicted from contradicted pixels. kept: (N,) bool over the given Gaussians.
    head (with Λ): an anchor head (``anchor_head.py``) re-ranks Λ across the Gaussians from what the
    pre-pass and the weights show."""
    owner, g, w = settled_confidence(g0, cameras, images, prepass, compensation, backend)
    if head is not None and lam is not None:
        from diff3r_cli.depth.anchor_head import anchor_features, rerank

        with torch.no_grad():
            feats = anchor_features(g0, g, cameras, images, w, owner=owner, backend=backend)
            lam = rerank(lam, head(feats.to(next(head.parameters()).device)).to(lam.device))
    keep = torch.ones(len(g0), dtype=torch.bool, device=g0.means.device)
    if drop:
        keep = ~contradicted(g0, cameras, w, owner=owner)
        g0 = g0[keep]
        lam = None if lam is None else lam[keep]
    return g0, lam, w, keep


def contradicted(g: Gaussians, cameras: Cameras, weights: torch.Tensor, threshold: float = 0.5,
                 owner: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N,) bool: pixel Gaussians whose own pixel's confidence is below ``threshold`` (what they were
    predicted from, the other views contradict); False for Gaussians of no view (the backdrop)."""
    from diff3r_cli.depth.pixel_gaussians import project_to_view, source_views

    out = torch.zeros(len(g), dtype=torch.bool, device=g.means.device)
    with torch.no_grad():
        owner = source_views(g, cameras) if owner is None else owner
        for j in range(len(cameras)):
            sel = (owner == j).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            _, u, v, _ = project_to_view(g.means[sel], cameras, j)
            col = u.floor().long().clamp(0, cameras.width - 1)
            row = v.floor().long().clamp(0, cameras.height - 1)
            out[sel] = weights[j].to(out.device)[row, col] < threshold
    return out


__all__ = ["COVER", "MIN_STEPS", "PREPASS_STEPS", "TAU", "WINDOW", "confident_start", "contradicted", "cross_view_difference",
           "pixel_confidence", "settled_confidence"]
