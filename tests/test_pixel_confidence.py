"""Per-pixel confidences of the context photos: the weighted photometric term and the cross-view
detector that sets the weights (issue 23, outliers in the inputs)."""

from __future__ import annotations

import pytest
import torch

from diff3r_cli.depth.consistency import pixel_confidence
from diff3r_cli.optim.tto import optimize, prepare_energy
from diff3r_cli.render import render

from optim_scenes import blobs, perturb, plane_pixels, two_cameras


def _problem(size: int = 10):
    cams = two_cameras(size)
    gt = blobs(5, seed=3)
    images = render(gt, cams).rgb.detach()
    g0 = perturb(gt, 0.05, seed=4)
    w = torch.rand(images.shape[:3], generator=torch.Generator().manual_seed(5), dtype=images.dtype)
    return cams, g0, images, w


def test_weighted_energy_and_gradient_match_a_float64_reference():
    cams, g0, images, w = _problem()
    lam = torch.full((g0.num, 5), 0.3, dtype=torch.float64)
    energy, theta0, _ = prepare_energy(g0, lam, cams, images, pixel_weights=w)
    theta = theta0.detach() + 0.01 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(6),
                                                 dtype=theta0.dtype)
    terms, grad = energy.value_and_grad(theta)
    # reference: the formula written out, differentiated by autograd through the renderer
    t = theta.clone().requires_grad_(True)
    r = render(g0.unflatten(t), cams).rgb - images
    lam_flat = g0.expand_groups(lam)
    ref = 0.5 * (w[..., None] * r * r).sum() / w.numel() + 0.5 * (lam_flat * (t - theta0.detach()) ** 2).sum()
    (ref_grad,) = torch.autograd.grad(ref, t)
    assert terms.energy == pytest.approx(float(ref), rel=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-12)
    # the Gauss-Newton model of the layer sees the same weighted residual: (JᵀWJ/P + Λ) v against
    # a central difference of the written-out √w ⊙ r and autograd's vjp of it
    lin = energy.linearize(theta)
    assert torch.allclose(lin.grad, ref_grad, rtol=1e-8, atol=1e-12)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(7), dtype=theta.dtype)

    def weighted(x):
        return w[..., None].sqrt() * (render(g0.unflatten(x), cams).rgb - images)

    eps = 1e-6
    jv = (weighted(theta + eps * v) - weighted(theta - eps * v)) / (2 * eps)
    t2 = theta.clone().requires_grad_(True)
    (jtjv,) = torch.autograd.grad(weighted(t2), t2, jv)
    ref_gn = jtjv / w.numel() + lam_flat * v
    got = lin.gn_matvec(v)
    assert float((got - ref_gn).norm() / ref_gn.norm()) < 1e-6, (float((got - ref_gn).norm() / ref_gn.norm()), lin.jvp_mode)


def test_unit_weights_are_the_plain_energy():
    cams, g0, images, _ = _problem()
    plain, theta0, _ = prepare_energy(g0, None, cams, images)
    ones, _, _ = prepare_energy(g0, None, cams, images, pixel_weights=torch.ones(images.shape[:3], dtype=images.dtype))
    a, ga = plain.value_and_grad(theta0)
    b, gb = ones.value_and_grad(theta0)
    assert a.energy == b.energy
    assert torch.equal(ga, gb)


@pytest.mark.parametrize("compensation", ["off", "on"])
def test_a_zero_weight_pixel_does_not_steer_the_fit(compensation):
    """What a photo shows at a zero-weight pixel (an occluder) cannot change the refined scene, with or
    without the per-view exposure transforms (whose energy must carry the weights along)."""
    cams, g0, images, _ = _problem()
    w = torch.ones(images.shape[:3], dtype=images.dtype)
    w[0, 2:6, 3:7] = 0
    painted = images.clone()
    painted[0, 2:6, 3:7] = torch.tensor([1.0, 0.0, 1.0], dtype=images.dtype)
    a, _ = optimize(g0, None, cams, images, 15, pixel_weights=w, compensation=compensation)
    b, _ = optimize(g0, None, cams, painted, 15, pixel_weights=w, compensation=compensation)
    c, _ = optimize(g0, None, cams, painted, 15, compensation=compensation)
    assert torch.allclose(a.flatten(), b.flatten(), atol=1e-12)
    assert not torch.allclose(a.flatten(), c.flatten(), atol=1e-6)  # unweighted, the paint does steer it


