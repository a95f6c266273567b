"""Which pixel Gaussians another context view sees (depth/covisible.py), against a per-point loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from diff3r_cli.depth import COVISIBLE_SCALE, anchor_weights, covisible

sys.path.insert(0, str(Path(__file__).parent))
from optim_scenes import pixel_aligned, two_cameras  # noqa: E402


def _both_views(cams):
    """Pixel Gaussians of view 0 and of view 1 (view-major), each at depth ≈ 3 in its own camera."""
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.gaussians import Gaussians

    a = pixel_aligned(cams, seed=0)
    flipped = Cameras(cams.K.flip(0), cams.w2c.flip(0), cams.width, cams.height)
    b = pixel_aligned(flipped, seed=1)
    return Gaussians(*(torch.cat([x, y]) for x, y in zip(a.tensors(), b.tensors())))


def _brute_force(g, cams) -> np.ndarray:
    X = g.means.double().numpy()
    n = cams.width * cams.height
    out = np.zeros(len(X), dtype=bool)
    for k, x in enumerate(X):
        i = k // n
        for j in range(len(cams)):
            if j == i:
                continue
            w2c = cams.w2c[j].double().numpy()
            K = cams.K[j].double().numpy()
            p = w2c[:3, :3] @ x + w2c[:3, 3]
            if p[2] <= 1e-9:
                continue
            u, v = (K @ p)[:2] / p[2]
            out[k] |= 0 <= u < cams.width and 0 <= v < cams.height
    return out


def test_covisible_matches_a_per_point_projection():
    cams = two_cameras(16)  # each view's outer columns fall outside the other's frame
    g = _both_views(cams)
    seen = covisible(g, cams)
    ref = torch.from_numpy(_brute_force(g, cams))
    assert torch.equal(seen, ref)
    assert 0.5 < float(seen.float().mean()) < 0.95  # both kinds occur in the fixture


def test_anchor_scales_only_the_covisible_rows():
    lam = torch.rand(6, 5) + 0.5
    seen = torch.tensor([True, False, True, False, False, True])
    a = anchor_weights(lam, seen)
    assert torch.equal(a[~seen], lam[~seen])
    assert torch.allclose(a[seen], lam[seen] * COVISIBLE_SCALE)


def test_the_depth_stage_hands_tto_the_covisibility_anchor():
    """predict_matched's Λ is the network's rows scaled by COVISIBLE_SCALE exactly where another
    context view sees the Gaussian (the wiring `eval`'s +unc rows, `refine` and the .ply rely on)."""
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.engines.policy import DEFAULT_MODEL, normalised_range
    from diff3r_cli.model.io import load_model, resolve_model_path
    from test_depth_sweep import _cameras, _plane_scene

    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, truth = _plane_scene(cams)
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    # the model's learned calibration on top is tested in test_anchor_fit.py
    held = predict_matched(net, imgs, cams, near, far, "cpu", calibrate=False)
    raw = predict_matched(net, imgs, cams, near, far, "cpu", anchor=False)
    assert torch.equal(held.gaussians.means, raw.gaussians.means)
    seen = held.covisible
    assert 0.1 < float(seen.float().mean()) < 1.0  # both kinds occur on this fixture
    assert torch.equal(held.lam[~seen], raw.lam[~seen])
    assert torch.allclose(held.lam[seen], raw.lam[seen] * COVISIBLE_SCALE)
