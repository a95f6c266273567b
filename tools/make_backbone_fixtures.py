"""Make the backbone parity fixtures by running the AUTHORS' encoders (not ours) on the CPU.

Recipe (once; the outputs are committed under tests/fixtures/backbones/, nothing of the
authors' code is):

    # their source, outside this repository
    git clone https://github.com/donydchen/mvsplat /work/ref/mvsplat      # MIT
    git clone https://github.com/cvg/depthsplat /work/ref/depthsplat      # MIT
    git clone https://github.com/facebookresearch/dinov2 /work/ref/dinov2 # Apache-2.0 (DepthSplat's ViT)
    # a separate environment with what their encoder imports
    python3 -m venv /work/refvenv
    echo <site-packages of a venv with torch 2.13 CPU> > /work/refvenv/lib/python3.11/site-packages/base.pth
    /work/refvenv/bin/pip install einops jaxtyping e3nn
    PYTHONPATH=. /work/refvenv/bin/python tools/make_backbone_fixtures.py --mvsplat /work/ref/mvsplat
    # (--sh-only: just sh_rotation.npz, their camera->world SH rotation on random coefficients)
    PYTHONPATH=. /work/refvenv/bin/python tools/make_backbone_fixtures.py \
        --depthsplat /work/ref/depthsplat --dinov2 /work/ref/dinov2        # separate run: both trees are "src"

Weights: every tensor of the authors' state dict is ``synthetic_tensor(name, shape)`` (a
function of its name), so the tests rebuild the same weights for our re-implementation.
Inputs: 64x96 images, 2 and 3 views, normalised intrinsics with fx != fy and an off-centre
principal point, rotated OpenCV camera-to-world poses, near 1 / far 100 (MVSplat re10k) or
near 0.5 / far 100 (DepthSplat re10k). DINOv2 is built from the local checkout without its
pretrained weights (torch.hub would download them).
Stored: inputs, the authors' outputs (means and opacities of every Gaussian; covariances and
SH of every STRIDE-th one, to keep the files small), depths, and the state-dict shapes.
Heavy imports that the encoder does not use (torchvision datasets, omegaconf) are stubbed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch

from diff3r_cli.model.backbones.synthetic import synthetic_state_dict

H, W = 64, 96
STRIDE = 8
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backbones"


def _rot(axis: list[float], deg: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    t = math.radians(deg)
    Kx = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(t) * Kx + (1 - math.cos(t)) * Kx @ Kx


def make_inputs(v: int, seed: int) -> dict[str, torch.Tensor]:
    """Smooth random images, normalised K, OpenCV c2w poses around a common look direction."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    imgs = []
    for _ in range(v):
        c = []
        for _ch in range(3):
            f = torch.rand(4, generator=g) * 6 + 1
            p = torch.rand(2, generator=g) * 6
            c.append(0.5 + 0.25 * torch.sin(f[0] * xx * 3 + p[0]) * torch.cos(f[1] * yy * 3 + p[1])
                     + 0.2 * torch.sin(f[2] * (xx + yy) * 4))
        imgs.append(torch.stack(c).clamp(0, 1))
    images = torch.stack(imgs)[None].float()                                  # (1,V,3,H,W)
    K = torch.tensor([[0.85, 0.0, 0.47], [0.0, 1.3, 0.54], [0.0, 0.0, 1.0]])
    intr = K.expand(1, v, 3, 3).clone()
    intr[0, :, 0, 0] += 0.03 * torch.arange(v)
    ext = []
    base = _rot([0.3, 1.0, 0.2], 25.0)
    for i in range(v):
        R = base @ _rot([0.1 + 0.2 * i, 1.0, -0.3], 6.0 * (i - (v - 1) / 2))
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = R
        c2w[:3, 3] = torch.tensor([0.3 * i - 0.2, 0.05 * i, 0.4 + 0.02 * i])
        ext.append(c2w)
    extr = torch.stack(ext)[None].float()
    return {"image": images, "intrinsics": intr, "extrinsics": extr,
            "near": torch.full((1, v), 1.0), "far": torch.full((1, v), 100.0)}