def test_bad_weights_are_refused():
    cams, g0, images, w = _problem()
    with pytest.raises(ValueError, match="shape"):
        prepare_energy(g0, None, cams, images, pixel_weights=w[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_energy(g0, None, cams, images, pixel_weights=w + 1)


def _occluded_plane(size: int = 24):
    cams = two_cameras(size)
    ones = torch.ones(3, dtype=torch.float64)
    g, _ = plane_pixels(cams, [ones, ones])
    photos = render(g, cams).rgb.detach()
    return cams, g, photos


def test_confidence_is_low_on_an_occluder_in_one_view_and_high_elsewhere():
    cams, g, photos = _occluded_plane()
    shot = photos.clone()
    box = (slice(8, 15), slice(9, 16))
    shot[0][box] = torch.tensor([0.9, 0.1, 0.8], dtype=shot.dtype)  # an occluder in view 0 only
    # the predictor reproduces what each photo shows: view 0's Gaussians at the occluder take its colour
    g_pred, _ = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    ys, xs = torch.meshgrid(torch.arange(cams.height), torch.arange(cams.width), indexing="ij")
    inside = torch.zeros(cams.height, cams.width, dtype=torch.bool)
    inside[box] = True
    idx = (ys * cams.width + xs)[inside]
    g_pred.sh[idx, 0] = (shot[0][inside] - 0.5) / 0.28209479177387814
    w = pixel_confidence(g_pred, cams, shot)
    assert w.shape == shot.shape[:3]
    core = w[0][9:14, 10:15]
    assert float(core.max()) < 0.2, core
    clean0 = w[0][~inside]
    assert float(clean0.median()) > 0.9
    # view 1 sees the plane behind the occluder: its photo agrees with what view 0's *other* Gaussians
    # show, but view 0's occluder Gaussians render into view 1 too, so only that footprint may drop
    assert float(w[1].median()) > 0.9


def test_a_whole_view_exposure_change_is_not_an_outlier():
    cams, g, photos = _occluded_plane()
    gain = torch.tensor([1.3, 0.85, 1.1], dtype=photos.dtype)
    shot = photos.clone()
    shot[1] = photos[1] * gain
    g_pred, _ = plane_pixels(cams, [torch.ones(3, dtype=torch.float64), gain])
    w = pixel_confidence(g_pred, cams, shot)
    assert float(w.min()) > 0.8, float(w.min())


def test_contradicted_gaussians_are_those_of_the_occluder():
    from diff3r_cli.depth.consistency import contradicted

    cams, g, photos = _occluded_plane()
    shot = photos.clone()
    shot[0][8:15, 9:16] = torch.tensor([0.9, 0.1, 0.8], dtype=shot.dtype)
    g_pred, owner = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    w = pixel_confidence(g_pred, cams, shot)
    bad = contradicted(g_pred, cams, w)
    # view 0's Gaussians are row-major over its pixels: the contradicted ones lie in the occluder box
    rows, cols = torch.div(torch.arange(cams.width * cams.height), cams.width, rounding_mode="floor"), \
        torch.arange(cams.width * cams.height) % cams.width
    in_box = (rows >= 8) & (rows < 15) & (cols >= 9) & (cols < 16)
    bad0 = bad[owner == 0]
    assert bool(bad0[in_box].float().mean() > 0.6)
    near_box = (rows >= 6) & (rows < 17) & (cols >= 7) & (cols < 18)  # the 5-px window reaches 2 px out
    assert int(bad0[~near_box].sum()) == 0
    assert int(bad[owner == 1].sum()) <= 0.05 * int((owner == 1).sum())


@pytest.mark.parametrize("mode, expect", [("off", (False, False)), ("unc", (False, True)), ("all", (True, True)),
                                          ("short", (False, False))])
def test_eval_gives_the_confidences_to_the_runs_asked_for(monkeypatch, mode, expect):
    from diff3r_cli.depth import consistency
    from diff3r_cli.evaluate import views as views_mod

    if mode == "short":  # budgets below MIN_STEPS run without it
        mode = "all"
    else:
        monkeypatch.setattr(consistency, "MIN_STEPS", 1)
    from diff3r_cli.evaluate.views import EvalViews, score_runs
    from diff3r_cli.model.predictor import build_predictor

    got = {}
    real = views_mod.tto_states

    def spy(g0, lam, *args):
        got[lam is not None] = args[-1] is not None
        return real(g0, lam, *args)

    monkeypatch.setattr(views_mod, "tto_states", spy)
    tiny = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_layers=0)
    net = build_predictor("small", **tiny)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).repeat(2, 1, 1)
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.2
    v = EvalViews(torch.rand(2, 16, 16, 3), K, w2c, torch.rand(1, 16, 16, 3), K[:1], w2c[:1], 2.0, 9.0)
    runs = [("ff+TTO", "diff3r", False, 1), ("diff3r+TTO+unc", "diff3r", True, 1)]
    out, failures = score_runs({"diff3r": net}, runs, v, "cpu", context=False, confidence=mode)
    assert failures == 0 and set(out) == {"ff+TTO@1", "diff3r+TTO+unc@1"}
    assert (got[False], got[True]) == expect
    with pytest.raises(ValueError, match="confidence"):
        score_runs({"diff3r": net}, runs, v, "cpu", confidence="maybe")


