"""The anchor head: per-Gaussian features, the Λ re-ranking, its file, and the fit (issue 20 item 6)."""

from __future__ import annotations

import math

import pytest
import torch

from diff3r_cli.depth.anchor_head import (FEATURES, AnchorHead, anchor_features, load_anchor_head, rerank,
                                          save_anchor_head)
from diff3r_cli.errors import UserError

from optim_scenes import plane_pixels, two_cameras


def _col(name: str) -> int:
    return FEATURES.index(name)


def _scene(size: int = 12):
    cams = two_cameras(size)
    g, owner = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    from diff3r_cli.render import render

    photos = render(g, cams).rgb.detach()
    return cams, g, owner, photos


def test_rerank_keeps_the_geometric_mean_and_follows_the_head():
    gen = torch.Generator().manual_seed(0)
    lam = torch.rand(50, 5, generator=gen, dtype=torch.float64) * 10 + 0.1
    y = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    out = rerank(lam, y)
    assert torch.allclose(out.log().mean(0), lam.log().mean(0))
    # the ratio to Λ falls as the predicted displacement grows, in every group
    ratio = (out / lam).log()
    for g in range(5):
        order = y[:, g].argsort()
        assert bool((ratio[order, g].diff() < 0).all())
    assert torch.allclose(rerank(lam, y, strength=0.0), lam)
    assert torch.allclose(rerank(lam, torch.zeros_like(y)), lam)
    with pytest.raises(ValueError, match="shape"):
        rerank(lam, y[:10])


def test_features_read_each_gaussians_own_pixel():
    cams, g, owner, photos = _scene()
    v, h, w = photos.shape[:3]
    # a weight map with a distinct value per pixel: each pixel Gaussian must read its own pixel's
    weights = torch.arange(v * h * w, dtype=torch.float64).reshape(v, h, w) / (v * h * w)
    f = anchor_features(g, g, cams, photos, weights)
    assert f.shape == (len(g), len(FEATURES)) and bool(torch.isfinite(f).all())
    assert torch.allclose(f[:, _col("confidence")].double(), weights.reshape(-1), atol=1e-6)
    assert bool((f[:, _col("backdrop")] == 0).all())
    # the two views overlap: some of each view's Gaussians fall in the other's frame, not all
    cov = f[:, _col("covisible")]
    assert 0 < float(cov[owner == 0].mean()) < 1 and 0 < float(cov[owner == 1].mean()) < 1
    # a pre-pass that moved nothing
    assert bool((f[:, _col("prepass_log_depth_change")] == 0).all())
    assert bool((f[:, _col("prepass_opacity_change")] == 0).all())


def test_features_see_a_depth_step_and_what_the_prepass_moved():
    cams, g, owner, photos = _scene()
    h, w = photos.shape[1:3]
    weights = torch.ones(photos.shape[:3], dtype=torch.float64)
    g1 = g.clone()
    # pull one Gaussian of view 0 (row 5, column 6) halfway towards its camera
    i = 5 * w + 6
    c0 = -cams.w2c[0, :3, :3].T @ cams.w2c[0, :3, 3]
    g1.means[i] = c0 + 0.5 * (g.means[i] - c0)
    g1.opacity_logits[i] = g.opacity_logits[i] - 3.0
    f = anchor_features(g, g1, cams, photos, weights)
    assert int(f[:, _col("prepass_mean")].argmax()) == i
    assert float(f[i, _col("prepass_log_depth_change")]) == pytest.approx(-0.6931, abs=1e-3)
    assert float(f[i, _col("prepass_opacity_change")]) == pytest.approx(-3.0)
    # a depth step in θ0 itself: the same Gaussian moved in g0 marks its 4-neighbours' edges
    g_step = g.clone()
    g_step.means[i] = c0 + 0.5 * (g.means[i] - c0)
    f2 = anchor_features(g_step, g_step, cams, photos, weights)
    edge = f2[:, _col("depth_edge")]
    for j in (i, i - 1, i + 1, i - w, i + w):
        assert float(edge[j]) == pytest.approx(0.6931, abs=0.02)  # the plane is tilted: neighbours differ a little
    assert float(edge[i + 2]) < 0.02


def test_a_backdrop_gaussian_has_no_pixel():
    cams, g, owner, photos = _scene()
    extra = g[:1].clone()
    extra.means[:] = torch.tensor([[0.3, 0.2, 40.0]], dtype=extra.means.dtype)
    g2 = type(g)(*(torch.cat([a, b]) for a, b in zip(g.tensors(), extra.tensors())))
    f = anchor_features(g2, g2, cams, photos, torch.ones(photos.shape[:3], dtype=torch.float64))
    assert float(f[-1, _col("backdrop")]) == 1.0 and float(f[-1, _col("confidence")]) == 1.0
    assert float(f[:-1, _col("backdrop")].max()) == 0.0


