"""The far backdrop behind the scene (depth/backdrop.py): placement against a per-cell projection,
colours against a float64 direct convolution, and what it does to a render with a hole."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.backdrop import BackdropConfig, backdrop, with_backdrop
from diff3r_cli.gaussians import SH_C0, Gaussians, rgb_to_sh_dc

sys.path.insert(0, str(Path(__file__).parent))


def _camera(w: int = 24, h: int = 16, f: float = 20.0) -> Cameras:
    K = torch.tensor([[[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)[None].clone()
    w2c[0, :3, 3] = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)  # not at the origin
    return Cameras(K, w2c, w, h)


def _wall(cams: Cameras, depth: float = 2.0, hole: tuple[slice, slice] | None = None) -> tuple[Gaussians, torch.Tensor]:
    """One opaque pixel Gaussian per pixel at z-depth ``depth`` (minus a hole) and the photo it shows."""
    h, w = cams.height, cams.width
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    img = torch.stack([xx / w, yy / h, 0.5 + 0 * xx], -1)             # a smooth ramp
    rays = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3) @ torch.linalg.inv(cams.K[0]).T
    c2w = torch.linalg.inv(cams.w2c[0])
    means = (rays * depth) @ c2w[:3, :3].T + c2w[:3, 3]
    keep = torch.ones(h, w, dtype=torch.bool)
    if hole is not None:
        keep[hole] = False
    keep = keep.reshape(-1)
    n = int(keep.sum())
    sigma = 0.7 * depth / float(cams.K[0, 0, 0])
    g = Gaussians(means[keep], torch.full((n, 3), math.log(sigma), dtype=torch.float64),
                  torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).repeat(n, 1),
                  torch.full((n,), 6.0, dtype=torch.float64), rgb_to_sh_dc(img.reshape(-1, 3)[keep])[:, None])
    return g, img[None]


def test_backdrop_cells_sit_on_their_rays_at_the_sheet_depth():
    cams = _camera()
    g, img = _wall(cams)
    cfg = BackdropConfig(cells=8, margin=0.25, depth_factor=3.0, min_cell=1.0)
    b = backdrop(g, cams, img, cfg)
    h, w = cams.height, cams.width
    step = max(h, w) / cfg.cells
    gh, gw, m = round(h / step), round(w / step), round(cfg.margin * cfg.cells)
    assert len(b) == (gh + 2 * m) * (gw + 2 * m)
    # reference: each cell centre, projected by hand in float64
    K, w2c = cams.K[0].numpy(), cams.w2c[0].numpy()
    zs = []
    for k, x in enumerate(b.means.numpy()):
        r, c = divmod(k, gw + 2 * m)
        p = w2c[:3, :3] @ x + w2c[:3, 3]
        u, v = (K @ p)[:2] / p[2]
        assert abs(u - (c - m + 0.5) * w / gw) < 1e-6 and abs(v - (r - m + 0.5) * h / gh) < 1e-6
        zs.append(p[2])
    assert np.allclose(zs, 3.0 * 2.0)  # depth_factor × the wall's (95th-percentile) depth
    # outside the frame on every side, and large (about a cell across at the sheet depth)
    assert np.allclose(np.exp(b.log_scales.numpy()), cfg.footprint * step * 6.0 / 20.0)


def test_backdrop_colours_are_a_blurred_photo():
    """Against a float64 direct convolution of the cell-averaged photo, borders replicated."""
    cams = _camera()
    g, img = _wall(cams)
    cfg = BackdropConfig(cells=12, margin=0.25, blur=0.2, min_cell=1.0)  # 2 px cells: exact averages
    b = backdrop(g, cams, img, cfg)
    h, w = cams.height, cams.width
    step = max(h, w) / cfg.cells
    gh, gw, m = round(h / step), round(w / step), round(cfg.margin * cfg.cells)
    low = img[0].numpy().reshape(gh, h // gh, gw, w // gw, 3).mean((1, 3))
    sig = cfg.blur * cfg.cells
    r = max(1, int(3 * sig))
    ref = np.zeros((gh + 2 * m, gw + 2 * m, 3))
    for i in range(gh + 2 * m):
        for j in range(gw + 2 * m):
            acc, wsum = np.zeros(3), 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    wt = math.exp(-(di * di + dj * dj) / (2 * sig * sig))
                    ii = min(max(i + di - m, 0), gh - 1)  # replicate the photo's border outward
                    jj = min(max(j + dj - m, 0), gw - 1)
                    acc += wt * low[ii, jj]
                    wsum += wt
            ref[i, j] = acc / wsum
    got = (0.5 + SH_C0 * b.sh[:, 0]).numpy().reshape(gh + 2 * m, gw + 2 * m, 3)
    assert np.abs(got - ref).max() < 1e-9


def test_backdrop_fills_a_hole_and_leaves_covered_pixels_alone():
    from diff3r_cli.render import render

    cams = _camera()
    g, img = _wall(cams, hole=(slice(2, 14), slice(5, 19)))
    full, lam, n = with_backdrop(g, torch.ones(len(g), 5, dtype=torch.float64), cams, img)
    assert n > 0 and len(full) == len(g) + n and torch.equal(full.means[:len(g)], g.means)
    before = render(g, cams, backend="torch")
    after = render(full, cams, backend="torch")
    hole = torch.zeros(cams.height, cams.width, dtype=torch.bool)
    hole[5:11, 8:16] = True                           # the hole's interior, away from its rim
    assert float(before.alpha[0][hole].max()) < 0.05  # black without the backdrop
    assert float(after.alpha[0][hole].min()) > 0.95   # filled with it
    err = (after.rgb[0][hole] - img[0][hole]).abs().mean()
    assert float(err) < 0.15                          # by roughly the local colour, not black
    solid = torch.zeros_like(hole)
    solid[:, :4] = True                               # far from the hole: the wall hides the backdrop
    assert torch.allclose(after.rgb[0][solid], before.rgb[0][solid], atol=2e-3)


def test_the_depth_stage_appends_the_backdrop_last():
    """predict_matched: the backdrop Gaussians come last, are never covisible and carry the median
    predicted Λ row; backdrop=False leaves the scene as it was."""
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.engines.policy import DEFAULT_MODEL, normalised_range
    from diff3r_cli.model.io import load_model, resolve_model_path
    from test_depth_sweep import _cameras, _plane_scene

    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0]])
    imgs, truth = _plane_scene(cams)
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    with_b = predict_matched(net, imgs, cams, near, far, "cpu", calibrate=False)  # calibration: test_anchor_fit.py
    bare = predict_matched(net, imgs, cams, near, far, "cpu", backdrop=False, calibrate=False)
    n = with_b.backdrop
    assert n > 0 and bare.backdrop == 0
    assert len(with_b.gaussians) == len(bare.gaussians) + n == len(with_b.lam) == len(with_b.covisible)
    assert torch.equal(with_b.gaussians.means[:-n], bare.gaussians.means)
    assert not bool(with_b.covisible[-n:].any())
    assert torch.allclose(with_b.lam[-n:], _median_row(net, imgs, cams, near, far).expand(n, -1))
    # network_depth: the first pass's own depth, at the range given (what the depth benchmarks report)
    from diff3r_cli.depth import view_depths
    from diff3r_cli.model.inference import predict_gaussians

    first, _ = predict_gaussians(net, imgs, cams, near, far, "cpu")
    assert torch.equal(bare.network_depth, view_depths(first, cams))


def _median_row(net, imgs, cams, near, far) -> torch.Tensor:
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.model.inference import predict_gaussians

    # the stage predicts twice when matching re-sets the range: the rows of the final range
    m = predict_matched(net, imgs, cams, near, far, "cpu", backdrop=False)
    _, lam = predict_gaussians(net, imgs, cams, m.near, m.far, "cpu")
    return lam.median(0).values


def test_each_view_gets_its_own_sheet_and_colours():
    """Two views with photos of different colours: each sheet lies on its own camera's rays and
    carries its own photo's colour (a view mix-up would swap them)."""
    from diff3r_cli.depth.pixel_gaussians import project_to_view

    one = _camera()
    w2c = one.w2c.repeat(2, 1, 1).clone()
    w2c[1, 0, 3] += 0.4                                   # the second camera 0.4 to the side
    cams = Cameras(one.K.repeat(2, 1, 1), w2c, one.width, one.height)
    g, _ = _wall(Cameras(one.K, one.w2c, one.width, one.height))
    imgs = torch.zeros(2, one.height, one.width, 3, dtype=torch.float64)
    imgs[0, ..., 0] = 0.9                                  # view 0 red, view 1 blue
    imgs[1, ..., 2] = 0.8
    b = backdrop(g, cams, imgs, BackdropConfig(min_cell=1.0))
    half = len(b) // 2
    rgb = 0.5 + SH_C0 * b.sh[:, 0]
    assert torch.allclose(rgb[:half], torch.tensor([0.9, 0.0, 0.0], dtype=torch.float64).expand(half, 3))
    assert torch.allclose(rgb[half:], torch.tensor([0.0, 0.0, 0.8], dtype=torch.float64).expand(half, 3))
    cfg = BackdropConfig(min_cell=1.0)
    h, w = one.height, one.width
    step = max(max(h, w) / cfg.cells, cfg.min_cell)
    gh, gw, m = round(h / step), round(w / step), round(cfg.margin * max(h, w) / step)
    ys = (torch.arange(gh + 2 * m, dtype=torch.float64) - m + 0.5) * (h / gh)
    xs = (torch.arange(gw + 2 * m, dtype=torch.float64) - m + 0.5) * (w / gw)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    for i, part in ((0, b.means[:half]), (1, b.means[half:])):
        _, u, v, _ = project_to_view(part, cams, i)        # its own camera: the cell grid exactly
        assert torch.allclose(u, xx.reshape(-1), atol=1e-6) and torch.allclose(v, yy.reshape(-1), atol=1e-6)
        _, u2, _, _ = project_to_view(part, cams, 1 - i)   # the other camera: shifted by the baseline
        assert float((u2 - xx.reshape(-1)).abs().min()) > 0.5