def test_confident_start_keeps_the_occluder_contradicted_after_the_prepass_and_drops_its_gaussians():
    from diff3r_cli.depth.consistency import confident_start

    cams, _, photos = _occluded_plane()
    shot = photos.clone()
    shot[0][8:15, 9:16] = torch.tensor([0.9, 0.1, 0.8], dtype=shot.dtype)
    g_pred, owner = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    inside = torch.zeros(cams.height, cams.width, dtype=torch.bool)
    inside[8:15, 9:16] = True
    g_pred.sh[inside.reshape(-1).nonzero().squeeze(1), 0] = (shot[0][inside] - 0.5) / 0.28209479177387814
    lam = torch.ones(g_pred.num, 5, dtype=torch.float64)
    g, lam_kept, w, kept = confident_start(g_pred, lam, cams, shot, drop=True, prepass=10)
    assert int(kept.sum()) == g.num and torch.equal(g.means, g_pred.means[kept])
    assert float(w[0][9:14, 10:15].max()) < 0.3  # the fit cannot make view 1's Gaussians show the occluder
    assert float(w[1].median()) > 0.9
    # two views cannot say which photo is wrong: view 0's occluder Gaussians also contradict view 1's
    # photo where they project, so both views' Gaussians go there (the occluder's, and the patch of
    # plane that view 1 shows under them), and nothing else
    dropped = g_pred.num - g.num
    assert 2 * 7 * 7 <= dropped <= 2 * 11 * 11 and len(lam_kept) == g.num
    _, _, w_kept, all_kept = confident_start(g_pred, None, cams, shot, drop=False, prepass=0)
    assert bool(all_kept.all())
    assert torch.allclose(w_kept, pixel_confidence(g_pred, cams, shot))


def test_settled_confidence_is_the_prepass_and_the_confidence_of_its_result():
    """The one pre-pass that confident_start and the anchor head's training records share: θ1 is a plain
    TTO of θ0, the weights are measured on θ1 with the source views of θ0."""
    from diff3r_cli.depth.consistency import settled_confidence
    from diff3r_cli.depth.pixel_gaussians import source_views

    cams, _, photos = _occluded_plane()
    shot = photos.clone()
    shot[0][8:15, 9:16] = torch.tensor([0.9, 0.1, 0.8], dtype=shot.dtype)
    g_pred, _ = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    owner, g1, w = settled_confidence(g_pred, cams, shot, prepass=5, compensation="off")
    ref, _ = optimize(g_pred, None, cams, shot, 5)
    assert torch.equal(owner, source_views(g_pred, cams))
    assert torch.allclose(g1.means, ref.means) and torch.allclose(g1.sh, ref.sh)
    assert not torch.allclose(g1.sh, g_pred.sh)  # the pre-pass moved something
    assert torch.allclose(w, pixel_confidence(ref, cams, shot, owner=owner))
    _, g_same, w0 = settled_confidence(g_pred, cams, shot, prepass=0)
    assert g_same is g_pred and torch.allclose(w0, pixel_confidence(g_pred, cams, shot))

def test_refine_checks_the_photos_only_for_long_enough_budgets(monkeypatch):
    from diff3r_cli.depth import consistency
    from diff3r_cli.engines.refine import refine_gaussians

    cams, g0, images, _ = _problem()
    lam = torch.full((g0.num, 5), 0.1, dtype=torch.float64)
    calls = []
    real = consistency.confident_start

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **{**k, "prepass": 2})

    monkeypatch.setattr(consistency, "confident_start", spy)
    _, hist = refine_gaussians(g0, lam, cams, images, 3, confidence=True)
    assert not calls and "kept" not in hist[-1]
    monkeypatch.setattr(consistency, "MIN_STEPS", 3)
    _, hist = refine_gaussians(g0, lam, cams, images, 3, confidence=True)  # weights only: nothing dropped
    assert len(calls) == 1 and calls[0]["drop"] is False and "kept" not in hist[-1]
    g, hist = refine_gaussians(g0, lam, cams, images, 3, confidence=True, drop=True)
    assert len(calls) == 2 and int(hist[-1]["kept"].sum()) == g.num
    _, hist = refine_gaussians(g0, None, cams, images, 3, confidence=True)  # plain TTO: never
    assert len(calls) == 2


def test_an_occluder_at_the_edge_of_the_other_views_frame_is_still_found():
    """The window averages over covered pixels only: uncovered neighbours (nothing to compare with)
    must neither dilute nor inflate the difference where the other view's frame ends."""
    cams, _, photos = _occluded_plane()
    g_pred, _ = plane_pixels(cams, [torch.ones(3, dtype=torch.float64)] * 2)
    from diff3r_cli.depth.consistency import cross_view_difference

    _, covered = cross_view_difference(g_pred, cams, photos)
    first = int(covered[0][12].nonzero().min())  # the first column of view 0 that view 1 covers
    shot = photos.clone()
    box = (slice(8, 16), slice(first, first + 6))
    shot[0][box] = torch.tensor([0.9, 0.1, 0.8], dtype=shot.dtype)
    inside = torch.zeros(cams.height, cams.width, dtype=torch.bool)
    inside[box] = True
    g_pred.sh[inside.reshape(-1).nonzero().squeeze(1), 0] = (shot[0][inside] - 0.5) / 0.28209479177387814
    w = pixel_confidence(g_pred, cams, shot)
    edge = w[0][9:15, first:first + 2]  # the occluder's columns next to the uncovered ones
    assert float(edge.max()) < 0.2, edge
    assert bool((w[0][:, :first - 2] == 1).all())  # uncovered: nothing to compare, full weight
