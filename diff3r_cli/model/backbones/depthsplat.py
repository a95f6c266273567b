"""DepthSplat (Xu et al., CVPR 2025), small model (ViT-S), re-implemented so the released ``.pth``
files load strictly.

Our own code, written from the paper and the published architecture (the authors' MIT source at
github.com/cvg/depthsplat and DINOv2's at github.com/facebookresearch/dinov2 were read for
names, shapes and conventions only). The tree matches the released ``encoder.*`` entries:

- ``depth_predictor``: CNN (1/2, 1/2, 1/4 features), the multi-view transformer at 1/4, a
  DINOv2 ViT (``pretrained``) whose normed layers 2, 5, 8, 11 are the monocular features, a
  plane-sweep cost volume over ``num_depth_candidates`` inverse depths, a pre-norm U-Net
  regressor, a soft-argmax inverse depth at 1/4 and a DPT head that adds a full-resolution
  residual (``upsampler``);
- ``feature_upsampler`` (DPT, full-resolution features), ``gaussian_regressor`` and
  ``gaussian_head`` (opacity, sub-pixel offset, scale, rotation, SH per pixel).

Limitation: with V > 3 the release attends to and matches against each view's 2 nearest cameras
only; this re-implementation uses all other views (identical for V <= 3, the tested cases).

Inputs as the authors': images (B,V,3,H,W) in [0,1], intrinsics normalised by W and H, OpenCV
camera-to-world, near/far per view. :class:`DepthSplatEncoder` returns view-major maps with the
same keys as :class:`~diff3r_cli.model.backbones.mvsplat.MVSplatEncoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.model.backbones.dpt import DPTHead
from diff3r_cli.model.backbones.mvsplat import MVSplatArch, warp_to_planes
from diff3r_cli.model.backbones.unet import UNet
from diff3r_cli.model.backbones.unimatch import CNNEncoder, MultiViewTransformer, add_window_position, imagenet_normalise
from diff3r_cli.model.backbones.vit import VIT_SIZES, ViT

DPT_OUT = {"vits": (48, 96, 192, 384), "vitb": (96, 192, 384, 768), "vitl": (128, 256, 512, 1024)}
VIT_LAYERS = {"vits": (2, 5, 8, 11), "vitb": (2, 5, 8, 11), "vitl": (4, 11, 17, 23)}


@dataclass
class DepthSplatArch:
    """Architecture hyper-parameters (defaults: the small re10k release)."""

    vit: str = "vits"
    d_feature: int = 128
    num_depth_candidates: int = 128
    unet_channels: int = 128
    depth_dpt_features: int = 32
    feature_dpt_features: int = 64
    regressor_channels: int = 64
    sh_degree: int = 2
    gaussian_scale_min: float = 1e-10
    gaussian_scale_max: float = 3.0
    attn_splits: int = 2
    num_transformer_layers: int = 6

    opacity_channels = 1  # DepthSplat's Gaussian head predicts opacity too

    d_sh = MVSplatArch.d_sh
    raw_channels = MVSplatArch.raw_channels

    @property
    def multiple(self) -> int:
        return 16

    @property
    def lam_feature_channels(self) -> int:
        return self.feature_dpt_features


class MultiViewDepth(nn.Module):
    """The ``depth_predictor`` tree: multi-view + monocular features -> inverse depth."""

    def __init__(self, a: DepthSplatArch):
        super().__init__()
        self.arch = a
        width = VIT_SIZES[a.vit][0]
        d, c, u = a.num_depth_candidates, a.d_feature, a.unet_channels
        self.backbone = CNNEncoder(c, strides=(1, 2))
        self.transformer = MultiViewTransformer(a.num_transformer_layers, c)
        self.pretrained = ViT(a.vit)
        cin = d + 128 + c + width
        self.regressor = nn.ModuleList([nn.Sequential(
            nn.Conv2d(cin, u, 3, 1, 1), nn.GroupNorm(8, u), nn.GELU(),
            UNet(u, u, u, (1, 1, 1), (4,), postnorm=False), nn.Conv2d(u, u, 3, 1, 1))])
        self.regressor_residual = nn.ModuleList([nn.Conv2d(cin, u, 1)])
        self.depth_head = nn.ModuleList([nn.Sequential(
            nn.Conv2d(u, 2 * u, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
            nn.Conv2d(2 * u, d, 3, 1, 1, padding_mode="replicate"))])
        self.upsampler = DPTHead(width, a.depth_dpt_features, DPT_OUT[a.vit], return_feature=False)

    def forward(self, x: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor, near: torch.Tensor,
                far: torch.Tensor) -> dict:
        """x (B,V,3,H,W) ImageNet-standardised; returns batch-major (B*V, ...) maps."""
        a = self.arch
        b, v, _, H, W = x.shape
        flat = x.reshape(b * v, 3, H, W)
        cnn = self.backbone.stages(flat)                                            # 1/2, 1/2, 1/4
        f4 = cnn[2]
        c, h, w = f4.shape[1:]
        mv = self.transformer(add_window_position(f4, a.attn_splits).reshape(b, v, c, h, w), a.attn_splits)
        mv = mv.reshape(b * v, c, h, w)
        rh, rw = H // 14 * 14, W // 14 * 14
        vit_in = F.interpolate(flat, (rh, rw), mode="bilinear", align_corners=True)
        mono = [t.reshape(b * v, rh // 14, rw // 14, -1).permute(0, 3, 1, 2)
                for t in self.pretrained.intermediate(vit_in, VIT_LAYERS[a.vit])]
        mono = [F.interpolate(t, (H // 8, W // 8), mode="bilinear", align_corners=True) for t in mono]
        mono4 = F.interpolate(mono[-1], scale_factor=2, mode="bilinear", align_corners=True)

        K4 = intrinsics.reshape(b * v, 3, 3).clone()
        K4[:, 0] *= W / 4
        K4[:, 1] *= H / 4
        lo, hi = (1.0 / far).reshape(b * v, 1), (1.0 / near).reshape(b * v, 1)
        cand = lo + torch.linspace(0, 1, a.num_depth_candidates, device=x.device, dtype=x.dtype)[None] * (hi - lo)
        feats = mv.reshape(b, v, c, h, w)
        c2w_ = c2w.reshape(b, v, 4, 4)
        corr = 0
        for k in range(1, v):                       # each view against the others, in ascending order
            others = [[j for j in range(v) if j != i][k - 1] for i in range(v)]
            src = torch.stack([feats[:, j] for j in others], 1).reshape(b * v, c, h, w)
            pose = torch.stack([torch.inverse(c2w_[:, j]) @ c2w_[:, i] for i, j in enumerate(others)], 1)
            warped = warp_to_planes(src, K4, pose.reshape(b * v, 4, 4), 1.0 / cand)
            corr = corr + (mv[:, :, None] * warped).sum(1) / math.sqrt(c)
        cost = corr / (v - 1)
        cat = torch.cat([cost, f4, mv, mono4], 1)
        r = self.regressor[0]
        y = r[4](r[3](r[2](r[1](r[0](cat))), v)) + self.regressor_residual[0](cat)
        prob = torch.softmax(self.depth_head[0](y), 1)
        inv4 = (prob * cand[:, :, None, None]).sum(1, keepdim=True)
        residual = self.upsampler(mono, cnn, mv, inv4)
        inv = F.interpolate(inv4, scale_factor=4, mode="bilinear", align_corners=True) + residual
        inv = torch.maximum(torch.minimum(inv, hi[:, :, None, None]), lo[:, :, None, None])
        return {"disparity": inv, "prob": prob, "cnn": cnn, "mv": mv, "mono": mono}


class DepthSplatEncoder(nn.Module):
    """The pretrained tree (keys of ``encoder.*`` in a release)."""

    def __init__(self, arch: DepthSplatArch | None = None):
        super().__init__()
        a = self.arch = arch or DepthSplatArch()
        width = VIT_SIZES[a.vit][0]
        f, rc, g = a.feature_dpt_features, a.regressor_channels, a.raw_channels
        self.depth_predictor = MultiViewDepth(a)
        self.feature_upsampler = DPTHead(width, f, DPT_OUT[a.vit], return_feature=True)
        self.gaussian_regressor = nn.Sequential(nn.Conv2d(3 + 1 + 1 + f, rc, 3, 1, 1), nn.GELU(),
                                                nn.Conv2d(rc, rc, 3, 1, 1))
        self.gaussian_head = nn.Sequential(nn.Conv2d(3 + f + rc + 1, g, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                                           nn.Conv2d(g, g, 3, 1, 1, padding_mode="replicate"))

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor, near: torch.Tensor,
                far: torch.Tensor) -> dict[str, torch.Tensor]:
        """Authors' conventions in; view-major (V*B, ...) maps out: ``disparity`` (inverse depth,
        a distance along the ray), ``density_logit`` (opacity logit), ``raw`` (offset, scale,
        rotation, SH), ``refine`` (features for our Λ head), ``pdf_max``."""
        b, v, _, H, W = images.shape
        d = self.depth_predictor(imagenet_normalise(images), intrinsics, c2w, near, far)
        img = images.reshape(b * v, 3, H, W)
        feats = self.feature_upsampler(d["mono"], d["cnn"], d["mv"])
        conf = F.interpolate(d["prob"].max(1, keepdim=True).values, size=(H, W), mode="nearest")
        depth = 1.0 / d["disparity"]
        out = self.gaussian_regressor(torch.cat([img, depth, conf, feats], 1))
        raw = self.gaussian_head(torch.cat([out, img, feats, conf], 1))

        def vm(t: torch.Tensor) -> torch.Tensor:    # batch-major -> view-major
            return t.reshape(b, v, *t.shape[1:]).transpose(0, 1).reshape(v * b, *t.shape[1:])

        return {"disparity": vm(d["disparity"]), "density_logit": vm(raw[:, :1]), "raw": vm(raw[:, 1:]),
                "refine": vm(feats), "pdf_max": vm(conf)}


__all__ = ["DepthSplatArch", "DepthSplatEncoder"]
