"""benchmarks/layer.py and its references on a 16² two-view scene: the adjoint through Adam
equals autograd through the unrolled steps, the converged reference agrees with the
unrolled gradient where Adam nearly converges, and one row of each solver family is measured."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import layer  # noqa: E402
import layer_reference as ref  # noqa: E402
from diff3r_cli.optim.energy import Energy  # noqa: E402
from diff3r_cli.optim.tto import adam_lr_vector, adam_run, scene_extent  # noqa: E402
from diff3r_cli.render.autograd_rgb import render_rgb_autograd  # noqa: E402


@pytest.fixture(scope="module")
def example():
    return layer.synthetic_example(16)


def _energy(ex, render_fn=None) -> Energy:
    g = ex.g0.unflatten(ex.g0.flatten().double())
    return Energy(g, g.flatten(), g.expand_groups(ex.lam.double()), ex.cams, ex.images.double(), render_fn=render_fn)


def test_adam_trace_is_adam_run(example):
    e = _energy(example)
    lr = adam_lr_vector(e.template, scene_extent(e.template, e.cameras))
    x, _ = adam_run(e, e.theta0, 6, lr)
    tr = ref.adam_trace(e, e.theta0, 6, lr)
    assert torch.allclose(tr.xs[6], x, rtol=0, atol=1e-12)


def test_adjoint_equals_unrolled_autograd(example):
    # Both on the twice-differentiable renderer: the adjoint's central-difference Hessian
    # products against double backward through K = 5 steps.
    e = _energy(example, render_rgb_autograd)
    lr = adam_lr_vector(e.template, scene_extent(e.template, e.cameras), 4.0)
    tmpl = e.template

    def loss(x):
        r = render_rgb_autograd(tmpl.unflatten(x), example.tgt_cams) - example.tgt_images.double()
        return (r * r).mean()

    def loss_grad(x):
        with torch.enable_grad():
            t = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(t), t)[0]

    want = ref.unrolled_autograd(e, 5, lr, loss, example.lam)
    got = ref.adam_adjoint(e, ref.adam_trace(e, e.theta0, 5, lr), 5, loss_grad, example.lam)
    for a, b in ((got.theta0, want.theta0), (got.lam, want.lam)):
        assert float((a - b).norm() / b.norm()) < 1e-5


def test_converged_reference_matches_unrolled_near_convergence():
    # Where Adam gets close to θ* (a large Λ conditions E well), autograd through its steps
    # and the exact IFT gradient at the converged θ* must agree: the LM rows' reference.
    ex = layer.synthetic_example(16, lam_pixels=300.0)
    e = _energy(ex)
    lg = layer.loss_grad_fn(ex, e.template)
    conv, info = ref.converged_reference(e, e.theta0, lg, ex.lam, steps_per_stage=150)
    assert info["ratio"] < 0.01 and info["hessian"] == "exact"
    ea = _energy(ex, render_rgb_autograd)
    lr = adam_lr_vector(ea.template, scene_extent(ea.template, ea.cameras), 3.0)
    unrolled = ref.adam_adjoint(ea, ref.adam_trace(ea, ea.theta0, 60, lr), 60, lg, ex.lam)
    cos = ref.compare(unrolled, conv, ex.lam)
    assert cos["cos_theta0"] > 0.99 and cos["cos_lam"] > 0.95, cos


def test_measure_example_rows(example):
    solvers = layer.parse_solvers(["adam:3", "lm:2"])
    rows, info = layer.measure_example(example, solvers, threads=(1,), ref_stage_steps=20)
    assert [r["solver"] for r in rows] == ["adam", "lm"]
    for r in rows:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        for key in ("cos_theta0", "cos_lam", "conv_cos_theta0", "conv_cos_lam"):
            assert -1.0 <= r[key] <= 1.0
        assert r["step_s"] > 0 and r["pcg_iterations"] >= 0
    assert rows[0]["reference"] == "unrolled" and rows[1]["reference"] == "converged"
    agg = layer.aggregate(rows, (1,))
    table = layer.format_table(agg, (1,))
    assert "| adam | 3 |" in table and "| lm | 2 |" in table
    assert layer.recommend(agg)["solver"] in ("adam", "lm")


def test_goal_is_judged_on_the_converged_reference():
    # an Adam row near stationarity: ~0 cosine to its own unrolled path, 0.95 to the converged θ*
    base = dict(key="a", steps=100, reference="unrolled", pcg_miss=0, fallback=None, step_s=1.0, pcg_iterations=30,
                cos_loglam=0.0, conv_cos_loglam=0.9)
    rows = [dict(base, solver="fast", ratio=0.05, cos_theta0=0.01, cos_lam=0.0, conv_cos_theta0=0.95, conv_cos_lam=0.93),
            dict(base, solver="loose", ratio=0.3, cos_theta0=0.99, cos_lam=0.99, conv_cos_theta0=0.99,
                 conv_cos_lam=0.99, step_s=0.5)]
    agg = {r["solver"]: r for r in layer.aggregate(rows, (1,))}
    assert agg["fast"]["meets_goal"] and not agg["loose"]["meets_goal"]
    assert layer.recommend(list(agg.values()))["solver"] == "fast"
