"""The IFT optimisation layer against independent references (float64, tiny scenes, torch renderer).

References: dense Jacobians from torch.autograd.functional.jacobian, dense Hessians from
central differences of autograd gradients, central finite differences of ℓ(θ*(θ0, Λ)) with
the inner problem re-solved tightly, and autograd through a long unrolled (converged)
gradient-descent run.
"""

import pytest
import torch

from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.optim.config import BackwardConfig, LMConfig
from diff3r_cli.optim.energy import Energy
from diff3r_cli.optim.implicit import ift_solve, optimization_layer, optimization_layer_with_stats
from diff3r_cli.optim.lm import lm_run
from diff3r_cli.render import render

from diff3r_cli.render.autograd_rgb import render_rgb_autograd

from optim_scenes import perturb, pixel_aligned, two_cameras, wide_blobs

N = 3
SIZE = 10
TIGHT = dict(pcg_rtol=1e-10, pcg_max_iter=300, gtol=1e-12, rtol_stop=0.0)
RESOLVE = dict(pcg_rtol=1e-8, pcg_max_iter=300, gtol=1e-11, rtol_stop=0.0)




@pytest.fixture(scope="module")
def scene():
    cams = two_cameras(SIZE)
    gt = wide_blobs(N, seed=0)  # smooth energy near θ*: no pair crosses a render threshold
    images = render(gt, cams).rgb.detach()
    # Held-out target view between the two context views, showing a slightly different scene
    # so that the outer loss has a non-trivial gradient.
    tgt_cam = two_cameras(SIZE, baseline=0.0)[0]
    tgt_img = render(perturb(gt, 0.05, seed=7), tgt_cam).rgb.detach()
    return cams, gt, images, tgt_cam, tgt_img


def outer_loss(g, tgt_cam, tgt_img):
    r = render(g, tgt_cam).rgb - tgt_img
    return 0.5 * (r * r).mean() * 100.0


def _energy(g0, lam, cams, images):
    return Energy(g0.detach(), g0.flatten().detach(), g0.expand_groups(lam).detach(), cams, images)


def _solve(template, theta0, lam, cams, images, start):
    """θ*(θ0, Λ) by tight LM from ``start`` (warm start)."""
    g0 = template.unflatten(theta0)
    e = _energy(g0, lam, cams, images)
    x, hist = lm_run(e, start, 60, LMConfig(**RESOLVE))
    _, grad = e.value_and_grad(x)
    assert float(grad.norm()) < 1e-9, "inner problem not solved tightly"
    return x


def _layer_grads(g0, lam, cams, images, tgt_cam, tgt_img, **kw):
    theta0 = g0.flatten().detach().requires_grad_(True)
    lam_ = lam.detach().clone().requires_grad_(True)
    gi = g0.detach().unflatten(theta0)
    gs, stats = optimization_layer_with_stats(gi, lam_, cams, images, 60, optimizer="lm", **TIGHT, **kw)
    loss = outer_loss(gs, tgt_cam, tgt_img)
    loss.backward()
    return theta0.grad.detach(), lam_.grad.detach(), gs.flatten().detach(), stats


def _setup(scene, sigma, lam_value, seed=1):
    cams, gt, images, tgt_cam, tgt_img = scene
    g0 = perturb(gt, sigma, seed=seed)
    lam = torch.full((N, 5), lam_value, dtype=torch.float64)
    lam[:, 3] *= 3.0  # distinct groups, so a group mix-up would show
    lam[:, 4] *= 0.5
    return cams, g0, lam, images, tgt_cam, tgt_img


