"""The compiled CPU backend beyond the shared reference tests of test_render.py: parity
with the torch backend on a pixel-aligned predictor-like scene (forward, every gradient
group, forward-mode jvp), bit-identical repeats, the backend choice (``auto``, the
environment override, the fallback without a compiler) and the exact-Jv choice of the
optimiser (never a finite difference unless asked for by name)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.energy import Energy
from diff3r_cli.optim.linearization import resolve_jvp
from diff3r_cli.render import ENV_BACKEND, render, resolve_backend
from diff3r_cli.render.torch_backend import render_torch

from render_backends import require_cpu_backend

ROOT = Path(__file__).resolve().parents[1]


def pixel_aligned(size: int = 20, sh_degree: int = 1, seed: int = 0) -> tuple[Gaussians, Cameras]:
    """One Gaussian per pixel of 2 views, unprojected to depth 2-4 (like the predictor's output)."""
    gen = torch.Generator().manual_seed(seed)
    f = float(size)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                            torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
    means = []
    for v in range(2):
        d = (3.0 + 0.8 * torch.sin(xs / size * 5 + v) * torch.cos(ys / size * 3)).reshape(-1)
        pts = torch.stack([(xs.reshape(-1) - size / 2) / f * d, (ys.reshape(-1) - size / 2) / f * d, d], -1)
        c2w = torch.linalg.inv(w2c[v])
        means.append(pts @ c2w[:3, :3].T + c2w[:3, 3])
    means = torch.cat(means)
    n = len(means)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    g = Gaussians(means, torch.log(torch.full((n, 3), 0.75 * 3.0 / f)) + 0.2 * r(n, 3), r(n, 4), r(n) + 1.0,
                  0.4 * r(n, (sh_degree + 1) ** 2, 3))
    return g, Cameras(K[None].repeat(2, 1, 1), w2c, size, size)


def _outputs(o):
    return torch.cat([o.rgb.reshape(-1), o.depth.reshape(-1), o.alpha.reshape(-1)])


def _grads(fn, g, cams, weights):
    p = g.map(lambda t: t.clone().requires_grad_(True))
    (_outputs(fn(p, cams)) * weights).sum().backward()
    return [t.grad for t in p.tensors()]


def _cpu(g, cams, **kw):
    return render(g, cams, backend="cpu", **kw)


def test_pixel_aligned_scene_matches_torch_backend_forward_gradients_jvp():
    require_cpu_backend()
    g, cams = pixel_aligned()
    a, b = _outputs(_cpu(g, cams)), _outputs(render_torch(g, cams))
    assert (a - b).abs().max() < 1e-10
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, ga, gb in zip(("means", "log_scales", "quats", "opacity_logits", "sh"),
                            _grads(_cpu, g, cams, w), _grads(render_torch, g, cams, w)):
        assert gb.abs().max() > 0, name
        assert (ga - gb).abs().max() <= 1e-9 * gb.abs().max(), name
    tan = g.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(2), dtype=t.dtype))
    for fn in (_cpu, render_torch):
        with fwAD.dual_level():
            dual = Gaussians(*(fwAD.make_dual(t, v) for t, v in zip(g.tensors(), tan.tensors())))
            o = fn(dual, cams)
            jv = torch.cat([fwAD.unpack_dual(t).tangent.reshape(-1) for t in (o.rgb, o.depth, o.alpha)])
        if fn is _cpu:
            jv_cpu = jv
    assert jv.abs().max() > 1e-3
    assert (jv_cpu - jv).abs().max() <= 1e-9 * jv.abs().max()


def test_float32_matches_float64_on_pixel_aligned_scene():
    require_cpu_backend()
    g, cams = pixel_aligned(24, sh_degree=0, seed=3)
    a = _outputs(_cpu(g, cams))
    b = _outputs(_cpu(g.to(dtype=torch.float32), cams.to(dtype=torch.float32))).double()
    assert (a - b).abs().max() < 1e-4


