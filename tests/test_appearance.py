"""Per-view exposure / white-balance compensation in TTO (issue 23) on tiny synthetic scenes."""

from __future__ import annotations

import torch

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.appearance import SPREAD_ON, apply_appearance, decide, exposure_spread
from diff3r_cli.optim.tto import optimize
from diff3r_cli.render import render

from optim_scenes import blobs, plane_pixels, two_cameras

SIZE = 12
GAIN = torch.tensor([1.3, 0.85, 1.1], dtype=torch.float64)
BIAS = torch.tensor([0.03, -0.02, 0.0], dtype=torch.float64)


def _scene():
    """Two views of the same blobs photographed at two exposures / white balances whose mean is the
    identity (the gauge: the splat keeps the context views' mean exposure)."""
    cams = two_cameras(SIZE)
    gt = blobs(6, seed=2)
    clean = render(gt, cams).rgb.detach()
    shot = clean.clone()
    shot[0] = clean[0] * (2 - GAIN) - BIAS
    shot[1] = clean[1] * GAIN + BIAS
    return cams, gt, clean, shot


def _twice(g: Gaussians) -> Gaussians:
    """The Gaussians once per view (view-major blocks), as a pixel-aligned predictor returns them."""
    return Gaussians(*(torch.cat([t, t]) for t in g.tensors()))


def test_compensation_recovers_a_known_affine_change():
    cams, gt, clean, shot = _scene()
    lam = torch.full((gt.num, 5), 10.0, dtype=torch.float64)  # a confident prediction: the splat stays put
    g, hist = optimize(gt, lam, cams, shot, 100, compensation="on")
    a = hist[-1]["appearance"]
    assert hist[-1]["compensation"]["on"]
    gain, bias = a[:, :3], a[:, 3:]
    assert torch.allclose(gain[0], 2 - GAIN, atol=0.03), a[0]
    assert torch.allclose(bias[0], -BIAS, atol=0.02), a[0]
    assert torch.allclose(gain[1], GAIN, atol=0.03), a[1]
    assert torch.allclose(bias[1], BIAS, atol=0.02), a[1]
    # not baked into the splat: identity renders still match the clean photos
    assert float((render(g, cams).rgb - clean).abs().max()) < 0.02
    # the context view re-rendered with its transform matches its photo
    assert float((apply_appearance(render(g, cams).rgb, a) - shot).abs().mean()) < 0.01
    # without compensation TTO cannot explain the two exposures
    _, plain = optimize(gt, lam, cams, shot, 100, compensation="off")
    assert "appearance" not in plain[-1]
    assert hist[-1]["photometric"] < 0.1 * plain[-1]["photometric"]


def test_snapshots_split_the_gaussians_from_the_transforms():
    cams, gt, _, shot = _scene()
    seen = []
    g, hist = optimize(gt, None, cams, shot, 4, compensation="on", snapshots={2, 4},
                       progress=lambda rec: seen.append(rec.get("theta") is not None))
    assert hist[2]["theta"].numel() == gt.flatten().numel() and hist[2]["appearance"].shape == (2, 6)
    assert torch.equal(g.flatten(), hist[4]["theta"]) and seen == [False, False, True, False, True]


def test_auto_switches_on_only_where_exposures_differ():
    cams, gt, clean, shot = _scene()
    g2 = _twice(gt)
    assert exposure_spread(g2, cams, clean) < 0.01
    assert exposure_spread(g2, cams, shot) > 0.3
    assert decide("auto", g2, cams, shot) == (True, exposure_spread(g2, cams, shot))
    on, spread = decide("auto", g2, cams, clean)
    assert not on and spread < SPREAD_ON
    assert decide("off", g2, cams, shot) == (False, None) and decide("on", g2, cams, clean) == (True, None)


def test_lm_optimises_the_transforms_too():
    cams, gt, _, shot = _scene()
    lam = torch.full((gt.num, 5), 10.0, dtype=torch.float64)
    _, hist = optimize(gt, lam, cams, shot, 5, optimizer="lm", compensation="on")
    a = hist[-1]["appearance"]
    assert torch.allclose(a[1, :3], GAIN, atol=0.02) and torch.allclose(a[1, 3:], BIAS, atol=0.01), a


def test_spread_after_fusion_attributes_gaussians_to_their_views():
    """Fusion drops some pixel Gaussians, so the view-major blocks are no longer V·H·W long (and N may
    be odd): the views are found by projection, and the spread is the one measured before fusion."""
    from diff3r_cli.depth.pixel_gaussians import source_views

    cams = two_cameras(16)
    ones = torch.ones(3, dtype=torch.float64)
    clean_g, owner = plane_pixels(cams, [ones, ones])
    clean = render(clean_g, cams).rgb.detach()
    shot_g, _ = plane_pixels(cams, [ones, GAIN])  # view 1's Gaussians carry its exposure
    shot = clean.clone()
    shot[1] = clean[1] * GAIN
    keep = torch.ones(len(owner), dtype=torch.bool)
    keep[:16 * 5 + 3] = False  # 83 of view 0's Gaussians dropped: unequal blocks, N odd
    assert torch.equal(source_views(shot_g[keep], cams), owner[keep])
    full = exposure_spread(shot_g, cams, shot)
    assert full > 0.3
    assert abs(exposure_spread(shot_g[keep], cams, shot) - full) < 0.1 * full
    assert exposure_spread(clean_g[keep], cams, clean) < SPREAD_ON


def test_an_exposure_common_to_every_view_goes_to_the_splat_not_the_transforms():
    """A gain shared by all views trades against the splat colours at no cost in the photos; the
    transforms are centred over the views, so that common mode stays in the splat (novel views
    render with the identity: a drifting common gain would shift their exposure)."""
    cams = two_cameras(SIZE)
    gt = blobs(6, seed=2)
    brighter = (render(gt, cams).rgb.detach() * 1.25).clamp(0, 1)
    g, hist = optimize(gt, None, cams, brighter, 150, compensation="on")
    a = hist[-1]["appearance"]
    assert torch.allclose(a[:, :3].mean(0), torch.ones(3, dtype=a.dtype), atol=1e-6)
    assert a[:, 3:].mean(0).abs().max() < 1e-6
    # the splat took the brighter exposure: identity renders are as bright as the photos (the
    # blobs sit on black, so compare total brightness, not a mean over mostly empty pixels; with
    # the drifting common mode of the uncentred transforms it was 0.89)
    ratio = float(render(g, cams).rgb.sum() / brighter.sum())
    assert abs(ratio - 1) < 0.03, ratio


def test_spread_ignores_the_backdrop():
    """The depth stage appends a backdrop (not pixel Gaussians, owned by no view): the views are
    still compared with the other views' Gaussians only, so the spread is the one without it
    (with the backdrop in every render each view half-reproduced its own exposure: 0.02 vs 0.47)."""
    from diff3r_cli.depth.backdrop import backdrop

    cams = two_cameras(16)
    ones = torch.ones(3, dtype=torch.float64)
    clean_g, _ = plane_pixels(cams, [ones, ones])
    clean = render(clean_g, cams).rgb.detach()
    shot_g, _ = plane_pixels(cams, [ones, GAIN])
    shot = clean.clone()
    shot[1] = clean[1] * GAIN
    b = backdrop(shot_g, cams, shot)
    with_b = Gaussians(*(torch.cat([x, y]) for x, y in zip(shot_g.tensors(), b.tensors())))
    full = exposure_spread(shot_g, cams, shot)
    assert abs(exposure_spread(with_b, cams, shot) - full) < 0.1 * full