def test_gn_product_and_jvp_modes_match_explicit_jacobian(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    theta = e.theta0 + 0.01
    J = torch.autograd.functional.jacobian(e.residual, theta).reshape(-1, theta.numel())  # independent reference
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_jv = J @ v
    ref_gn = J.T @ ref_jv / e.num_pixels + e.lam * v
    e2 = Energy(e.template, e.theta0, e.lam, cams, images, render_fn=render_rgb_autograd)  # twice differentiable
    for mode, tol, en in (("forward", 1e-10, e), ("fd", 1e-5, e), ("reverse", 1e-10, e2), ("auto", 1e-10, e),
                          ("auto", 1e-10, e2)):
        lin = en.linearize(theta, mode)
        jv = lin.jvp(v).reshape(-1)
        assert (jv - ref_jv).norm() / ref_jv.norm() < tol, mode
        gn = lin.gn_matvec(v)
        assert (gn - ref_gn).norm() / ref_gn.norm() < tol, mode
        assert lin.jvp_count == 2
        if mode == "auto":
            assert lin.jvp_mode in ("forward", "reverse")
    assert lin.jvp_mode == "reverse"  # the twice-differentiable helper takes the cheaper path
    # ∇E = Jᵀr/P + Λ(θ−θ0) against autograd of E itself
    lin = e.linearize(theta)
    _, grad = e.value_and_grad(theta)
    assert (lin.grad - grad).norm() / grad.norm() < 1e-12


def test_jacobi_estimate_converges_to_true_diagonal(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    theta = e.theta0
    J = torch.autograd.functional.jacobian(e.residual, theta).reshape(-1, theta.numel())
    true = (J * J).sum(0) / e.num_pixels + e.lam
    lin = e.linearize(theta)
    errs = {}
    for probes in (4, 256):
        est = lin.gn_diag(probes, torch.Generator().manual_seed(probes))
        errs[probes] = float(((est - true).abs() / true).mean())
    assert errs[256] < 0.06, errs
    assert errs[256] < errs[4] / 3, errs


def _dense_hessian(e, theta, h=1e-5):
    """Column-wise central differences of the autograd gradient (the Hessian reference; the
    torch renderer's backward is first-order only, so double backward is not one)."""
    n = theta.numel()
    H = torch.empty(n, n, dtype=theta.dtype)
    for j in range(n):
        d = torch.zeros(n, dtype=theta.dtype)
        d[j] = h
        H[:, j] = (e.value_and_grad(theta + d)[1] - e.value_and_grad(theta - d)[1]) / (2 * h)
    assert (H - H.T).norm() / H.norm() < 1e-6  # a Hessian is symmetric: the FD reference is sound
    return 0.5 * (H + H.T)


def test_exact_hvp_matches_dense_hessian(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    theta = e.theta0 + 0.02
    Hd = _dense_hessian(e, theta)
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=gen)
    u = torch.randn(theta.numel(), dtype=torch.float64, generator=gen)
    hess = e.exact_hessian(theta)
    hv = hess.matvec(v)
    assert (hv - Hd @ v).norm() / (Hd @ v).norm() < 1e-7
    assert abs(float(u @ hv) - float(v @ hess.matvec(u))) < 1e-7 * float(hv.norm() * u.norm())


@pytest.mark.parametrize("hessian", ["exact", "gn"])
def test_ift_matches_dense_formula(scene, hessian):
    """Layer gradients equal Λ H⁻¹∇ℓ and −(H⁻¹∇ℓ)⊙(θ*−θ0) with H formed densely."""
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.05, 1e-2)
    g_theta0, g_lam, theta_star, stats = _layer_grads(g0, lam, cams, images, tgt_cam, tgt_img, hessian=hessian)
    assert stats.backward.solve.pcg_converged and stats.backward.solve.fallback is None
    e = _energy(g0, lam, cams, images)
    t = theta_star.clone().requires_grad_(True)
    (dl,) = torch.autograd.grad(outer_loss(g0.unflatten(t), tgt_cam, tgt_img), t)
    if hessian == "exact":
        H = _dense_hessian(e, theta_star)
    else:
        J = torch.autograd.functional.jacobian(e.residual, theta_star).reshape(-1, t.numel())
        H = J.T @ J / e.num_pixels + torch.diag(e.lam)
    v = torch.linalg.solve(H, dl)
    ref_theta0 = e.lam * v
    ref_lam = g0.reduce_groups(-v * (theta_star - e.theta0))
    tol = 1e-6 if hessian == "gn" else 1e-5  # "exact" compares two finite-difference Hessians
    assert (g_theta0 - ref_theta0).norm() / ref_theta0.norm() < tol
    assert (g_lam - ref_lam).norm() / ref_lam.norm() < tol


def test_ift_matches_finite_differences(scene):
    """∂ℓ/∂θ0 and ∂ℓ/∂λ of ℓ(θ*(θ0, Λ)) against central differences with θ* re-solved tightly.

    Near-zero residual (θ0 = truth + small noise), so both the exact-Hessian and the
    Gauss-Newton IFT gradients must match within 2% (cosine > 0.99).
    """
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.02, 1e-2)
    grads = {h: _layer_grads(g0, lam, cams, images, tgt_cam, tgt_img, hessian=h) for h in ("exact", "gn")}
    theta_star = grads["exact"][2]
    template = g0.detach()
    theta0 = g0.flatten().detach()
    gen = torch.Generator().manual_seed(11)

    def ell(th0, lm):
        x = _solve(template, th0, lm, cams, images, theta_star)
        return float(outer_loss(template.unflatten(x), tgt_cam, tgt_img))

    n = theta0.numel()
    coord = torch.zeros(n, dtype=torch.float64)
    coord[1] = 1.0  # a mean's y coordinate
    lam_coord = torch.zeros(N, 5, dtype=torch.float64)
    lam_coord[1, 4] = 1.0  # one Gaussian's colour weight
    probes = [("theta0", torch.randn(n, dtype=torch.float64, generator=gen)), ("theta0", coord),
              ("lam", torch.rand(N, 5, dtype=torch.float64, generator=gen)), ("lam", lam_coord)]
    fd = []
    for kind, d in probes:
        d = d / d.norm()
        if kind == "theta0":
            h = 1e-4
            fd.append((ell(theta0 + h * d, lam) - ell(theta0 - h * d, lam)) / (2 * h))
        else:
            h = 1e-5
            fd.append((ell(theta0, lam + h * d) - ell(theta0, lam - h * d)) / (2 * h))
    f = torch.tensor(fd)
    for hessian, (g_theta0, g_lam, _, _) in grads.items():
        a = torch.tensor([float((g_theta0 if k == "theta0" else g_lam).reshape(-1) @ (d / d.norm()).reshape(-1))
                          for k, d in probes])
        rel = float((a - f).norm() / f.norm())
        cos = float(a @ f / (a.norm() * f.norm()))
        assert rel < 0.02 and cos > 0.99, (hessian, rel, cos, a, f)


