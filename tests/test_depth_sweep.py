"""The classical depth stage (diff3r_cli.depth): ZNCC sweep, its gates, moving Gaussians along rays.

Reference scenes are analytic: a slanted textured plane seen by cameras with known poses, each
image computed exactly by intersecting every pixel's ray with the plane, so the true depth of each
pixel is known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth import sparse_depth_error, sweep_depth, view_depths, with_depths
from diff3r_cli.depth.sweep import box_mean
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.geometry import pixel_centres, unproject

H, W = 48, 64


def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A non-repeating RGB texture on the plane's (x, y) coordinates: random values on a 0.05-unit
    grid, bicubically interpolated (so every window is distinctive), in [0, 1]."""
    g = torch.Generator().manual_seed(3)
    tex = torch.rand(1, 3, 96, 96, generator=g, dtype=torch.float64)
    grid = torch.stack([x / 2.4, y / 2.4], -1).reshape(1, 1, -1, 2)   # plane x, y in [-2.4, 2.4] -> [-1, 1]
    col = F.grid_sample(tex, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return col[0, :, 0].T.clamp(0, 1)


def _cameras(centres: list[list[float]], f: float = 60.0) -> Cameras:
    """Cameras at the given centres, all looking down +z (OpenCV axes)."""
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64).expand(len(centres), 3, 3)
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(centres), 1, 1)
    w2c[:, :3, 3] = -torch.tensor(centres, dtype=torch.float64)
    return Cameras(K.clone(), w2c, W, H)


def _plane_scene(cams: Cameras, z0: float = 4.0, slope: float = 0.15, flat: bool = False):
    """Images (V,H,W,3) of the plane z = z0 + slope·x and each view's exact z-depth (V,H,W)."""
    imgs, depths = [], []
    p = pixel_centres(H, W, dtype=torch.float64)
    for i in range(len(cams)):
        c = cams.centers[i]
        d = torch.linalg.inv(cams.K[i]) @ p                   # camera rays (z = 1); R = I
        # c_z + t = z0 + slope·(c_x + t·d_x)  ->  t
        t = (z0 + slope * c[0] - c[2]) / (1 - slope * d[0])
        x, y = c[0] + t * d[0], c[1] + t * d[1]
        col = torch.full((H * W, 3), 0.5, dtype=torch.float64) if flat else _texture(x, y)
        imgs.append(col.reshape(H, W, 3))
        depths.append(t.reshape(H, W))
    return torch.stack(imgs).float(), torch.stack(depths).float()


def test_box_filter_matches_avg_pool_with_clipped_windows():
    x = torch.rand(3, 19, 27, dtype=torch.float64)
    ref = F.avg_pool2d(x[:, None], 7, stride=1, padding=3, count_include_pad=False)[:, 0]
    assert torch.allclose(box_mean(x, 7), ref, atol=1e-12)


def test_sweep_recovers_the_depth_of_a_slanted_plane_from_a_wrong_guess():
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, depth = _plane_scene(cams)
    guess = depth * 1.5                                        # 50 % too far, everywhere
    res = sweep_depth(imgs, cams, guess)
    assert res.accepted_fraction > 0.6
    rel = ((res.depth - depth).abs() / depth)[res.valid]
    assert float(rel.median()) < 0.01, float(rel.median())
    assert float((rel > 0.05).float().mean()) < 0.02          # rare misses (at the other views' frame edges)
    # rejected pixels keep the guess
    assert torch.equal(res.depth[~res.valid], guess[~res.valid])


def test_sweep_works_from_a_guess_too_near_and_with_two_views():
    cams = _cameras([[0.0, 0, 0], [0.6, 0.0, 0]])
    imgs, depth = _plane_scene(cams, z0=3.0, slope=-0.2)
    res = sweep_depth(imgs, cams, depth * 0.6)
    assert res.accepted_fraction > 0.4
    assert float(((res.depth - depth).abs() / depth)[res.valid].median()) < 0.01