def test_head_file_round_trip_and_refusals(tmp_path):
    head = AnchorHead(hidden=8)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
        head.mu.normal_()
    path = save_anchor_head(tmp_path / "h.safetensors", head, {"note": "test"})
    back = load_anchor_head(path)
    x = torch.randn(7, len(FEATURES))
    assert torch.allclose(back(x), head(x))
    with pytest.raises(UserError, match="not found"):
        load_anchor_head(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(UserError, match="anchor head"):
        load_anchor_head(bad)


def test_the_bundled_head_loads_and_ranks():
    head = load_anchor_head()
    from diff3r_cli.depth.anchor_head import head_meta

    assert head_meta()["tuples"] > 0
    x = torch.randn(5, len(FEATURES))
    assert head(x).shape == (5, 5)


def test_confident_start_reranks_lambda_only_with_a_head():
    from diff3r_cli.depth.consistency import confident_start

    cams, g, owner, photos = _scene()
    lam = torch.full((len(g), 5), 2.0, dtype=torch.float64)
    head = AnchorHead(hidden=8)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    _, lam_plain, _, _ = confident_start(g, lam, cams, photos, drop=False, prepass=0)
    assert torch.equal(lam_plain, lam)
    _, lam_head, w, _ = confident_start(g, lam, cams, photos, drop=False, prepass=0, head=head)
    feats = anchor_features(g, g, cams, photos, w)
    assert torch.allclose(lam_head, rerank(lam, head(feats).double()))
    assert not torch.allclose(lam_head, lam)


def test_the_fit_learns_a_planted_ranking():
    from diff3r_cli.train.anchor_head_fit import fit_head, rank_correlations

    gen = torch.Generator().manual_seed(1)

    def record(n=400):
        x = torch.randn(n, len(FEATURES), generator=gen)
        # Gaussians that the pre-pass moved and whose pixel is distrusted move far
        d = torch.exp(2 * x[:, _col("prepass_mean")] + x[:, _col("distrust")])[:, None].repeat(1, 5)
        return {"key": "k", "features": x, "displacement": d}

    train, val = [record() for _ in range(4)], [record()]
    head, log = fit_head(train, steps=400, lr=3e-3, val=val, every=100)
    assert min(rank_correlations(head, val)) > 0.8
    assert log[-1]["loss"] < log[0]["loss"]
    # and the predicted Λ, constant here, ranks nothing
    assert max(abs(v) for v in rank_correlations(None, val, [torch.ones(400, 5)])) < 0.2


def test_the_prepass_features_are_log_changes_relative_to_the_median_gaussian_clamped():
    from diff3r_cli.depth.anchor_head import centred_log_change

    change = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0, 1e3, 1e4], dtype=torch.float64)[:, None].repeat(1, 5)
    got = centred_log_change(change)
    want = (change.float() + 1e-12).log() - math.log(4.0)  # the median Gaussian moved 4
    assert torch.allclose(got[1:], want[1:], atol=1e-5)
    assert torch.all(got[0] == -20.0)  # a Gaussian that did not move: clamped, not -29


def test_the_fit_refuses_records_of_another_width_unless_told_and_holds_out_every_third_scene():
    from diff3r_cli.train.anchor_head_fit import fit_head, held_out_scenes

    gen = torch.Generator().manual_seed(2)
    wide = [{"key": "k", "features": torch.randn(64, len(FEATURES) + 3, generator=gen),
             "displacement": torch.rand(64, 5, generator=gen)}]
    with pytest.raises(ValueError, match="features"):
        fit_head(wide, steps=2)
    head, _ = fit_head(wide, steps=2, n_features=len(FEATURES) + 3)
    assert head.net[0].in_features == len(FEATURES) + 3
    recs = [{"key": k} for k in ("e", "a", "d", "b", "a", "c", "f")]
    assert held_out_scenes(recs) == {"a", "d"}  # sorted a b c d e f: every third from the first


def test_spearman_matches_the_textbook_formula_and_group_change_a_float64_sum():
    from diff3r_cli.depth.anchor_head import group_change
    from diff3r_cli.train.anchor_head_fit import spearman

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(200, generator=gen), torch.randn(200, generator=gen)
    n = len(a)
    d = (a.argsort().argsort() - b.argsort().argsort()).double()
    assert spearman(a, b) == pytest.approx(1 - 6 * float((d * d).sum()) / (n * (n * n - 1)), abs=1e-12)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    cams, g, owner, photos = _scene()
    g1 = g.clone()
    g1.means[3] += torch.tensor([0.1, -0.2, 0.3], dtype=g.dtype)
    g1.sh[5] += 0.5
    ch = group_change(g, g1)
    assert float(ch[3, 0]) == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    assert float(ch[5, 4]) == pytest.approx(0.25)
    assert float(ch.sum()) == pytest.approx((0.14 / 3) + 0.25)


def test_train_records_are_prepared_once_and_read_back_from_the_cache(tmp_path, monkeypatch):
    """The cache both anchor fits share (train.anchor_fit.cached_train_tuples): a resumed fit reads each
    tuple's record instead of preparing it again, and leaves no temporary file behind."""
    from diff3r_cli.train import anchor_fit

    tuples = [(0, False, {"key": "a"}), (0, False, {"key": "b"}), (1, True, {"key": "a"})]
    monkeypatch.setattr(anchor_fit, "train_tuples", lambda root, seeds, outliers, resolution: iter(tuples))
    calls = []

    def prepare(seed, corrupt, s):
        calls.append((seed, s["key"]))
        return {"key": s["key"], "seed": seed, "corrupt": corrupt, "x": torch.tensor([seed + 0.5])}

    first = anchor_fit.cached_train_tuples(tmp_path, "p_", None, 2, 0.5, 64, prepare)
    assert calls == [(0, "a"), (0, "b"), (1, "a")]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p_0_a.pt", "p_0_b.pt", "p_1_a.pt"]
    again = anchor_fit.cached_train_tuples(tmp_path, "p_", None, 2, 0.5, 64, prepare)
    assert len(calls) == 3  # nothing prepared twice
    assert [r["key"] for r in again] == ["a", "b", "a"] and again[2]["corrupt"] is True
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(first, again))