def _stub_packages(root: Path) -> None:
    """Import the authors' modules without running package __init__ files that pull datasets."""
    om = types.ModuleType("omegaconf")
    om.DictConfig = dict
    sys.modules.setdefault("omegaconf", om)
    for pkg in ("src", "src.dataset", "src.model", "src.model.encoder"):
        m = types.ModuleType(pkg)
        m.__path__ = [str(root / pkg.replace(".", "/"))]
        sys.modules[pkg] = m
    sys.path.insert(0, str(root))


def build_mvsplat_reference(root: Path, v: int) -> torch.nn.Module:
    """The authors' EncoderCostVolume in the re10k configuration, for ``v`` context views."""
    _stub_packages(root)
    from src import global_cfg
    from src.model.encoder.encoder_costvolume import EncoderCostVolume, EncoderCostVolumeCfg, OpacityMappingCfg
    from src.model.encoder.common.gaussian_adapter import GaussianAdapterCfg
    from src.model.encoder.visualization.encoder_visualizer_costvolume_cfg import EncoderVisualizerCostVolumeCfg

    ns = types.SimpleNamespace
    global_cfg.set_cfg(ns(mode="test", dataset=ns(view_sampler=ns(num_context_views=v))))
    cfg = EncoderCostVolumeCfg(
        name="costvolume", d_feature=128, num_depth_candidates=128, num_surfaces=1,
        visualizer=EncoderVisualizerCostVolumeCfg(num_samples=8, min_resolution=256, export_ply=False),
        gaussian_adapter=GaussianAdapterCfg(gaussian_scale_min=0.5, gaussian_scale_max=15.0, sh_degree=4),
        opacity_mapping=OpacityMappingCfg(initial=0.0, final=0.0, warm_up=1), gaussians_per_pixel=1,
        unimatch_weights_path=None, downscale_factor=4, shim_patch_size=4, multiview_trans_attn_split=2,
        costvolume_unet_feat_dim=128, costvolume_unet_channel_mult=[1, 1, 1], costvolume_unet_attn_res=[4],
        depth_unet_feat_dim=32, depth_unet_attn_res=[16], depth_unet_channel_mult=[1, 1, 1, 1, 1],
        wo_depth_refine=False, wo_cost_volume=False, wo_backbone_cross_attn=False, wo_cost_volume_refine=False,
        use_epipolar_trans=False)
    return EncoderCostVolume(cfg).eval()


def run_mvsplat(root: Path, v: int) -> dict[str, np.ndarray]:
    """Build their re10k-config encoder, fill synthetic weights, run one forward."""
    enc = build_mvsplat_reference(root, v)
    sd = enc.state_dict()
    enc.load_state_dict(synthetic_state_dict({k: t.shape for k, t in sd.items()}), strict=True)
    inputs = make_inputs(v, seed=10 + v)
    dump: dict = {}
    with torch.no_grad():
        g = enc(inputs, global_step=0, deterministic=True, visualization_dump=dump)
    idx = torch.arange(0, g.means.shape[1], STRIDE)
    out = {f"in_{k}": t.numpy() for k, t in inputs.items()}
    out.update(means=g.means[0].numpy(), opacities=g.opacities[0].numpy(), depth=dump["depth"][0, ..., 0, 0].numpy(),
               sub_index=idx.numpy(), covariances=g.covariances[0, idx].numpy(), harmonics=g.harmonics[0, idx].numpy(),
               state_shapes=np.array(json.dumps({f"encoder.{k}": list(t.shape) for k, t in sd.items()})))
    return out


