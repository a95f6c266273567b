"""Test-time optimisation (Adam and Levenberg-Marquardt) on tiny scenes with the torch renderer."""

import math

import pytest
import torch

from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import GROUPS
from diff3r_cli.optim.tto import ADAM_LR, adam_lr_vector, optimize, scene_extent
from diff3r_cli.render import render

from optim_scenes import blobs, perturb, two_cameras, wide_blobs

N = 4
SIZE = 12




@pytest.fixture(scope="module")
def scene():
    cams = two_cameras(SIZE)
    gt = blobs(N, seed=2)
    images = render(gt, cams).rgb.detach()
    g0 = perturb(gt, 0.05, seed=3)
    return cams, gt, images, g0


def _energy_by_hand(g, g0, lam, cams, images):
    """E written out independently of optim.energy (render(), flatten, expand_groups)."""
    r = render(g, cams).rgb - images
    P = images.shape[0] * images.shape[1] * images.shape[2]
    d = g.flatten() - g0.flatten()
    return float(0.5 * (r * r).sum() / P + 0.5 * (g0.expand_groups(lam) * d * d).sum())


def test_adam_lowers_energy_and_history_is_consistent(scene):
    cams, gt, images, g0 = scene
    lam = torch.full((N, 5), 1e-3, dtype=torch.float64)
    seen = []
    gs, hist = optimize(g0, lam, cams, images, 30, "adam", progress=seen.append)
    assert len(hist) == 31 and len(seen) == 31 and [h["step"] for h in hist] == list(range(31))
    for h in hist:
        assert abs(h["energy"] - h["photometric"] - h["proximal"]) < 1e-15
    assert hist[0]["energy"] == pytest.approx(_energy_by_hand(g0, g0, lam, cams, images), rel=1e-12)
    assert hist[-1]["energy"] == pytest.approx(_energy_by_hand(gs, g0, lam, cams, images), rel=1e-12)
    assert hist[0]["proximal"] == 0.0
    assert hist[-1]["energy"] < 0.8 * hist[0]["energy"]
    assert gs.is_finite()


def test_lam_none_equals_zero_and_is_plain_tto(scene):
    cams, gt, images, g0 = scene
    a, ha = optimize(g0, None, cams, images, 5, "adam")
    b, hb = optimize(g0, torch.zeros(N, 5, dtype=torch.float64), cams, images, 5, "adam")
    assert torch.equal(a.flatten(), b.flatten())
    assert all(h["proximal"] == 0.0 for h in ha)


def test_first_adam_step_uses_per_group_learning_rates(scene):
    cams, gt, images, g0 = scene
    ext = scene_extent(g0, cams)
    centers = cams.centers
    assert ext >= 1.1 * float((centers - centers.mean(0)).norm(dim=1).max())
    lr = adam_lr_vector(g0, ext)
    g1, _ = optimize(g0, None, cams, images, 1, "adam")
    step = (g1.flatten() - g0.flatten()).abs()
    # Adam's first update is lr·g/sqrt(g²+ε²) = lr·sign(g) for every coordinate with a gradient.
    moved = step > 0
    assert moved.float().mean() > 0.9
    assert torch.allclose(step[moved], lr[moved], rtol=1e-6)
    by_group = g0.reduce_groups(lr) / torch.tensor(g0.group_sizes(), dtype=lr.dtype)
    expect = [ADAM_LR["mean"] * ext, ADAM_LR["scale"], ADAM_LR["rotation"], ADAM_LR["opacity"], ADAM_LR["color"]]
    assert torch.allclose(by_group[0], torch.tensor(expect, dtype=lr.dtype))
    # overrides: a multiplier and a per-group dict
    assert torch.allclose(adam_lr_vector(g0, ext, 2.0), 2 * lr)
    assert torch.allclose(g0.reduce_groups(adam_lr_vector(g0, ext, {"opacity": 0.5}))[:, 3], torch.full((N,), 0.5, dtype=lr.dtype))


