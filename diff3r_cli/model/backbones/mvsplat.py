"""MVSplat (Chen et al., ECCV 2024), re-implemented so the released checkpoints load strictly.

Our own code, written from the paper and the published architecture (the authors' MIT source at
github.com/donydchen/mvsplat was read for names, shapes and conventions only). The module tree
matches the ``encoder.*`` entries of the released Lightning ``.ckpt`` files:

- ``backbone.backbone``: CNN to 1/4 resolution; ``backbone.transformer``: 6 multi-view layers;
- ``depth_predictor``: plane-sweep correlation over ``num_depth_candidates`` inverse depths
  (features warped with the *feature-resolution* intrinsics and integer pixel coordinates, as the
  release does), a cost-volume U-Net, a soft-argmax coarse disparity, an x4 upsampler, a
  full-resolution refinement U-Net and heads for raw Gaussian parameters and a disparity
  residual + density.

Input conventions are the authors': images (B,V,3,H,W) in [0,1]; intrinsics normalised by W and
H; OpenCV camera-to-world extrinsics; near/far per view. :class:`MVSplatEncoder` returns the raw
per-pixel outputs; :mod:`.convert` turns them into Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.model.backbones.unet import UNet
from diff3r_cli.model.backbones.unimatch import CNNEncoder, MultiViewTransformer, add_window_position, imagenet_normalise


@dataclass
class MVSplatArch:
    """Architecture hyper-parameters (defaults: the re10k/acid release)."""

    d_feature: int = 128
    num_depth_candidates: int = 128
    costvolume_unet_feat_dim: int = 128
    costvolume_unet_channel_mult: tuple[int, ...] = (1, 1, 1)
    costvolume_unet_attn_res: tuple[int, ...] = (4,)
    depth_unet_feat_dim: int = 32
    depth_unet_attn_res: tuple[int, ...] = (16,)
    depth_unet_channel_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    sh_degree: int = 4
    gaussian_scale_min: float = 0.5
    gaussian_scale_max: float = 15.0
    attn_splits: int = 2
    num_transformer_layers: int = 6

    opacity_channels = 0  # MVSplat's opacity comes from the depth head, not the Gaussian head

    @property
    def d_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def raw_channels(self) -> int:
        """opacity_channels + 2 (pixel offset) + 3 (scale) + 4 (rotation) + 3*d_sh (colour)."""
        return self.opacity_channels + 2 + 7 + 3 * self.d_sh

    @property
    def lam_feature_channels(self) -> int:
        """Width of the refinement features our Λ head reads."""
        return self.depth_unet_feat_dim

    @property
    def multiple(self) -> int:
        """Input H and W must be multiples of this (x4 features, then the U-Nets' downsamplings)."""
        a = 4 * 2 ** (len(self.costvolume_unet_channel_mult) - 1)
        b = 2 ** (len(self.depth_unet_channel_mult) - 1)
        c = 4 * 2 * self.attn_splits          # shifted windows of the transformer
        return math.lcm(a, b, c)


class MVBackbone(nn.Module):
    """CNN features + multi-view transformer features, both at 1/4 resolution."""

    def __init__(self, arch: MVSplatArch):
        super().__init__()
        self.arch = arch
        self.backbone = CNNEncoder(arch.d_feature, strides=(2, 1))
        self.transformer = MultiViewTransformer(arch.num_transformer_layers, arch.d_feature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, v = images.shape[:2]
        cnn = self.backbone(imagenet_normalise(images.flatten(0, 1)))
        x = add_window_position(cnn, self.arch.attn_splits)
        h, w = cnn.shape[-2:]
        trans = self.transformer(x.reshape(b, v, -1, h, w), self.arch.attn_splits)
        return trans, cnn.reshape(b, v, -1, h, w)


def _pixel_grid(h: int, w: int, device, dtype) -> torch.Tensor:
    """(3, h*w) homogeneous integer pixel coordinates (x, y, 1), row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones_like(xs).reshape(-1)])


def warp_to_planes(src: torch.Tensor, K: torch.Tensor, ref_to_src: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Sample source features at the reference pixels' projections for each plane depth.

    src (N,C,h,w); K (N,3,3) at feature resolution; ref_to_src (N,4,4); depths (N,D).
    Reference pixels sit at integer coordinates and grid_sample uses align_corners=True (the
    release's convention). Returns (N,C,D,h,w).
    """
    n, c, h, w = src.shape
    d = depths.shape[1]
    with torch.no_grad():
        pix = _pixel_grid(h, w, src.device, src.dtype)
        rays = torch.inverse(K) @ pix                                           # (N,3,hw)
        pts = (ref_to_src[:, :3, :3] @ rays)[:, :, None, :] * depths[:, None, :, None]
        pts = pts + ref_to_src[:, :3, 3, None, None]                             # (N,3,D,hw)
        proj = (K @ pts.reshape(n, 3, -1)).reshape(n, 3, d, h * w)
        xy = proj[:, :2] / proj[:, 2:].clamp(min=1e-3)
        grid = torch.stack([2 * xy[:, 0] / (w - 1) - 1, 2 * xy[:, 1] / (h - 1) - 1], -1)
    out = F.grid_sample(src, grid.reshape(n, d * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, c, d, h, w)


class DepthPredictor(nn.Module):
    """Cost volume -> coarse disparity -> refined full-resolution disparity, density and raw Gaussians."""

    def __init__(self, arch: MVSplatArch):
        super().__init__()
        self.arch = arch
        c, d = arch.d_feature, arch.num_depth_candidates
        cw, dw = arch.costvolume_unet_feat_dim, arch.depth_unet_feat_dim
        self.corr_refine_net = nn.Sequential(
            nn.Conv2d(d + c, cw, 3, 1, 1), nn.GroupNorm(8, cw), nn.GELU(),
            UNet(cw, cw, cw, arch.costvolume_unet_channel_mult, arch.costvolume_unet_attn_res),
            nn.Conv2d(cw, d, 3, 1, 1))
        self.regressor_residual = nn.Conv2d(d + c, d, 1)
        self.depth_head_lowres = nn.Sequential(nn.Conv2d(d, 2 * d, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * d, d, 3, 1, 1))
        self.upsampler = nn.Sequential(nn.Conv2d(2 * c, c, 3, 1, 1),
                                       nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True), nn.GELU())
        self.proj_feature = nn.Conv2d(c, dw, 3, 1, 1)
        self.refine_unet = nn.Sequential(
            nn.Conv2d(3 + dw + 2, dw, 3, 1, 1), nn.GroupNorm(4, dw), nn.GELU(),
            UNet(dw, dw, dw, arch.depth_unet_channel_mult, arch.depth_unet_attn_res))
        g = arch.raw_channels
        self.to_gaussians = nn.Sequential(nn.Conv2d(dw + 3 + c, 2 * g, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * g, g, 3, 1, 1))
        self.to_disparity = nn.Sequential(nn.Conv2d(dw, 2 * dw, 3, 1, 1), nn.GELU(), nn.Conv2d(2 * dw, 2, 3, 1, 1))

    @staticmethod
    def _relative_poses(c2w: torch.Tensor) -> list[torch.Tensor]:
        """For each shift k = 1..V-1: (V*B,4,4) maps of reference view i into view (i+k) mod V (view-major)."""
        b, v = c2w.shape[:2]
        if v == 2:   # the release composes the two-view case this way (bit-level parity)
            p = torch.inverse(c2w[:, 1]) @ c2w[:, 0]
            return [torch.cat([p, torch.inverse(p)], 0)]
        return [torch.cat([torch.inverse(c2w[:, (i + k) % v]) @ c2w[:, i] for i in range(v)], 0) for k in range(1, v)]

    def forward(self, feats: torch.Tensor, cnn: torch.Tensor, images: torch.Tensor, intrinsics: torch.Tensor,
                c2w: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats/cnn (B,V,C,h,w); images (B,V,3,H,W); intrinsics normalised (B,V,3,3); near/far (B,V).

        Returns view-major (V*B, ...) maps at full resolution: ``disparity`` (1), ``density``
        (sigmoid), ``density_logit``, ``raw`` (raw Gaussian channels), ``refine`` (refinement
        features), ``pdf_max`` (coarse-depth confidence).
        """
        b, v, c, h, w = feats.shape
        vm = lambda t: t.transpose(0, 1).reshape(v * b, *t.shape[2:])  # noqa: E731  (B,V,...) -> (V*B,...)
        f0 = vm(feats)
        Kf = vm(intrinsics).clone()
        Kf[:, 0] *= float(w)
        Kf[:, 1] *= float(h)
        lo, hi = vm(1.0 / far)[:, None], vm(1.0 / near)[:, None]
        disp = lo + torch.linspace(0.0, 1.0, self.arch.num_depth_candidates, device=feats.device)[None] * (hi - lo)
        disp = disp.to(feats.dtype)                                                  # (VB, D)
        corr = []
        for k, pose in enumerate(self._relative_poses(c2w), start=1):
            src = vm(feats[:, [(i + k) % v for i in range(v)]])
            warped = warp_to_planes(src, Kf, pose, 1.0 / disp)
            corr.append((f0[:, :, None] * warped).sum(1) / math.sqrt(c))
        cv = torch.cat([torch.stack(corr, 0).mean(0), f0], 1)
        net = self.corr_refine_net
        y = net[3](net[2](net[1](net[0](cv))), v)
        y = net[4](y) + self.regressor_residual(cv)
        pdf = torch.softmax(self.depth_head_lowres(y), 1)
        coarse = (disp[:, :, None, None] * pdf).sum(1, keepdim=True)
        pdf_max = F.interpolate(pdf.max(1, keepdim=True).values, scale_factor=4)
        full = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=True)
        up = self.upsampler(torch.cat([f0, vm(cnn)], 1))
        img = vm(images)
        r = self.refine_unet
        ref_in = torch.cat([img, self.proj_feature(up), full, pdf_max], 1)
        refine = r[3](r[2](r[1](r[0](ref_in))), v)
        raw = self.to_gaussians(torch.cat([refine, img, up], 1))
        delta, dens = self.to_disparity(refine).split(1, 1)
        fine = (full + delta).clamp(lo[:, :, None, None], hi[:, :, None, None])
        return {"disparity": fine, "density_logit": dens, "density": torch.sigmoid(dens), "raw": raw,
                "refine": refine, "pdf_max": pdf_max}


class MVSplatEncoder(nn.Module):
    """The pretrained tree: ``backbone`` + ``depth_predictor`` (keys of ``encoder.*`` in a release)."""

    def __init__(self, arch: MVSplatArch | None = None):
        super().__init__()
        self.arch = arch or MVSplatArch()
        self.backbone = MVBackbone(self.arch)
        self.depth_predictor = DepthPredictor(self.arch)

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor, near: torch.Tensor,
                far: torch.Tensor) -> dict[str, torch.Tensor]:
        """Authors' conventions in, raw view-major maps out (see :meth:`DepthPredictor.forward`)."""
        trans, cnn = self.backbone(images)
        return self.depth_predictor(trans, cnn, images, intrinsics, c2w, near, far)


__all__ = ["MVSplatArch", "MVSplatEncoder"]
