"""benchmarks/headroom.py's oracle and grid: what the +unc row is handed when the corruption masks
are known (weight 0 on them, their Gaussians dropped) and when Λ is scaled."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import headroom  # noqa: E402
from diff3r_cli.depth.consistency import confident_start  # noqa: E402
from diff3r_cli.render import render  # noqa: E402

from optim_scenes import plane_pixels, two_cameras  # noqa: E402


def _spy(monkeypatch) -> list[dict]:
    seen: list[dict] = []

    def fake_optimize(g, lam, cams, images, steps, **kw):
        seen.append({"n": g.num, "lam": lam.clone(), "w": kw["pixel_weights"].clone()})
        return g, []

    monkeypatch.setattr(headroom, "optimize", fake_optimize)
    monkeypatch.setattr(headroom, "target_psnr", lambda g, views: 0.0)
    return seen


def test_the_mask_oracle_zeroes_the_masked_pixels_and_drops_their_gaussians(monkeypatch):
    cams = two_cameras(16)
    ones = torch.ones(3, dtype=torch.float64)
    g0, owner = plane_pixels(cams, [ones, ones])
    photos = render(g0, cams).rgb.detach()
    lam = torch.ones(g0.num, 5, dtype=torch.float64)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 4:8, 5:10] = True  # 20 pixels of view 0
    seen = _spy(monkeypatch)
    headroom.plus_unc(g0, lam, cams, photos, None, None, 1, masks=masks)
    _, _, w_plain, _ = confident_start(g0, lam, cams, photos, drop=False)
    got = seen[-1]
    assert float(got["w"][masks].abs().max()) == 0.0
    assert torch.allclose(got["w"][~masks], w_plain[~masks])
    assert got["n"] == g0.num - 20 and len(got["lam"]) == got["n"]


def test_the_strength_grid_scales_lambda_and_nothing_else(monkeypatch):
    cams = two_cameras(12)
    ones = torch.ones(3, dtype=torch.float64)
    g0, _ = plane_pixels(cams, [ones, ones])
    photos = render(g0, cams).rgb.detach()
    lam = torch.rand(g0.num, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    seen = _spy(monkeypatch)
    headroom.plus_unc(g0, lam, cams, photos, None, None, 1, scales=(0.5, 2.0))
    assert len(seen) == 2 and seen[0]["n"] == seen[1]["n"] == g0.num
    assert torch.allclose(seen[1]["lam"], 4 * seen[0]["lam"]) and torch.allclose(seen[0]["lam"], 0.5 * lam)
    assert torch.equal(seen[0]["w"], seen[1]["w"])
