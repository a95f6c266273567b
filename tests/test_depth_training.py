"""Training without the depth-range shortcut (issue 20): range jitter, the bounded depth head,
and the loss toward the photometric sweep's depth."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig, jitter_factors
from diff3r_cli.model.predictor import DEPTH_LOG_BOUND, build_predictor
from diff3r_cli.train.config import TrainConfig
from diff3r_cli.train.depth_loss import sweep_target_loss

sys.path.insert(0, str(Path(__file__).parent))
from test_depth_sweep import _cameras, _plane_scene  # noqa: E402

TINY = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_layers=0)


def test_jitter_factors_stay_in_their_ranges_and_decorrelate_depth_from_near():
    g = torch.Generator().manual_seed(0)
    a = 1.1
    f = np.array([jitter_factors(a, g) for _ in range(2000)])
    world, near, far = np.log(f).T
    assert world.min() >= -a and world.max() <= a and near.min() >= -a and near.max() <= 0.1 * a + 1e-9
    assert far.min() >= -0.25 * a - 1e-9 and far.max() <= a
    # what the network sees: depth/near varies (a constant ratio is the shortcut)
    assert np.std(-near) > 0.25


def _root(tmp_path):
    from diff3r_cli.scene_io.re10k import write_chunk, write_json_atomic
    from tests.test_re10k import _example

    write_chunk(tmp_path / "train" / "000000.torch", [_example("a", T=10)])
    write_json_atomic(tmp_path / "train" / "index.json", {"a": "000000.torch"})
    return tmp_path


def test_dataset_range_jitter_scales_the_world_and_moves_near_far(tmp_path):
    root = _root(tmp_path)
    kw = dict(resolution=16, sampler=ViewSamplerConfig(2, 1, 3, 6), shuffle=False, warn=False,
              depth_range="normalised")
    plain = next(iter(RE10KDataset(root, "train", **kw)))
    jit = next(iter(RE10KDataset(root, "train", range_jitter=1.1, **kw)))
    s = float(jit["scale"])
    assert s != pytest.approx(1.0)
    # rotations kept, translations and the depth scale multiplied by the world factor
    assert torch.allclose(jit["context_w2c"][:, :3, :3], plain["context_w2c"][:, :3, :3])
    assert torch.allclose(jit["context_w2c"][:, :3, 3], plain["context_w2c"][:, :3, 3] * s, atol=1e-6)
    assert float(jit["depth_p5"]) == pytest.approx(float(plain["depth_p5"]) * s, rel=1e-5)
    # near/far moved on top of the world scale, within the documented factors
    rn = math.log(float(jit["near"]) / (float(plain["near"]) * s))
    rf = math.log(float(jit["far"]) / (float(plain["far"]) * s))
    assert -1.1 - 1e-6 <= rn <= 0.11 + 1e-6 and -0.275 - 1e-6 <= rf <= 1.1 + 1e-6
    # reproducible: the same example and epoch draw the same factors
    again = next(iter(RE10KDataset(root, "train", range_jitter=1.1, **kw)))
    assert float(again["near"]) == float(jit["near"]) and float(again["scale"]) == s


def test_log_depth_head_moves_the_cost_volume_depth_by_a_bounded_factor():
    torch.manual_seed(0)
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0]])
    imgs, _ = _plane_scene(cams)
    net = build_predictor("small", depth_residual="log", **TINY).eval()
    with torch.no_grad():
        net.head.bias[0] = 50.0                               # a huge depth residual: saturates the bound
        out = net(imgs[None], cams.K[None].float(), cams.w2c[None].float(), torch.tensor([1.0]), torch.tensor([100.0]))
        net.head.bias[0] = 0.0
        base = net(imgs[None], cams.K[None].float(), cams.w2c[None].float(), torch.tensor([1.0]),
                   torch.tensor([100.0]))
    ratio = torch.log(out.depth / base.depth)
    assert torch.allclose(ratio, torch.full_like(ratio, DEPTH_LOG_BOUND), atol=1e-3)
    # the default "t" head is unbounded within near..far: the same residual moves depth further
    net_t = build_predictor("small", **TINY).eval()
    net_t.load_state_dict(net.state_dict())
    with torch.no_grad():
        net_t.head.bias[0] = -50.0
        far_t = net_t(imgs[None], cams.K[None].float(), cams.w2c[None].float(), torch.tensor([1.0]),
                      torch.tensor([100.0]))
    assert float(torch.log(far_t.depth / base.depth).median()) > 1.0


def test_sweep_target_loss_pulls_depth_toward_the_matched_depth():
    cams = _cameras([[0.0, 0, 0], [0.5, 0.05, 0], [-0.45, -0.05, 0.1]])
    imgs, truth = _plane_scene(cams)
    assert float(sweep_target_loss(truth, imgs, cams)) < 0.01
    d = (truth * 1.3).requires_grad_(True)
    loss = sweep_target_loss(d, imgs, cams)
    assert loss.item() == pytest.approx(math.log(1.3), abs=0.02)
    loss.backward()
    assert float((d.grad > 0).float().mean()) > 0.5 and float((d.grad < 0).float().mean()) == 0.0
    flat = torch.full_like(imgs, 0.5)                         # nothing accepted: a zero in the graph
    z = sweep_target_loss(d, flat, cams)
    assert z.item() == 0.0 and z.requires_grad


def test_new_options_are_kept_on_resume_and_validated():
    from diff3r_cli.errors import UserError

    cfg = TrainConfig.from_options(range_jitter=0.0, sweep_depth_weight=0.0)
    saved = {"range_jitter": 1.1, "sweep_depth_weight": 0.5, "depth_residual": "log"}
    r = cfg.resumed(saved)
    assert r.data.range_jitter == 1.1 and r.loss.sweep_depth_weight == 0.5 and r.model.depth_residual == "log"
    old = cfg.resumed({})                                     # runs saved before the options existed
    assert old.data.range_jitter == 0.0 and old.loss.sweep_depth_weight == 0.0
    with pytest.raises(UserError):
        TrainConfig.from_options(depth_residual="linear").validate()
    with pytest.raises(UserError):
        TrainConfig.from_options(range_jitter=-1.0).validate()
