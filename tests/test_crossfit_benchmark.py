"""benchmarks/crossfit_rank.py: each Gaussian's "other view alone" change must come from the fit of the
view that did not predict it, and its "own view alone" change from the fit of its own view."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import crossfit_rank  # noqa: E402
import diff3r_cli.optim.tto as tto  # noqa: E402
from diff3r_cli.gaussians import Gaussians  # noqa: E402
from diff3r_cli.render import render  # noqa: E402

from optim_scenes import plane_pixels, two_cameras  # noqa: E402


def test_other_and_own_changes_come_from_the_right_single_view_fits(monkeypatch):
    cams = two_cameras(12)
    ones = torch.ones(3, dtype=torch.float64)
    g0, owner = plane_pixels(cams, [ones, ones])
    photos = render(g0, cams).rgb.detach()
    fitted = []

    def fake_optimize(g, lam, one, images, steps, **kw):
        # fitting view v shifts every colour by 0.1·(v+1): the colour group's change is (0.1·(v+1))²
        v = 0 if torch.equal(one.w2c[0], cams.w2c[0]) else 1
        fitted.append(v)
        return Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh + 0.1 * (v + 1)), []

    monkeypatch.setattr(tto, "optimize", fake_optimize)
    x = crossfit_rank.crossfit_features(g0, cams, photos)
    assert sorted(fitted) == [0, 1] and x.shape == (g0.num, 10)
    colour = 4  # GROUPS: mean, scale, rotation, opacity, colour
    diff = x[:, colour] - x[:, 5 + colour]  # other − own; the two columns share their median (equal halves)
    assert int((owner == 0).sum()) == int((owner == 1).sum())
    assert torch.allclose(diff[owner == 0], torch.full_like(diff[owner == 0], math.log(4.0)), atol=1e-4)
    assert torch.allclose(diff[owner == 1], torch.full_like(diff[owner == 1], -math.log(4.0)), atol=1e-4)