def test_bit_identical_repeats_at_fixed_thread_count():
    require_cpu_backend()
    g, cams = pixel_aligned(32, seed=4)
    g = g.to(dtype=torch.float32)
    cams = cams.to(dtype=torch.float32)
    w = torch.randn(2 * 32 * 32 * 5, generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(3):
            out = _outputs(_cpu(g, cams))
            grads = _grads(_cpu, g, cams, w)
            runs.append([out] + grads)
    finally:
        torch.set_num_threads(old)
    for r in runs[1:]:
        for x, y in zip(runs[0], r):
            assert torch.equal(x, y)


def test_auto_picks_compiled_backend_and_env_overrides(monkeypatch):
    require_cpu_backend()
    like = torch.zeros(1)
    monkeypatch.setenv(ENV_BACKEND, "auto")
    assert resolve_backend("auto", like) == "cpu"
    monkeypatch.setenv(ENV_BACKEND, "torch")
    assert resolve_backend("auto", like) == "torch"
    assert resolve_backend("cpu", like) == "cpu"  # an explicit choice wins over the variable
    monkeypatch.setenv(ENV_BACKEND, "nope")
    with pytest.raises(ValueError, match=ENV_BACKEND):
        resolve_backend("auto", like)
    with pytest.raises(ValueError):
        resolve_backend("vulkan", like)


def test_fallback_without_a_compiler_warns_once_and_renders_with_torch(tmp_path):
    # A fresh cache (nothing built) and no usable compiler: auto must fall back to the torch
    # backend with exactly one warning line, and render the same image.
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, %r)
        from test_render_cpu import pixel_aligned
        from diff3r_cli.render import render, resolve_backend
        from diff3r_cli.render.torch_backend import render_torch
        g, cams = pixel_aligned(8)
        assert resolve_backend("auto", g.means) == "torch"
        a = render(g, cams).rgb
        b = render(g, cams).rgb
        assert torch.equal(a, render_torch(g, cams).rgb) and torch.equal(a, b)
        print("OK")
    """ % str(Path(__file__).parent))
    env = dict(os.environ, DIFF3R_CACHE_DIR=str(tmp_path / "cache"), CXX=str(tmp_path / "no-such-c++"))
    env.pop(ENV_BACKEND, None)
    env.pop("DIFF3R_NO_COMPILE", None)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "OK"
    warnings = [line for line in p.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "using the slower torch backend" in warnings[0], p.stderr
    assert "Traceback" not in p.stderr


def test_auto_jvp_is_never_a_finite_difference():
    for backend in ("cpu", "torch", "gsplat"):
        assert resolve_jvp("auto", backend) != "fd"
    assert resolve_jvp("auto", "gsplat") == "forward"  # the torch backend supplies exact Jv there
    assert resolve_jvp("fd", "cpu") == "fd"              # only by name


class _NoForwardMode(torch.autograd.Function):
    """Identity whose backward is differentiable but which has no jvp (like a renderer
    without forward-mode AD)."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 1.0


def _no_forward_render(g, cams, bg, backend):
    return _NoForwardMode.apply(render(g, cams, background=bg, backend="torch").rgb)


def _energy(render_fn=None, backend="auto"):
    g, cams = pixel_aligned(10, sh_degree=0, seed=5)
    images = torch.rand(2, 10, 10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = g.expand_groups(torch.full((g.num, 5), 1e-3, dtype=torch.float64))
    return Energy(g, g.flatten(), lam, cams, images, backend=backend, render_fn=render_fn)


def test_exact_jv_choice_for_compiled_backend_and_for_a_renderer_without_forward_mode():
    require_cpu_backend()
    e = _energy()
    assert e.backend == "cpu"
    theta = e.theta0 + 1e-3
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = e.linearize(theta, "forward").jvp(v)
    lin = e.linearize(theta)              # auto
    jv = lin.jvp(v)
    assert lin.jvp_mode == "reverse"      # the compiled backward is differentiable in its gradient
    assert (jv - ref).norm() <= 1e-10 * ref.norm()
    # a renderer without forward mode: pinned to the exact double-vjp, not a finite difference
    e2 = _energy(render_fn=_no_forward_render, backend="torch")
    with pytest.raises(RuntimeError):
        e2.linearize(theta, "forward").jvp(v)
    lin2 = e2.linearize(theta)
    jv2 = lin2.jvp(v)
    assert lin2.jvp_mode == "reverse"
    ref2 = e2.linearize(theta, "reverse").jvp(v)
    assert torch.allclose(jv2, ref2)
    tref = _energy(backend="torch").linearize(theta, "forward").jvp(v)
    assert (jv2 - tref).norm() <= 1e-10 * tref.norm()


def test_cli_backend_option_sets_the_renderer_for_every_command(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from diff3r_cli.cli import app
    from diff3r_cli.ply import write_ply

    # setenv (not delenv) so that monkeypatch restores the variable the CLI sets below
    monkeypatch.setenv(ENV_BACKEND, "auto")
    g, _ = pixel_aligned(4)
    write_ply(tmp_path / "s.ply", g.to(dtype=torch.float32))
    res = CliRunner().invoke(app, ["--backend", "torch", "inspect", str(tmp_path / "s.ply")])
    assert res.exit_code == 0, res.output
    assert os.environ.get(ENV_BACKEND) == "torch"
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    res = CliRunner().invoke(app, ["--backend", "metal", "inspect", str(tmp_path / "s.ply")])
    assert res.exit_code != 0


def test_fused_forward_ad_path_matches_the_function_path():
    # Under forward_ad with no reverse graph, render_cpu composites primal and tangent in one
    # pass; torch.func.jvp goes through the autograd.Function (forward, then jvp). Same numbers.
    require_cpu_backend()
    from diff3r_cli.render.jvp import render_jvp

    g, cams = pixel_aligned(16, seed=6)
    tan = g.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(7), dtype=t.dtype))
    out, d = render_jvp(g, cams, tan, backend="cpu")
    plain = _cpu(g, cams)
    assert torch.equal(out.rgb, plain.rgb) and torch.equal(out.alpha, plain.alpha)

    def f(*ts):
        o = _cpu(Gaussians(*ts), cams)
        return o.rgb, o.depth, o.alpha

    _, ref = torch.func.jvp(f, g.tensors(), tan.tensors())
    for a, b in zip((d.rgb, d.depth, d.alpha), ref):
        assert b.abs().max() > 1e-3
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()
