"""Released backbones (MVSplat) as diff3r predictors: parity with the authors' encoder, the SH
conversion, the Λ head, scene scaling, and safe loading of the published file layout.

The parity fixtures (tests/fixtures/backbones/mvsplat_{2,3}v.npz) were made once by
tools/make_backbone_fixtures.py running the authors' source with weights that are a function of
each tensor's name (diff3r_cli/model/backbones/synthetic.py); we rebuild the same weights here.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.geometry import quat_to_rotmat
from diff3r_cli.model.backbones.checkpoints import load_backbone_file, save_published_layout, sniff
from diff3r_cli.model.backbones.convert import QUIRK_P, rotate_sh_like_release
from diff3r_cli.model.backbones.mvsplat import MVSplatArch
from diff3r_cli.model.backbones.predictor import BackboneConfig, BackbonePredictor
from diff3r_cli.model.backbones.synthetic import synthetic_state_dict
from diff3r_cli.render.sh import eval_sh

FIX = Path(__file__).parent / "fixtures" / "backbones"
TINY = MVSplatArch(d_feature=32, num_depth_candidates=8, costvolume_unet_feat_dim=32, costvolume_unet_channel_mult=(1, 1),
                   costvolume_unet_attn_res=(2,), depth_unet_feat_dim=32, depth_unet_attn_res=(4,),
                   depth_unet_channel_mult=(1, 1, 1), num_transformer_layers=2)


def tiny_model(seed: int = 0) -> BackbonePredictor:
    torch.manual_seed(seed)
    return BackbonePredictor(BackboneConfig(variant="tiny", arch=dict(TINY.__dict__))).eval()


def _fixture_inputs(d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(d["in_image"]).permute(0, 1, 3, 4, 2)
    H, W = img.shape[2:4]
    K = torch.from_numpy(d["in_intrinsics"]).clone()
    K[..., 0, :] *= W
    K[..., 1, :] *= H
    return img, K, torch.inverse(torch.from_numpy(d["in_extrinsics"]))


SYNTHETIC: dict[str, BackbonePredictor] = {}


def synthetic_backbone(family: str) -> BackbonePredictor:
    """The released architecture of ``family`` with the fixtures' name-derived weights (cached)."""
    if family not in SYNTHETIC:
        cfg = BackboneConfig() if family == "mvsplat" else BackboneConfig(family="depthsplat", variant="small",
                                                                          train_near=0.5)
        m = BackbonePredictor(cfg).eval()
        sd = m.net.state_dict()
        m.net.load_state_dict(synthetic_state_dict({k: t.shape for k, t in sd.items()}), strict=True)
        SYNTHETIC[family] = m
    return SYNTHETIC[family]


@pytest.mark.parametrize("family,views", [("mvsplat", 2), ("mvsplat", 3), ("depthsplat", 2), ("depthsplat", 3)])
def test_parity_with_reference(family, views):
    """Means, covariances, opacities and SH of the authors' encoders, to float32 round-off.

    Measured, MVSplat: 2 views max |Δmean|/distance 2.4e-4 (our own float32 vs float64 run differs
    by more), |Δopacity| 2.1e-6, |Δcov| 1.2e-5, |ΔSH| 3.8e-6; 3 views 1.5e-4, 2.2e-6, 3.6e-5, 4.6e-6.
    DepthSplat-S: 2 views 2.5e-5, 1.9e-6, 4.6e-6, 9.5e-6; 3 views 2.6e-5, 1.8e-6, 5.8e-6, 9.4e-6.
    """
    model = synthetic_backbone(family)
    d = np.load(FIX / f"{family}_{views}v.npz")
    ref_shapes = json.loads(str(d["state_shapes"]))
    assert ref_shapes == {f"encoder.{k}": list(t.shape) for k, t in model.net.state_dict().items()}
    img, K, w2c = _fixture_inputs(d)
    near = float(d["in_near"][0, 0])
    with torch.no_grad():
        out = model(img, K, w2c, torch.tensor([near]), torch.tensor([100.0]))
    g = out.gaussians[0]
    H, W = img.shape[2:4]
    ref_means = torch.from_numpy(d["means"])
    origins = torch.from_numpy(d["in_extrinsics"])[0, :, :3, 3].repeat_interleave(H * W, 0)
    dist = (ref_means - origins).norm(dim=-1)
    assert float(((g.means - ref_means).norm(dim=-1) / dist).max()) < 2e-3
    assert float((torch.sigmoid(g.opacity_logits) - torch.from_numpy(d["opacities"])).abs().max()) < 5e-5
    idx = torch.from_numpy(d["sub_index"])
    R = quat_to_rotmat(g.quats[idx] / g.quats[idx].norm(dim=-1, keepdim=True))
    cov = R @ torch.diag_embed(torch.exp(2 * g.log_scales[idx])) @ R.transpose(1, 2)
    ref_cov = torch.from_numpy(d["covariances"])
    assert float((cov - ref_cov).abs().max()) < 1e-4 * float(ref_cov.abs().max())
    ref_sh = torch.from_numpy(d["harmonics"])[:, :, :16].transpose(1, 2)
    assert g.sh.shape[1] == min(16, ref_sh.shape[1])
    assert float((g.sh[idx] - ref_sh).abs().max()) < 5e-5
    # the depth diff3r reports is the camera z of each Gaussian; MVSplat's own depth is a ray
    # distance, DepthSplat's a z-depth
    z = out.depth[0].reshape(-1)
    ref_depth = torch.from_numpy(d["depth"]).reshape(-1)
    if family == "mvsplat":
        assert float((ref_depth - dist).abs().max()) < 1e-3 * float(dist.max())
        assert float((z - dist).abs().max()) > 1.0 and bool((z <= dist + 1e-3).all())
    else:
        assert float(((z - ref_depth).abs() / ref_depth).max()) < 1e-3
        assert float((ref_depth - dist).abs().max()) > 0.1