def test_ift_matches_long_unrolled_run(scene):
    """Autograd through 150 steps of (Jacobi-scaled) gradient descent that converge to θ*.

    Unrolled differentiation needs second derivatives of the renderer; render()'s torch
    backend has a hand-written first-order backward, so both the layer and the unrolled run
    use ``render_rgb_autograd`` (the same projection and binning, autograd compositing),
    checked here to equal render() in value and gradient.
    """
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.05, 1e-2)
    th = g0.flatten().clone().requires_grad_(True)
    u = torch.randn(images.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    a = render(g0.unflatten(th), cams).rgb
    b = render_rgb_autograd(g0.unflatten(th), cams)
    assert (a - b).abs().max() < 1e-12
    (ga,) = torch.autograd.grad((a * u).sum(), th)
    (gb,) = torch.autograd.grad((b * u).sum(), th)
    assert (ga - gb).norm() / ga.norm() < 1e-10

    g_theta0, g_lam, theta_star, _ = _layer_grads(g0, lam, cams, images, tgt_cam, tgt_img, hessian="exact",
                                                  render_fn=render_rgb_autograd)
    e = Energy(g0.detach(), g0.flatten().detach(), g0.expand_groups(lam), cams, images, render_fn=render_rgb_autograd)
    # Constant step scaling from the Hessian at θ* (detached: a fixed, known optimiser).
    H = _dense_hessian(e, theta_star)
    dinv = 1.0 / torch.diagonal(H)
    step = 1.0 / float(torch.linalg.eigvalsh(dinv.sqrt()[:, None] * H * dinv.sqrt()[None]).max())
    theta0 = g0.flatten().detach().requires_grad_(True)
    lam_ = lam.clone().requires_grad_(True)
    lam_flat = g0.expand_groups(lam_)
    x = theta0
    for _ in range(150):
        photo = 0.5 * (e.residual(x) ** 2).sum() / e.num_pixels
        E = photo + 0.5 * (lam_flat * (x - theta0) ** 2).sum()
        (g,) = torch.autograd.grad(E, x, create_graph=True)
        x = x - step * dinv * g
    assert (x.detach() - theta_star).norm() / theta_star.norm() < 1e-9
    loss = outer_loss(g0.unflatten(x), tgt_cam, tgt_img)
    u_theta0, u_lam = torch.autograd.grad(loss, (theta0, lam_))
    for a, b in ((g_theta0, u_theta0), (g_lam, u_lam)):
        a, b = a.reshape(-1), b.reshape(-1)
        assert (a - b).norm() / b.norm() < 1e-4
        assert float(a @ b / (a.norm() * b.norm())) > 0.9999


def test_step_along_negative_gradient_lowers_outer_loss(scene):
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.05, 1e-2)
    g_theta0, g_lam, theta_star, _ = _layer_grads(g0, lam, cams, images, tgt_cam, tgt_img, hessian="gn")
    template = g0.detach()
    base = float(outer_loss(template.unflatten(theta_star), tgt_cam, tgt_img))
    t = 1e-2 / float(g_theta0.norm())
    x = _solve(template, g0.flatten().detach() - t * g_theta0, lam, cams, images, theta_star)
    assert float(outer_loss(template.unflatten(x), tgt_cam, tgt_img)) < base
    s = 1e-3 / float(g_lam.norm())
    x = _solve(template, g0.flatten().detach(), (lam - s * g_lam).clamp_min(0), cams, images, theta_star)
    assert float(outer_loss(template.unflatten(x), tgt_cam, tgt_img)) < base