def test_gates_reject_textureless_views_and_a_zero_baseline():
    cams = _cameras([[0.0, 0, 0], [0.5, 0, 0]])
    flat, depth = _plane_scene(cams, flat=True)
    res = sweep_depth(flat, cams, depth * 1.3)
    assert res.accepted_fraction == 0.0
    faint = 0.5 + 0.02 * (_plane_scene(cams)[0] - 0.5)         # texture too faint to trust (std < 0.02)
    assert sweep_depth(faint, cams, depth * 1.3).accepted_fraction == 0.0
    for baseline in (0.0, 0.003):                              # none, or a shift < 1 px for ±10 % depth
        near_same = _cameras([[0.0, 0, 0], [baseline, 0, 0]])
        imgs, depth = _plane_scene(near_same)
        res = sweep_depth(imgs, near_same, depth * 1.3)
        assert res.accepted_fraction == 0.0                    # no parallax: depth is not observable
        assert torch.equal(res.depth, depth * 1.3)


def test_sweep_rejects_bad_shapes():
    cams = _cameras([[0.0, 0, 0], [0.5, 0, 0]])
    imgs, depth = _plane_scene(cams)
    with pytest.raises(ValueError):
        sweep_depth(imgs[:1], cams[:1], depth[:1])
    with pytest.raises(ValueError):
        sweep_depth(imgs, cams, depth[:, :-1])


def _pixel_gaussians(cams: Cameras, depth: torch.Tensor) -> Gaussians:
    v = len(cams)
    pix = pixel_centres(H, W, dtype=torch.float64)
    means = unproject(cams.K, cams.c2w, pix, depth.double().reshape(v, -1)).reshape(-1, 3)
    n = means.shape[0]
    return Gaussians(means, torch.full((n, 3), -3.0, dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]]).double()
                     .expand(n, 4).clone(), torch.zeros(n, dtype=torch.float64), torch.zeros(n, 1, 3, dtype=torch.float64))


def test_with_depths_moves_gaussians_along_their_rays_and_scales_them():
    cams = _cameras([[0.0, 0, 0], [0.5, 0.1, -0.2]])
    cams = Cameras(cams.K, cams.w2c.clone(), W, H)
    # a rotated second camera, so the ray direction is not the world z axis
    a = math.radians(20)
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    cams.w2c[1, :3, :3] = R
    cams.w2c[1, :3, 3] = -R @ torch.tensor([0.5, 0.1, -0.2], dtype=torch.float64)
    d = torch.rand(2, H, W, dtype=torch.float64) * 3 + 1
    g = _pixel_gaussians(cams, d)
    assert torch.allclose(view_depths(g, cams), d, atol=1e-9)
    new = d * torch.exp(torch.randn(2, H, W, dtype=torch.float64) * 0.2)
    g2 = with_depths(g, cams, new)
    assert torch.allclose(view_depths(g2, cams), new, atol=1e-9)
    for i in range(2):                                          # same pixels
        uv1, _ = cams[i:i + 1].project(g.means.reshape(2, -1, 3)[i])
        uv2, _ = cams[i:i + 1].project(g2.means.reshape(2, -1, 3)[i])
        assert torch.allclose(uv1, uv2, atol=1e-7)
    assert torch.allclose(g2.log_scales - g.log_scales, torch.log(new / d).reshape(-1, 1).expand(-1, 3), atol=1e-9)


def test_sparse_depth_error_is_zero_on_the_truth_and_sees_a_bias():
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0]])
    _, depth = _plane_scene(cams)
    g = _pixel_gaussians(cams, depth)
    pts = g.means[:: 37]
    # points sit at pixel centres of view 0; in view 1 they fall between pixels (a plane: small error)
    e = sparse_depth_error(depth[:1], cams[:1], pts)
    assert e["count"] > 0 and e["median"] < 1e-5
    e = sparse_depth_error(depth * 1.1, cams, pts)
    assert abs(e["bias"] - 0.1) < 0.01 and abs(e["median"] - 0.1) < 0.01