def test_sh_conversion_colour_matches_release_convention():
    """Our renderer's colour of our converted SH, in many directions, equals the colour of the
    authors' e3nn-rotated coefficients (fixture sh_rotation.npz) in their renderer's basis
    (degrees <= 3, which is all their rasterizer evaluates); the plain rotation by R does not."""
    d = np.load(FIX / "sh_rotation.npz")
    cam = torch.from_numpy(d["cam"]).transpose(1, 2).double()                      # (n,25,3) camera frame
    R = torch.from_numpy(d["R"]).double()
    ref = torch.from_numpy(d["world"]).transpose(1, 2)[:, :16].double()            # (n,16,3) theirs, world
    dirs = torch.nn.functional.normalize(torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    n = cam.shape[0]

    def colours(sh: torch.Tensor) -> torch.Tensor:
        return 0.5 + eval_sh(sh[:, None].expand(-1, 300, -1, -1), dirs[None].expand(n, -1, -1))

    ours = torch.stack([rotate_sh_like_release(cam[i:i + 1], R[i], 3)[0] for i in range(n)])
    assert ours.shape == (n, 16, 3)
    assert float((colours(ours) - colours(ref)).abs().max()) < 1e-4                # e3nn runs in float32
    plain = torch.stack([rotate_sh_like_release(cam[i:i + 1], QUIRK_P.T @ R[i] @ QUIRK_P, 3)[0] for i in range(n)])
    assert float((colours(plain) - colours(ref)).abs().max()) > 0.1


def test_lam_head_zero_initialised_outside_pretrained_tree():
    m = tiny_model()
    assert not any(k.startswith("lam_head") for k in m.net.state_dict())
    img = torch.rand(1, 2, 32, 48, 3)
    K = torch.tensor([[40.0, 0, 24], [0, 40, 16], [0, 0, 1]]).expand(1, 2, 3, 3)
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -0.3
    out = m(img, K, w2c, torch.tensor([2.0]), torch.tensor([50.0]))
    lam = out.lam[0]
    assert lam.shape == (2 * 32 * 48, 5)
    assert torch.allclose(lam, torch.full_like(lam, 1.0 / (2 * 32 * 48)), rtol=1e-5)
    lam.sum().backward()
    assert float(m.lam_head.conv2.weight.grad.abs().sum()) > 0


def test_scene_scale_equivariance_and_padding():
    """Scaling the scene (cameras, near, far) by 3 scales means, scales and depth by 3 and leaves
    the rest; a size that is not a multiple of 16 is padded and cropped back."""
    m = tiny_model(1)
    torch.manual_seed(2)
    img = torch.rand(1, 2, 30, 44, 3)
    K = torch.tensor([[40.0, 0, 22], [0, 41, 15], [0, 0, 1]]).expand(1, 2, 3, 3)
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -0.4
    with torch.no_grad():
        a = m(img, K, w2c, torch.tensor([1.5]), torch.tensor([60.0]))
        w2c3 = w2c.clone()
        w2c3[..., :3, 3] *= 3
        b = m(img, K, w2c3, torch.tensor([4.5]), torch.tensor([180.0]))
    ga, gb = a.gaussians[0], b.gaussians[0]
    assert ga.num == 2 * 30 * 44 and a.depth.shape == (1, 2, 30, 44)
    assert m.last_scene_scale == pytest.approx(1 / 4.5)
    assert torch.allclose(gb.means, 3 * ga.means, rtol=1e-4, atol=1e-4)
    assert torch.allclose(gb.log_scales, ga.log_scales + math.log(3), atol=1e-4)
    assert torch.allclose(gb.opacity_logits, ga.opacity_logits, atol=1e-5)
    assert torch.allclose(b.depth, 3 * a.depth, rtol=1e-4)


def test_published_layout_loads_strictly_and_safely(tmp_path):
    m = tiny_model(3)
    p = save_published_layout(m, tmp_path / "mvsplat.ckpt")
    assert sniff(p) == "torch"
    with torch.no_grad():
        sd = torch.load(p, weights_only=True)["state_dict"]
    assert all(k.startswith(("encoder.backbone.", "encoder.depth_predictor.")) for k in sd)
    m2 = load_backbone_file(p)
    assert m2.cfg.family == "mvsplat" and m2.arch == m.arch
    for k, t in m.net.state_dict().items():
        assert torch.equal(t, m2.net.state_dict()[k])


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_lightning_extras_are_skipped_without_running_code(tmp_path):
    """A non-tensor object in the file (here one whose unpickling would create a file) makes
    weights_only refuse; the restricted unpickler skips it, runs nothing, keeps the tensors."""
    m = tiny_model(4)
    _Evil.target = str(tmp_path / "pwned")
    p = save_published_layout(m, tmp_path / "extra.ckpt", extra={"hyper_parameters": _Evil()})
    m2 = load_backbone_file(p)
    assert not (tmp_path / "pwned").exists()
    assert {"pathlib.Path", "__builtin__.getattr"} <= set(m2.meta["skipped_objects"])
    assert torch.equal(m2.net.backbone.backbone.conv1.weight, m.net.backbone.backbone.conv1.weight)


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path):
    m = tiny_model(5)
    p = save_published_layout(m, tmp_path / "ok.ckpt")
    data = p.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_backbone_file(bad)
    assert "\n" not in e.value.one_line() and "truncated.ckpt" in e.value.one_line()
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(UserError, match="not an MVSplat"):
        load_backbone_file(other)
    wrong = tmp_path / "wrong.ckpt"
    sd = {f"encoder.{k}": v for k, v in m.net.state_dict().items()}
    sd.pop("encoder.depth_predictor.to_disparity.2.bias")
    torch.save({"state_dict": sd}, wrong)
    with pytest.raises(UserError, match="do not match"):
        load_backbone_file(wrong)
    ds = tmp_path / "depthsplat.pth"        # recognised by content, incomplete: one clear line
    torch.save({"model": {"encoder.depth_predictor.pretrained.cls_token": torch.zeros(1, 1, 384)}}, ds)
    with pytest.raises(UserError, match="DepthSplat weights do not match"):
        load_backbone_file(ds)


def test_gradients_reach_the_pretrained_tree_and_the_lam_head():
    """Training through the layer needs d(Gaussians, Λ)/d(weights): every output group is
    differentiable w.r.t. the released tree (and Λ w.r.t. our head)."""
    m = tiny_model(6).train()
    img = torch.rand(1, 2, 32, 48, 3)
    K = torch.tensor([[40.0, 0, 24], [0, 40, 16], [0, 0, 1]]).expand(1, 2, 3, 3)
    w2c = torch.eye(4).repeat(1, 2, 1, 1)
    w2c[0, 1, 0, 3] = -0.3
    out = m(img, K, w2c, torch.tensor([2.0]), torch.tensor([50.0]))
    g = out.gaussians[0]
    loss = sum(t.square().mean() for t in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh)) + out.lam[0].sum()
    loss.backward()
    assert float(m.net.depth_predictor.to_gaussians[2].weight.grad.abs().sum()) > 0
    assert float(m.net.depth_predictor.to_disparity[2].weight.grad.abs().sum()) > 0
    assert float(m.net.backbone.backbone.conv1.weight.grad.abs().sum()) > 0
    assert float(m.lam_head.conv2.weight.grad.abs().sum()) > 0