def test_layer_adam_forward_and_stats(scene):
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.05, 1e-2)
    theta0 = g0.flatten().detach().requires_grad_(True)
    lam_ = lam.clone().requires_grad_(True)
    gs, stats = optimization_layer_with_stats(g0.unflatten(theta0), lam_, cams, images, 20)
    assert stats.backward is None  # filled by the backward pass
    outer_loss(gs, tgt_cam, tgt_img).backward()
    assert torch.isfinite(theta0.grad).all() and torch.isfinite(lam_.grad).all()
    assert stats.forward.steps == 20 and stats.backward.solve.pcg_iterations > 0
    assert stats.forward.time_s > 0 and stats.backward.time_s > 0
    assert stats.forward.history[-1]["energy"] < stats.forward.history[0]["energy"]
    assert stats.forward.energy == stats.forward.history[-1]["energy"]


def test_failed_solve_falls_back_without_nan(scene):
    cams, g0, lam, images, tgt_cam, tgt_img = _setup(scene, 0.05, 1e-2)
    for kw, expect in ((dict(pcg_max_iter=0), "jacobi"), (dict(damping=float("nan")), "zeros")):
        theta0 = g0.flatten().detach().requires_grad_(True)
        lam_ = lam.clone().requires_grad_(True)
        gs, stats = optimization_layer_with_stats(g0.unflatten(theta0), lam_, cams, images, 3, **kw)
        outer_loss(gs, tgt_cam, tgt_img).backward()
        assert torch.isfinite(theta0.grad).all() and torch.isfinite(lam_.grad).all()
        assert stats.backward.solve.fallback == expect, stats
    # a NaN incoming gradient is zeroed, not propagated
    e = _energy(g0, lam, cams, images)
    rhs = torch.full_like(e.theta0, float("nan"))
    v, info = ift_solve(e, e.theta0, rhs)
    assert torch.isfinite(v).all() and info.fallback is not None


