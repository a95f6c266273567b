"""The TTO anchor's learned calibration: set indexing, the stage applying a model's table, the table
in the weights file, and the fit through the layer (sign, resumption)."""

from __future__ import annotations

import math

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.covisible import ANCHOR_SETS, anchor_sets, calibrated
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.train.anchor_fit import AnchorExample, fit_anchor, target_loss


def test_sets_and_calibration_match_a_loop():
    seen = torch.tensor([True, False, True, False, False, False])
    sets = anchor_sets(seen, backdrop=2)
    assert sets.tolist() == [0, 1, 0, 1, 2, 2]
    lam = torch.rand(6, 5, dtype=torch.float64) + 0.1
    table = torch.randn(len(ANCHOR_SETS), 5, dtype=torch.float64)
    out = calibrated(lam, sets, table)
    for i in range(6):
        for j in range(5):
            assert math.isclose(float(out[i, j]), float(lam[i, j]) * math.exp(float(table[int(sets[i]), j])), rel_tol=1e-12)
    # a nested list (as stored in the model's config) gives the same
    assert torch.equal(calibrated(lam, sets, table.tolist()), out)


def test_the_stage_applies_the_models_table_and_the_file_keeps_it(tmp_path):
    """predict_matched multiplies the anchor by exp(table[set, group]) of the model's config (and not
    with calibrate=False); save/load keeps the table."""
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.engines.policy import DEFAULT_MODEL, normalised_range
    from diff3r_cli.model.io import load_model, resolve_model_path, save_model
    from test_depth_sweep import _cameras, _plane_scene

    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0]])
    imgs, truth = _plane_scene(cams)
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    table = ((0.5, -1.0, 0.0, 2.0, 1.0), (-0.5, 0.25, 1.5, 0.0, -2.0), (1.0, 0.0, -0.5, 0.5, 3.0))
    net.cfg.anchor_log_scales = table
    path = save_model(tmp_path / "calibrated.safetensors", net)
    net2 = load_model(path, device="cpu")
    assert net2.cfg.anchor_log_scales == table
    cal = predict_matched(net2, imgs, cams, near, far, "cpu")
    raw = predict_matched(net2, imgs, cams, near, far, "cpu", calibrate=False)
    assert torch.equal(cal.gaussians.means, raw.gaussians.means)
    sets = anchor_sets(raw.covisible, raw.backdrop)
    assert {0, 1, 2} <= set(sets.tolist())
    ratio = cal.lam / raw.lam
    expect = torch.tensor(table, dtype=ratio.dtype).exp()[sets]
    assert torch.allclose(ratio, expect, rtol=1e-5)


def _scene(dtype=torch.float64):
    """A small textured wall of Gaussians seen by two context cameras and one target camera between."""
    w, h, f = 20, 16, 18.0
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=dtype)
    def cams(xs):
        w2c = torch.eye(4, dtype=dtype).repeat(len(xs), 1, 1)
        for i, x in enumerate(xs):
            w2c[i, 0, 3] = -x
        return Cameras(K.repeat(len(xs), 1, 1), w2c, w, h)
    gen = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(-0.9, 0.9, 12, dtype=dtype), torch.linspace(-1.2, 1.2, 15, dtype=dtype),
                            indexing="ij")
    n = ys.numel()
    means = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((n,), 2.0, dtype=dtype)], 1)
    g = Gaussians(means=means, log_scales=torch.full((n, 3), math.log(0.06), dtype=dtype),
                  quats=torch.tensor([1.0, 0, 0, 0], dtype=dtype).repeat(n, 1),
                  opacity_logits=torch.full((n,), 3.0, dtype=dtype),
                  sh=(torch.rand(n, 1, 3, generator=gen, dtype=dtype) - 0.5))
    return g, cams([-0.2, 0.2]), cams([0.0])


def _example(corrupt: float = 0.25) -> AnchorExample:
    """θ0 is the truth; the context photos have a colour cast TTO would bake in. The best anchor holds
    θ0: a fit must raise Λ (the sign of the whole chain, IFT included)."""
    from diff3r_cli.render import render

    g, ctx, tgt = _scene()
    with torch.no_grad():
        clean_ctx = render(g, ctx).rgb
        target = render(g, tgt).rgb
    cast = torch.tensor([1.0 + corrupt, 1.0, 1.0 - corrupt], dtype=clean_ctx.dtype)
    sets = torch.zeros(g.num, dtype=torch.long)
    sets[g.num // 2:] = 1
    lam0 = torch.full((g.num, 5), 1e-4, dtype=torch.float64)
    return AnchorExample("wall", g, lam0, sets, (clean_ctx * cast).clamp(0, 1), ctx, target, tgt)


def test_the_fit_raises_the_anchor_when_the_context_photos_mislead(tmp_path):
    ex = _example()
    a0 = torch.zeros(len(ANCHOR_SETS), 5, dtype=torch.float64)
    before, _, _ = target_loss(a0, ex, steps=60, backend="torch")
    state = fit_anchor([ex], epochs=4, lr=0.5, steps=60, backend="torch")
    after, _, _ = target_loss(torch.tensor(state["log_scales"], dtype=torch.float64), ex, steps=60, backend="torch")
    table = torch.tensor(state["log_scales"])
    assert float(after) < 0.8 * float(before), (float(before), float(after))
    assert all(r["fallback"] is None for r in state["log"])  # on this small problem PCG converges
    # the sets present (0 and 1) hold the colour harder; the absent backdrop row never moves
    assert float(table[0, 4]) > 0.5 and float(table[1, 4]) > 0.5
    assert torch.equal(table[2], torch.zeros(5, dtype=table.dtype))


def test_an_interrupted_fit_resumes_where_it_stopped(tmp_path):
    ex = _example()
    straight = fit_anchor([ex], epochs=3, lr=0.5, steps=20, backend="torch")
    path = tmp_path / "state.json"
    fit_anchor([ex], epochs=1, lr=0.5, steps=20, state_path=path, backend="torch")
    resumed = fit_anchor([ex], epochs=3, lr=0.5, steps=20, state_path=path, backend="torch")
    assert resumed["step"] == 3 and len(resumed["log"]) == 3
    assert torch.allclose(torch.tensor(resumed["log_scales"]), torch.tensor(straight["log_scales"]), atol=1e-9)


def test_several_tto_budgets_are_used_in_turn():
    ex = _example()
    state = fit_anchor([ex], epochs=3, lr=0.5, steps=[5, 20], backend="torch")
    assert [r["tto_steps"] for r in state["log"]] == [5, 20, 5]