def test_floaters_are_the_gaussians_in_front_of_another_views_matched_surface():
    from diff3r_cli.depth import floaters, match_depth

    cams = _cameras([[0.0, 0, 0], [0.3, 0.0, 0]])
    imgs, depth = _plane_scene(cams)
    valid = torch.ones_like(depth, dtype=torch.bool)
    assert not floaters(_pixel_gaussians(cams, depth), cams, depth, valid).any()    # consistent views
    moved = depth.clone()
    moved[1, 10:20, 20:30] *= 0.7                                  # a patch of view 1 pulled forward
    moved[1, 30:40, 20:30] *= 0.98                                 # within the margin: kept
    moved[1, 0:5, 0:5] *= 1.5                                      # behind the surface: not a floater
    bad = floaters(_pixel_gaussians(cams, moved), cams, depth, valid).reshape(2, H, W)
    assert bad[1, 10:20, 20:30].all() and bad.sum() == 100
    assert not floaters(_pixel_gaussians(cams, moved), cams, depth, torch.zeros_like(valid)).any()  # no evidence
    # the pipeline stage: a patch of view 1 too flat to match keeps its wrong depth, and views 0
    # and 2, which match the surface there, have it dropped (with its Λ rows)
    cams3 = _cameras([[0.0, 0, 0], [0.5, 0.0, 0], [-0.5, 0.02, 0]])
    imgs3, depth3 = _plane_scene(cams3)
    imgs3[1, 10:30, 20:40] = 0.5
    moved3 = depth3.clone()
    moved3[1, 10:30, 20:40] *= 0.7
    g = _pixel_gaussians(cams3, moved3)
    lam = torch.arange(len(g), dtype=torch.float64)[:, None].expand(-1, 5).clone()
    g2, lam2, acc = match_depth(g, lam, imgs3, cams3)
    kept = lam2[:, 0].long()
    dropped = torch.ones(len(g), dtype=torch.bool)
    dropped[kept] = False
    assert len(g2) == len(lam2) and acc > 0.4
    assert dropped.reshape(3, H, W)[1, 14:26, 24:36].all()         # the flat patch's floaters
    assert float(dropped.float().mean()) < 0.1
    assert torch.equal(kept, kept.unique())                        # rows kept in order, once