def _dense_gn_diagonal(e, theta):
    """diag(JᵀJ)/P + Λ from the dense autograd Jacobian (the reference of the ±1-probe estimate)."""
    J = torch.autograd.functional.jacobian(e.residual, theta).reshape(-1, theta.numel())
    return (J * J).sum(0) / e.num_pixels + e.lam


def _scaled_problem(scene):
    """Energy, dense GN diagonal (+ damping) and rhs of a solve whose diagonal is far from 1
    everywhere, so that a missing inversion (d instead of 1/d) cannot pass."""
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    damping = 0.05
    diag = _dense_gn_diagonal(e, e.theta0) + damping
    assert float(diag.max()) < 0.5 and float(diag.min()) > 0, (diag.min(), diag.max())
    rhs = torch.randn(e.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    return e, damping, diag, rhs


def test_jacobi_fallback_value_is_rhs_over_the_diagonal(scene):
    e, damping, diag, rhs = _scaled_problem(scene)
    # no PCG iterations: the solve is unusable and v falls back to M⁻¹ rhs = rhs / diag
    v, info = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_max_iter=0, num_probes=256, damping=damping))
    assert info.fallback == "jacobi", info
    ratio = v * diag / rhs      # 1 up to the error of the 256-probe estimate
    err = (ratio - 1).abs()
    assert float(err.mean()) < 0.1 and float(err.max()) < 0.5, (float(err.mean()), float(err.max()))


def test_ift_pcg_gets_the_inverse_of_the_jacobi_diagonal(scene, monkeypatch):
    import diff3r_cli.optim.implicit as implicit

    e, damping, diag, rhs = _scaled_problem(scene)
    seen = {}
    real_pcg = implicit.pcg

    def spy(matvec, b, M_inv=None, **kw):
        seen["M_inv"] = M_inv
        return real_pcg(matvec, b, M_inv=M_inv, **kw)

    monkeypatch.setattr(implicit, "pcg", spy)
    ift_solve(e, e.theta0, rhs, BackwardConfig(num_probes=256, damping=damping, pcg_max_iter=5))
    m_inv = seen["M_inv"]
    assert isinstance(m_inv, torch.Tensor) and m_inv.shape == diag.shape
    ratio = m_inv * diag        # M⁻¹ ≈ 1 / diag(H): 1 up to the estimate's error
    err = (ratio - 1).abs()
    assert float(err.mean()) < 0.1 and float(err.max()) < 0.5, (float(err.mean()), float(err.max()))


def test_layer_guards(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    bad = g0.clone()
    bad.means[0, 0] = float("nan")
    with pytest.raises(NumericalError):
        optimization_layer(bad, lam, cams, images, 2)
    with pytest.raises(UserError):
        optimization_layer(g0, -lam, cams, images, 2)
    with pytest.raises(ValueError, match="shape"):
        optimization_layer(g0, lam[:2], cams, images, 2)
    with pytest.raises(ValueError, match="hessian"):
        optimization_layer(g0, lam, cams, images, 2, hessian="bfgs")
    with pytest.raises(ValueError, match="fallback"):
        optimization_layer(g0, lam, cams, images, 2, fallback="identity")


def test_jacobi_preconditioner_cuts_pcg_iterations_on_the_gn_system():
    cams = two_cameras(8)
    gt = pixel_aligned(cams)
    images = render(gt, cams).rgb.detach()
    g0 = perturb(gt, 0.02, seed=2)
    lam = 10 ** (3 * torch.rand(g0.num, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 4)
    e = _energy(g0, lam, cams, images)
    rhs = torch.randn(e.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    its = {}
    for pre in ("jacobi", "none"):
        v, info = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_rtol=1e-4, pcg_max_iter=500, num_probes=16,
                                                             preconditioner=pre))
        assert info.pcg_converged, info
        its[pre] = info.pcg_iterations
        lin = e.linearize(e.theta0)
        assert (lin.gn_matvec(v) - rhs).norm() / rhs.norm() < 2e-4  # it really solved H v = rhs
    assert its["jacobi"] * 2 <= its["none"], its


def test_pcg_acceptance_follows_the_requested_tolerance_and_counts_misses(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    rhs = torch.randn(e.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    # 2 iterations cannot reach 1e-8: far beyond 10x the tolerance -> fallback, counted as a miss
    v, info = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_rtol=1e-8, pcg_max_iter=2))
    assert info.pcg_miss and info.pcg_residual > 1e-7 and info.fallback == "jacobi", info
    # the same solve is used when the caller accepts its residual explicitly (still a miss)
    v2, info2 = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_rtol=1e-8, pcg_max_iter=2, accept_rtol=1.0))
    assert info2.pcg_miss and info2.fallback is None
    assert not torch.equal(v, v2)
    # a converged solve is no miss
    _, info3 = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_rtol=1e-3, pcg_max_iter=300))
    assert info3.pcg_converged and not info3.pcg_miss and info3.fallback is None