def test_uncertainty_weights_anchor_their_group(scene):
    cams, gt, images, g0 = scene
    lam = torch.zeros(N, 5, dtype=torch.float64)
    lam[:, GROUPS.index("mean")] = 1e8
    lam[:, GROUPS.index("opacity")] = 1e8
    gs, _ = optimize(g0, lam, cams, images, 10, "lm")
    free, _ = optimize(g0, None, cams, images, 10, "lm")
    assert (gs.means - g0.means).abs().max() < 1e-6
    assert (gs.opacity_logits - g0.opacity_logits).abs().max() < 1e-6
    assert (free.means - g0.means).abs().max() > 1e-3
    assert (gs.sh - g0.sh).abs().max() > 1e-3  # colours stay free


def test_lm_reaches_a_stationary_point():
    cams = two_cameras(10)
    gt = wide_blobs(3, seed=4)
    images = render(gt, cams).rgb.detach()
    g0 = perturb(gt, 0.05, seed=5)
    lam = torch.full((3, 5), 1e-2, dtype=torch.float64)
    gs, hist = optimize(g0, lam, cams, images, 40, "lm", rtol_stop=0.0, pcg_rtol=1e-8, pcg_max_iter=200, gtol=1e-10)
    # stationarity checked with autograd on the hand-written energy
    theta = gs.flatten().clone().requires_grad_(True)
    r = render(g0.unflatten(theta), cams).rgb - images
    d = theta - g0.flatten()
    E = 0.5 * (r * r).sum() / r[..., 0].numel() + 0.5 * (g0.expand_groups(lam) * d * d).sum()
    (grad,) = torch.autograd.grad(E, theta)
    assert float(grad.norm()) < 1e-8
    energies = [h["energy"] for h in hist]
    assert all(b <= a + 1e-15 for a, b in zip(energies, energies[1:]))  # LM only accepts decreases
    adam, hadam = optimize(g0, lam, cams, images, 40, "adam")
    assert energies[-1] < hadam[-1]["energy"]


def test_lm_early_stop_and_fd_jvp(scene):
    cams, gt, images, g0 = scene
    lam = torch.full((N, 5), 1e-2, dtype=torch.float64)
    gs, hist = optimize(g0, lam, cams, images, 100, "lm", rtol_stop=1e-3)
    assert len(hist) < 100
    gf, hf = optimize(g0, lam, cams, images, 3, "lm", jvp="fd")
    gr, hr = optimize(g0, lam, cams, images, 3, "lm", jvp="forward")
    assert hf[-1]["energy"] < hf[0]["energy"]
    assert hf[-1]["energy"] == pytest.approx(hr[-1]["energy"], rel=1e-3)


def test_float32(scene):
    cams, gt, images, g0 = scene
    g32 = g0.to(dtype=torch.float32)
    for opt in ("adam", "lm"):
        gs, hist = optimize(g32, None, cams.to(dtype=torch.float32), images.float(), 5, opt)
        assert gs.dtype == torch.float32 and gs.is_finite()
        assert hist[-1]["energy"] < hist[0]["energy"]


def test_guards(scene):
    cams, gt, images, g0 = scene
    bad = g0.clone()
    bad.quats[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="initial"):
        optimize(bad, None, cams, images, 2)
    nan_img = images.clone()
    nan_img[0, 0, 0, 0] = float("nan")
    for opt in ("adam", "lm"):
        with pytest.raises(NumericalError, match="energy"):
            optimize(g0, None, cams, nan_img, 2, opt)
    with pytest.raises(NumericalError):
        optimize(g0, torch.full((N, 5), math.inf, dtype=torch.float64), cams, images, 2)
    with pytest.raises(UserError):
        optimize(g0, -torch.ones(N, 5, dtype=torch.float64), cams, images, 2)
    # a negative weight can come from a user's .ply (diff3r refine): a UserError; the rest
    # are programmer errors
    with pytest.raises(ValueError, match="shape"):
        optimize(g0, torch.ones(N, 4, dtype=torch.float64), cams, images, 2)
    with pytest.raises(ValueError, match="cameras"):
        optimize(g0, None, cams, images[:1], 2)
    with pytest.raises(ValueError, match="optimizer"):
        optimize(g0, None, cams, images, 2, "sgd")
    with pytest.raises(ValueError, match="learning-rate"):
        optimize(g0, None, cams, images, 2, lr=-1.0)
    with pytest.raises(ValueError, match="steps"):
        optimize(g0, None, cams, images, -1)
    with pytest.raises(TypeError, match="unexpected options for adam"):
        optimize(g0, None, cams, images, 2, mu0=0.1)
    with pytest.raises(TypeError, match="unexpected options for lm"):
        optimize(g0, None, cams, images, 2, "lm", patience=2)
    with pytest.raises(NumericalError):
        optimize(g0, None, cams, images, 3, lr={"mean": math.inf})