def _despeckle_reference(x, valid, image, window, tol, gate, step=1):
    """Pixel by pixel, in float64: the lower median of the valid, similar-coloured neighbours at
    offsets that are multiples of ``step`` within the window, replacing a valid pixel that is more
    than tol away from it."""
    h, w = x.shape
    r = window // 2 // step * step
    out = x.clone().double()
    for y in range(h):
        for c in range(w):
            vals = []
            for dy in range(-r, r + 1, step):
                for dx in range(-r, r + 1, step):
                    yy, cc = y + dy, c + dx
                    inside = 0 <= yy < h and 0 <= cc < w
                    ys, cs = min(max(yy, 0), h - 1), min(max(cc, 0), w - 1)
                    # padding: depth and colour replicate the edge, validity is zero outside
                    if not inside:
                        continue
                    if valid[ys, cs] and float((image[ys, cs].double() - image[y, c].double()).abs().mean()) < gate:
                        vals.append(float(x[ys, cs]))
            if valid[y, c] and vals:
                vals.sort()
                med = vals[(len(vals) - 1) // 2]
                if abs(float(x[y, c]) - med) > tol:
                    out[y, c] = med
    return out


def test_despeckle_matches_a_pixel_by_pixel_reference():
    from diff3r_cli.depth.sweep import despeckle

    g = torch.Generator().manual_seed(5)
    x = 0.05 * torch.randn(13, 11, generator=g, dtype=torch.float64)
    valid = torch.rand(13, 11, generator=g) > 0.3
    image = torch.rand(13, 11, 3, generator=g, dtype=torch.float64) * 0.3
    for rows in (4, 16):  # chunk boundaries must not matter
        got = despeckle(x, valid, image, 5, tol=0.03, gate=0.12, rows=rows)
        ref = _despeckle_reference(x, valid, image, 5, tol=0.03, gate=0.12)
        assert torch.allclose(got, ref, atol=0, rtol=0), (got - ref).abs().max()
    assert not torch.equal(got, x)  # the case does replace some pixels
    # a window wider than the sample grid: every 4th pixel of a 9-px window (offsets -4, 0, 4),
    # and every 2nd of an 11-px one allowed 6 samples a side (5 used, -4 ... 4: the grid stays centred)
    for window, samples, step in ((9, 3, 4), (11, 6, 2)):
        got = despeckle(x, valid, image, window, tol=0.03, gate=0.12, samples=samples, rows=5)
        ref = _despeckle_reference(x, valid, image, window, tol=0.03, gate=0.12, step=step)
        assert torch.allclose(got, ref, atol=0, rtol=0), (window, (got - ref).abs().max())
    with pytest.raises(ValueError, match="odd"):
        despeckle(x, valid, image, 4)


def test_despeckle_removes_speckle_and_keeps_a_thin_structure_of_its_own_colour():
    from diff3r_cli.depth.sweep import despeckle

    g = torch.Generator().manual_seed(6)
    x = torch.full((40, 40), math.log(4.0), dtype=torch.float64)
    image = torch.full((40, 40, 3), 0.5, dtype=torch.float64)
    image += 0.02 * torch.rand(40, 40, 3, generator=g, dtype=torch.float64)  # texture, within the gate
    x[:, 17:20] = math.log(2.0)              # a pole, 3 px wide, twice as near, in its own colour
    image[:, 17:20] = torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64)
    valid = torch.ones(40, 40, dtype=torch.bool)
    noisy = x.clone()
    spikes = torch.rand(40, 40, generator=g) < 0.1
    spikes[:, 17:20] = False
    noisy[spikes] += 0.3 * torch.randn(int(spikes.sum()), generator=g, dtype=torch.float64)
    out = despeckle(noisy, valid, image, 11)
    # the spikes beyond the tolerance take the surface's depth back, the small ones stay; the pole stays
    expect = torch.where((noisy - x).abs() > 0.03, x, noisy)
    assert int(((noisy - x).abs() > 0.03).sum()) > 100
    assert torch.equal(out, expect)
    # without the colour gate the pole is a minority in every window and is flattened onto the wall
    flat = despeckle(noisy, valid, image, 11, gate=10.0)
    assert bool((flat[:, 17:20] == math.log(4.0)).all())
    # invalid pixels neither vote nor move
    keep = valid.clone()
    keep[5, 5] = False
    out2 = despeckle(noisy, keep, image, 11)
    assert out2[5, 5] == noisy[5, 5]
    # confident matches (keep) stay as they are, the others are still mended
    confident = spikes & (torch.rand(40, 40, generator=g) < 0.5)
    out3 = despeckle(noisy, valid, image, 11, keep=confident)
    assert torch.equal(out3, torch.where(confident, noisy, expect))
    assert int((confident & ((noisy - x).abs() > 0.03)).sum()) > 20


def test_sweep_despeckle_is_what_the_default_config_runs(monkeypatch):
    from diff3r_cli.depth import sweep as sweep_mod
    from diff3r_cli.depth.sweep import SweepConfig

    calls = []
    real = sweep_mod.despeckle

    kept = []

    def spy(log_depth, valid, image, window, tol, gate, **kw):
        calls.append((window, tol, gate, kw["samples"], image.shape))
        kept.append(kw["keep"])
        return real(log_depth, valid, image, window, tol, gate, **kw)

    monkeypatch.setattr(sweep_mod, "despeckle", spy)
    cams = _cameras([[0.0, 0, 0], [0.4, 0, 0], [-0.3, 0.2, 0]])
    imgs, depth = _plane_scene(cams)
    on = sweep_depth(imgs, cams, depth * 1.3)
    # once per view, window 13 % of the short side (48 px -> 6.2 -> the odd 7), read on at most 9×9
    # samples, on that view's photo
    assert calls == [(7, 0.03, 0.1, 9, (H, W, 3))] * 3
    # the sweep's confident matches are kept: those with ZNCC >= 0.9
    assert all(torch.equal(k, on.score[i] >= 0.9) for i, k in enumerate(kept))
    assert any(bool(k.any()) and not bool(k.all()) for k in kept)
    off = sweep_depth(imgs, cams, depth * 1.3, SweepConfig(despeckle=0))
    assert len(calls) == 3 and torch.equal(on.valid, off.valid)
    rel_on = ((on.depth - depth).abs() / depth)[on.valid]
    rel_off = ((off.depth - depth).abs() / depth)[off.valid]
    assert float(rel_on.quantile(0.99)) <= float(rel_off.quantile(0.99)) + 1e-6
    assert float(rel_on.median()) < 0.01