def build_depthsplat_reference(root: Path, dinov2: Path) -> torch.nn.Module:
    """The authors' EncoderDepthSplat, small (ViT-S) re10k configuration; DINOv2 from a local
    checkout instead of torch.hub (no network), without its pretrained weights."""
    for m in ("torchvision", "torchvision.transforms"):
        sys.modules.setdefault(m, types.ModuleType(m))
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    _stub_packages(root)
    sys.path.insert(0, str(dinov2))
    from dinov2.hub.backbones import dinov2_vits14

    torch.hub.load = lambda repo, name, *a, **k: dinov2_vits14(pretrained=False)
    from src.model.encoder.common.gaussian_adapter import GaussianAdapterCfg
    from src.model.encoder.encoder_depthsplat import EncoderDepthSplat, EncoderDepthSplatCfg

    fields = EncoderDepthSplatCfg.__dataclass_fields__
    values = dict(
        name="depthsplat", d_feature=128, num_depth_candidates=128, num_surfaces=1, visualizer=None,
        gaussian_adapter=GaussianAdapterCfg(gaussian_scale_min=1e-10, gaussian_scale_max=3.0, sh_degree=2),
        gaussians_per_pixel=1, unimatch_weights_path=None, downscale_factor=4, shim_patch_size=4,
        multiview_trans_attn_split=2, costvolume_unet_feat_dim=128, costvolume_unet_channel_mult=[1, 1, 1],
        costvolume_unet_attn_res=[4], depth_unet_feat_dim=32, depth_unet_attn_res=[16],
        depth_unet_channel_mult=[1, 1, 1, 1, 1], local_mv_match=2, monodepth_vit_type="vits",
        supervise_intermediate_depth=True, return_depth=True, num_scales=1, upsample_factor=4,
        lowest_feature_resolution=4, depth_unet_channels=128, grid_sample_disable_cudnn=False,
        large_gaussian_head=False, color_large_unet=False, init_sh_input_img=True, feature_upsampler_channels=64,
        gaussian_regressor_channels=64, train_depth_only=False)
    return EncoderDepthSplat(EncoderDepthSplatCfg(**{k: values[k] for k in fields})).eval()


def run_depthsplat(root: Path, dinov2: Path, v: int) -> dict[str, np.ndarray]:
    """Their DepthSplat-small encoder with synthetic weights, one forward at near 0.5 / far 100."""
    enc = build_depthsplat_reference(root, dinov2)
    sd = enc.state_dict()
    enc.load_state_dict(synthetic_state_dict({k: t.shape for k, t in sd.items()}), strict=True)
    inputs = make_inputs(v, seed=20 + v)
    inputs["near"] = torch.full((1, v), 0.5)
    with torch.no_grad():
        res = enc(inputs, global_step=0, deterministic=True)
    g = res["gaussians"]
    idx = torch.arange(0, g.means.shape[1], STRIDE)
    out = {f"in_{k}": t.numpy() for k, t in inputs.items()}
    out.update(means=g.means[0].numpy(), opacities=g.opacities[0].numpy(), depth=res["depths"][0].numpy(),
               sub_index=idx.numpy(), covariances=g.covariances[0, idx].numpy(), harmonics=g.harmonics[0, idx].numpy(),
               state_shapes=np.array(json.dumps({f"encoder.{k}": list(t.shape) for k, t in sd.items()})))
    return out


def run_sh_rotation(root: Path) -> dict[str, np.ndarray]:
    """Their camera->world SH rotation (e3nn Wigner-D) on random degree-4 coefficients."""
    _stub_packages(root)
    from e3nn.o3 import rand_matrix
    from src.misc.sh_rotation import rotate_sh

    g = torch.Generator().manual_seed(7)
    cam = torch.randn(32, 3, 25, generator=g)
    torch.manual_seed(8)
    R = rand_matrix(32)
    world = rotate_sh(cam, R[:, None])
    return {"cam": cam.numpy(), "R": R.numpy(), "world": world.numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvsplat", type=Path, help="checkout of github.com/donydchen/mvsplat")
    ap.add_argument("--sh-only", action="store_true", help="only the SH rotation fixture")
    ap.add_argument("--depthsplat", type=Path, help="checkout of github.com/cvg/depthsplat (needs --dinov2)")
    ap.add_argument("--dinov2", type=Path, help="checkout of github.com/facebookresearch/dinov2")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if a.mvsplat:
        res = run_sh_rotation(a.mvsplat)
        np.savez_compressed(OUT / "sh_rotation.npz", **res)
        print(f"{OUT / 'sh_rotation.npz'}: {len(res['cam'])} coefficient sets")
    if a.mvsplat and not a.sh_only:
        for v in (2, 3):
            res = run_mvsplat(a.mvsplat, v)
            path = OUT / f"mvsplat_{v}v.npz"
            np.savez_compressed(path, **res)
            print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {res['means'].shape[0]} Gaussians")
    if a.depthsplat:
        for v in (2, 3):
            res = run_depthsplat(a.depthsplat, a.dinov2, v)
            path = OUT / f"depthsplat_{v}v.npz"
            np.savez_compressed(path, **res)
            print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {res['means'].shape[0]} Gaussians")


if __name__ == "__main__":
    main()
