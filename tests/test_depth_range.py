"""The near/far convention of a model ("fitted" | "normalised") is applied alike in training data,
`diff3r eval`, and `reconstruct`: checked against quantiles computed here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.engines.policy import estimate_depth_range, normalised_range
from diff3r_cli.scene_io.scene import Scene


def _scene_with_points(depths: np.ndarray) -> Scene:
    """Two identity-rotation cameras at x = 0 and 0.1 looking down +z; points on the axis at ``depths``."""
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]], dtype=torch.float64).repeat(2, 1, 1)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.1
    pts = torch.zeros(len(depths), 3, dtype=torch.float64)
    pts[:, 2] = torch.from_numpy(depths)
    return Scene(torch.rand(2, 48, 64, 3), Cameras(K, w2c, 64, 48), ["a", "b"], "colmap",
                 extras={"points3d": pts})


def test_normalised_range_is_the_fifth_percentile_scaled_like_training():
    assert normalised_range(2.0) == (1.0, 100.0)  # the real corpus' own scale: near 1, far 100
    depths = np.random.default_rng(0).uniform(3.0, 30.0, size=400)
    scene = _scene_with_points(depths)
    z = np.concatenate([depths, depths])  # both cameras see every point at the same depth
    p5 = np.quantile(z, 0.05)
    near, far, src = estimate_depth_range(scene, [0, 1], convention="normalised")
    assert src == "sparse points"
    assert near == pytest.approx(p5 / 2, rel=1e-9) and far == pytest.approx(50 * p5, rel=1e-9)
    near, far, _ = estimate_depth_range(scene, [0, 1])  # fitted: the widened 2-98 % quantiles
    assert near == pytest.approx(0.6 * np.quantile(z, 0.02), rel=1e-9)
    assert far == pytest.approx(1.6 * np.quantile(z, 0.98), rel=1e-9)
    with pytest.raises(ValueError, match="convention"):
        estimate_depth_range(scene, [0, 1], convention="tight")


def test_dataset_near_far_follow_the_convention_with_depth_maps(tmp_path):
    from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig
    from diff3r_cli.scene_io.re10k import write_chunk, write_json_atomic
    from tests.test_re10k import _example

    write_chunk(tmp_path / "train" / "000000.torch", [_example("a", T=10)])  # depth of frame t: 2 + t
    write_json_atomic(tmp_path / "train" / "index.json", {"a": "000000.torch"})
    kw = dict(resolution=16, sampler=ViewSamplerConfig(2, 1, 3, 6), shuffle=False, warn=False)
    fitted = next(iter(RE10KDataset(tmp_path, "train", **kw)))
    norm = next(iter(RE10KDataset(tmp_path, "train", depth_range="normalised", **kw)))
    ctx = fitted["context_indices"].tolist()
    d = np.concatenate([np.full(100, 2.0 + t) for t in ctx])
    p5 = np.quantile(d, 0.05)
    assert float(norm["depth_p5"]) == pytest.approx(p5, rel=1e-4)
    assert float(norm["near"]) == pytest.approx(p5 / 2, rel=1e-4)
    assert float(norm["far"]) == pytest.approx(50 * p5, rel=1e-4)
    assert float(fitted["near"]) == pytest.approx(0.8 * d.min(), rel=1e-4)  # unchanged default
    assert float(fitted["far"]) == pytest.approx(d.max() / 0.8, rel=1e-4)


def test_eval_gives_each_model_its_own_depth_range(monkeypatch):
    from diff3r_cli.evaluate import views as views_mod
    from diff3r_cli.evaluate.views import EvalViews, score_runs
    from diff3r_cli.model.predictor import build_predictor

    tiny = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_layers=0)
    seen = {}
    real = views_mod.predict_gaussians

    def spy(model, images, cams, near, far, device=None):
        seen[model.cfg.depth_range] = (near, far)
        return real(model, images, cams, near, far, device)

    monkeypatch.setattr(views_mod, "predict_gaussians", spy)
    a, b = build_predictor("small", **tiny), build_predictor("small", depth_range="normalised", **tiny)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).repeat(2, 1, 1)
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.2
    v = EvalViews(torch.rand(2, 16, 16, 3), K, w2c, torch.rand(1, 16, 16, 3), K[:1], w2c[:1], 2.0, 9.0,
                  ranges={"ff": (1.5, 150.0)})
    score_runs({"diff3r": a, "ff": b}, [("ff", "ff", False, 0), ("diff3r", "diff3r", True, 0)], v, "cpu")
    assert seen == {"fitted": (2.0, 9.0), "normalised": (1.5, 150.0)}



def test_look_at_fallback_in_both_conventions():
    from diff3r_cli.engines.policy import look_at_distance

    scene = _scene_with_points(np.array([5.0]))
    scene.extras.clear()  # no hints, no points; triangulation off: the look-at point is all there is
    d = look_at_distance(scene.cameras)
    assert estimate_depth_range(scene, [0, 1], triangulate=False) == (0.25 * d, 4.0 * d, "camera look-at")
    assert estimate_depth_range(scene, [0, 1], triangulate=False, convention="normalised") == \
        (*normalised_range(0.5 * d), "camera look-at")