def test_lm_nan_in_linear_solve_raises(scene):
    cams, gt, images, g0 = scene

    def nan_away_from_start(g, cameras, background, backend):
        # Finite at θ0 (energy, gradient, probes) but NaN at the finite-difference points.
        rgb = render(g, cameras, background=background, backend=backend).rgb
        return rgb if torch.equal(g.means, g0.means) else rgb * float("nan")

    with pytest.raises(NumericalError, match="linear solve"):
        optimize(g0, None, cams, images, 2, "lm", jvp="fd", render_fn=nan_away_from_start)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_adam_update_matches_the_torch_path(scene, monkeypatch, dtype):
    """The compiled kernel's one-pass Adam update against the readable torch update."""
    from render_backends import require_cpu_backend

    from diff3r_cli.optim import tto

    require_cpu_backend()
    cams, gt, images, g0 = scene
    g0, cams, images = g0.to(dtype=dtype), cams.to(dtype=dtype), images.to(dtype)
    lam = torch.full((N, 5), 1e-3, dtype=dtype)
    assert tto._fused_adam_available(g0.flatten())
    fused, h1 = optimize(g0, lam, cams, images, 12)
    monkeypatch.setattr(tto, "_fused_adam_available", lambda *a: False)
    ref, h2 = optimize(g0, lam, cams, images, 12)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(fused.flatten(), ref.flatten(), rtol=tol, atol=tol)
    assert (fused.flatten() - g0.flatten()).abs().max() > 1e-4  # it moved
    assert abs(h1[-1]["energy"] - h2[-1]["energy"]) <= tol * abs(h2[-1]["energy"])


@pytest.mark.parametrize("fused", [True, False])
def test_adam_non_finite_gradient_raises(scene, monkeypatch, fused):
    from diff3r_cli.optim import tto

    cams, gt, images, g0 = scene
    if not fused:
        monkeypatch.setattr(tto, "_fused_adam_available", lambda *a: False)
    real = tto.Energy.value_and_grad

    def poisoned(self, x, create_graph=False):
        terms, grad = real(self, x, create_graph)
        grad = grad.clone()
        grad[3] = float("nan")
        return terms, grad

    monkeypatch.setattr(tto.Energy, "value_and_grad", poisoned)
    with pytest.raises(NumericalError, match="gradient at step 0"):
        optimize(g0, None, cams, images, 3)


def test_value_and_grad_fast_path_matches_autograd(scene):
    """∇E with the quadratic terms written out equals autograd through the whole energy."""
    from diff3r_cli.optim.tto import prepare_energy

    cams, gt, images, g0 = scene
    lam = torch.rand(N, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 1e-2
    energy, theta0, _ = prepare_energy(g0, lam, cams, images)
    theta = perturb(g0, 0.02, seed=5).flatten()
    terms, grad = energy.value_and_grad(theta)
    ref_terms, ref_grad = energy.value_and_grad(theta.clone().requires_grad_(True), create_graph=True)
    assert terms.energy == pytest.approx(ref_terms.energy, rel=1e-12)
    assert terms.proximal == pytest.approx(ref_terms.proximal, rel=1e-12) and terms.proximal > 0
    assert torch.allclose(grad, ref_grad.detach(), rtol=1e-10, atol=1e-14)
    assert terms.energy == pytest.approx(_energy_by_hand(g0.unflatten(theta), g0, lam, cams, images), rel=1e-12)
