"""Depth comes from the photos, not from the depth range (issue 20): with the bundled default model
and reconstruct's pipeline (network, then the photometric sweep), halving near or doubling far
leaves each pixel's depth in place on a textured analytic scene; the network alone does not."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diff3r_cli.depth import predict_matched, sweep_depth, view_depths
from diff3r_cli.engines.policy import DEFAULT_MODEL, normalised_range
from diff3r_cli.model.inference import predict_gaussians
from diff3r_cli.model.io import load_model, resolve_model_path

sys.path.insert(0, str(Path(__file__).parent))
from test_depth_sweep import _cameras, _plane_scene  # noqa: E402


def _depths(net, imgs, cams, near, far, sweep):
    g, _ = predict_gaussians(net, imgs, cams, near, far, "cpu")
    d = view_depths(g, cams)
    return sweep_depth(imgs, cams, d).depth if sweep else d


def test_near_and_far_leave_the_pipelines_depth_in_place():
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, truth = _plane_scene(cams)
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    base = _depths(net, imgs, cams, near, far, True)
    assert float(((base - truth).abs() / truth).median()) < 0.05       # and it is the right depth
    for n, f in ((near / 2, far), (near, far * 2)):
        moved = float(torch.log(_depths(net, imgs, cams, n, f, True) / base).abs().median())
        assert moved <= 0.05, (n, f, moved)
    # the network alone follows near (what the sweep corrects): the test can tell the two apart
    net_only = float(torch.log(_depths(net, imgs, cams, near / 2, far, False)
                               / _depths(net, imgs, cams, near, far, False)).abs().median())
    assert net_only > 0.1


def test_the_range_is_re_set_from_matched_depth_so_unmatched_pixels_stay_put_too():
    """Pixels the sweep cannot decide (here: a flat, texture-less lower half) keep the network's depth;
    predict_matched re-sets the range from the matched pixels, so those stay put as well."""
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, truth = _plane_scene(cams)
    imgs[:, imgs.shape[1] // 2:] = 0.5
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    base = predict_matched(net, imgs, cams, near, far, "cpu")
    unmatched = ~base.sweep.valid
    assert 0.3 < float(unmatched.float().mean()) < 0.7
    # (near·2 is out of the sweep's reach here: this network's depth is already 1.75× too far at near)
    for n, f in ((near / 2, far), (near, far * 2)):
        m = predict_matched(net, imgs, cams, n, f, "cpu")
        moved = torch.log(m.sweep.depth / base.sweep.depth).abs()
        assert float(moved[unmatched].median()) <= 0.05, (n, f)
        assert float(moved.median()) <= 0.05, (n, f)
    # without the re-set range the unmatched pixels follow near: the test can tell
    fixed = [predict_matched(net, imgs, cams, n, far, "cpu", rerange=False).sweep.depth for n in (near, near / 2)]
    assert float(torch.log(fixed[1] / fixed[0]).abs()[unmatched].median()) > 0.3


def test_eval_reports_the_range_the_depth_stage_re_set():
    """`diff3r eval`'s per-scene rows name the range each prediction finally ran with, not the one given."""
    from diff3r_cli.evaluate.views import EvalViews, score_runs

    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, truth = _plane_scene(cams)
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    near, far = normalised_range(float(torch.quantile(truth.double(), 0.05)))
    expected = predict_matched(net, imgs, cams, near / 2, far, "cpu")
    assert abs(expected.near / (near / 2) - 1) > 0.01  # the stage does re-set it here
    v = EvalViews(imgs, cams.K, cams.w2c, imgs[:1], cams.K[:1], cams.w2c[:1], near / 2, far, sweep=True)
    used: dict = {}
    score_runs({"diff3r": net}, [("diff3r", "diff3r", True, 0)], v, "cpu", context=False, ranges_used=used)
    assert used["diff3r"] == (expected.near, expected.far)