def test_nonfinite_incoming_gradient_entries_are_counted(scene):
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    theta0 = g0.flatten().detach().requires_grad_(True)
    gs, stats = optimization_layer_with_stats(g0.unflatten(theta0), lam, cams, images, 3)
    w = torch.ones_like(gs.means)
    w[0, 1] = float("nan")
    w[1, 2] = float("inf")
    (gs.means * w).sum().backward()
    assert stats.backward.nonfinite_grad == 2
    assert torch.isfinite(theta0.grad).all()


def test_layer_options_route_to_the_backward_or_the_forward_config():
    from diff3r_cli.optim.config import TTOConfig, layer_configs, tto_config
    tto, bwd = layer_configs("lm", pcg_rtol=1e-5, pcg_max_iter=7, gtol=1e-9, damping=0.5, backend="torch")
    assert (bwd.pcg_rtol, bwd.pcg_max_iter, bwd.damping) == (1e-5, 7, 0.5)
    assert tto.optimizer == "lm" and tto.backend == "torch" and tto.lm.gtol == 1e-9
    assert tto.lm.pcg_rtol == TTOConfig().lm.pcg_rtol       # the forward LM keeps its own default
    assert bwd.accept == 10 * 1e-5
    cfg = tto_config(config=TTOConfig(optimizer="lm"), rtol_stop=0.0)
    assert cfg.optimizer == "lm" and cfg.lm.rtol_stop == 0.0 and cfg.adam.rtol_stop == 0.0
    assert tto_config("adam", cfg, adam_eps=1e-8).adam.eps == 1e-8
    with pytest.raises(TypeError):
        layer_configs("adam", mu0=0.1)


def test_jv_verdict_is_kept_on_the_renderer_object(scene):
    from diff3r_cli.optim.energy import DEFAULT_RENDERER, RgbRenderer
    cams, g0, lam, images, _, _ = _setup(scene, 0.05, 1e-2)
    e = _energy(g0, lam, cams, images)
    assert e.renderer is DEFAULT_RENDERER
    shared = RgbRenderer(render_rgb_autograd)
    e1 = Energy(e.template, e.theta0, e.lam, cams, images, render_fn=shared)
    e2 = Energy(e.template, e.theta0, e.lam, cams, images, render_fn=shared)
    v = torch.ones_like(e.theta0)
    assert e1.linearize(e.theta0).jvp(v) is not None
    assert shared.jvp_verdicts == {(e1.backend, torch.float64): "reverse"}
    assert e2.renderer is shared and e2.linearize(e.theta0).jvp_mode == "auto-exact"
    # a plain function gets a renderer (and a verdict) of its own
    e3 = Energy(e.template, e.theta0, e.lam, cams, images, render_fn=render_rgb_autograd)
    assert e3.renderer is not shared and e3.renderer.jvp_verdicts == {}
