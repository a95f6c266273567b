"""CUDA-only parity of the torch rasterizer with gsplat (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from diff3r_cli.render import render

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def _scene(deg, seed, n=400):
    from test_render import make_cams, make_scene
    g = make_scene(n=n, deg=deg, seed=seed, dtype=torch.float32).to(device="cuda")
    cams = make_cams(61, 45, 3).to(device="cuda", dtype=torch.float32)
    return g, cams


@pytest.mark.parametrize("deg,seed", [(0, 0), (3, 1), (3, 2)])
def test_images_match_gsplat(deg, seed):
    g, cams = _scene(deg, seed)
    bg = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    a = render(g, cams, background=bg, backend="torch")
    b = render(g, cams, background=bg, backend="gsplat")
    assert (a.alpha > 0.5).any()
    assert (a.rgb - b.rgb).abs().max() < 1e-4
    assert (a.alpha - b.alpha).abs().max() < 1e-4
    covered = b.alpha > 1e-3  # expected depth is ill-conditioned where nothing is hit
    assert ((a.depth - b.depth).abs()[covered] / b.depth[covered]).max() < 1e-4


@pytest.mark.parametrize("deg,seed", [(0, 3), (3, 4)])
def test_gradients_match_gsplat(deg, seed):
    g, cams = _scene(deg, seed)
    gen = torch.Generator(device="cuda").manual_seed(0)
    w_rgb = torch.rand(len(cams), cams.height, cams.width, 3, device="cuda", generator=gen)
    w_a = torch.rand(len(cams), cams.height, cams.width, device="cuda", generator=gen)
    grads = {}
    for backend in ("torch", "gsplat"):
        p = g.map(lambda t: t.clone().requires_grad_(True))
        out = render(p, cams, background=torch.tensor([0.3, 0.3, 0.3], device="cuda"), backend=backend)
        ((out.rgb * w_rgb).sum() + (out.alpha * w_a).sum()).backward()
        grads[backend] = [t.grad for t in p.tensors()]
    for name, gt, gg in zip(FIELDS, grads["torch"], grads["gsplat"]):
        assert gg.norm() > 0, name
        assert (gt - gg).norm() <= 1e-3 * gg.norm(), (name, float((gt - gg).norm() / gg.norm()))


def test_torch_backend_same_on_cpu_and_cuda():
    g, cams = _scene(3, 5)
    a = render(g, cams, backend="torch")
    b = render(g.to(device="cpu"), cams.to(device="cpu"), backend="torch")
    assert (a.rgb.cpu() - b.rgb).abs().max() < 1e-5


def test_jvp_on_cuda_exact_and_fd():
    from diff3r_cli.render.jvp import render_jvp
    g, cams = _scene(0, 6, n=200)
    gen = torch.Generator(device="cuda").manual_seed(1)
    tan = g.map(lambda t: torch.randn(t.shape, device="cuda", generator=gen))
    _, exact = render_jvp(g, cams, tan, backend="gsplat", exact=True)
    _, fd = render_jvp(g, cams, tan, backend="gsplat", exact=False)  # by name: through gsplat itself
    err = (fd.rgb - exact.rgb).abs()
    # finite differences are spiky at the α = 1/255 discontinuities; typical pixels agree
    assert err.median() <= 0.05 * exact.rgb.abs().median() + 1e-6
