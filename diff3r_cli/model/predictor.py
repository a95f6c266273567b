"""The feed-forward predictor f: context images + cameras -> pixel-aligned Gaussians θ0 and Λ.

Architecture (MVSplat family, our own implementation):

1. A shared CNN encoder gives features at 1/2 and 1/4 resolution.
2. Optional light cross-view attention at 1/8 resolution (all tokens of all context views
   attend to each other; zero-initialised output so it starts as the identity).
3. A plane-sweep cost volume over inverse depth between the scene's near and far
   (model/costvolume.py), averaged over the other views so any V >= 2 works.
4. A small 2D U-Net refines [cost, features] into per-pixel logits over the depth planes;
   softmax -> expected inverse depth and a confidence (max probability).
5. The inverse depth is upsampled bilinearly to full resolution; a decoder with skip
   connections from the encoder and the image predicts, per pixel: a depth refinement (in
   normalised inverse depth), opacity, scale, rotation, colour residual and Λ.
6. Each pixel becomes one Gaussian: the mean is the pixel centre unprojected at the
   refined depth; the scale is relative to depth/focal so a Gaussian covers about one pixel
   at initialisation; rotations are predicted in the camera frame and rotated to world; the
   SH DC term is rgb_to_sh_dc(pixel colour) + a residual; Λ = exp(bias_g + bounded raw) / P > 0
   (P = V·H·W, the pixel count that normalises the TTO energy's photometric term).

Inputs of any size are accepted: images are padded (edge replicate, bottom/right, which
leaves K unchanged) to a multiple of 16 and the outputs cropped back, so only real pixels
produce Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.gaussians import GROUPS, Gaussians, rgb_to_sh_dc
from diff3r_cli.geometry import (pixel_centres, quat_multiply, quat_normalize, rotmat_to_quat, scale_intrinsics,
                                 unproject)
from diff3r_cli.model.blocks import ConvAct, CrossViewAttention, DepthRefiner, Encoder, ResBlock
from diff3r_cli.model.config import PredictorConfig
from diff3r_cli.model.costvolume import inverse_depth_planes, plane_sweep_cost

PAD_MULTIPLE = 16
DEPTH_LOG_BOUND = 0.4  # depth_residual "log": the head moves the cost volume's depth by at most e^±0.4


@dataclass
class PredictorOutput:
    """Per batch element: Gaussians of all context views concatenated (view-major, row-major pixels)."""

    gaussians: list[Gaussians]
    lam: list[torch.Tensor]            # (N,5) positive
    log_lam: list[torch.Tensor]        # (N,5)
    depth: torch.Tensor                # (B,V,H,W) z-depth of each pixel's Gaussian
    confidence: torch.Tensor           # (B,V,H,W) max depth-plane probability (upsampled)


def context_shape(images: torch.Tensor, who: str = "the predictor") -> tuple[int, int, int, int]:
    """(B, V, H, W) of a context batch (B,V,H,W,3); ValueError for another layout or fewer than 2 views."""
    if images.dim() != 5 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B,V,H,W,3), got {tuple(images.shape)}")
    b, v, H, W, _ = images.shape
    if v < 2:
        raise ValueError(f"{who} needs at least two context views")
    return b, v, H, W


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class Predictor(nn.Module):
    """Context views -> Gaussians θ0 and uncertainty Λ (see the module docstring)."""

    def __init__(self, cfg: PredictorConfig | None = None):
        super().__init__()
        self.cfg = cfg or PredictorConfig()
        c = self.cfg
        self.encoder = Encoder(c)
        self.attention = CrossViewAttention(c.feat_dim, c.attn_layers, c.attn_heads) if c.attn_layers > 0 else None
        self.refiner = DepthRefiner(c)
        c0, c1 = c.enc_channels
        hc = c.head_channels
        self.up2 = ConvAct(c.refine_channels + c.feat_dim + c1, hc)
        self.up1 = nn.Sequential(ConvAct(hc + c0 + 3 + 2, hc), ResBlock(hc))
        self.n_sh = (c.sh_degree + 1) ** 2
        # depth residual 1, opacity 1, scale 3, rotation 4, colour 3*n_sh, Λ 5
        self.n_out = 1 + 1 + 3 + 4 + 3 * self.n_sh + len(GROUPS)
        self.head = nn.Conv2d(hc, self.n_out, 3, 1, 1)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias[1] = _logit(c.opacity_init)
        self.log_lam_bias = nn.Parameter(torch.log(torch.tensor(c.lam_init, dtype=torch.float32)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, images: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, near: torch.Tensor,
                far: torch.Tensor) -> PredictorOutput:
        """images (B,V,H,W,3) in [0,1]; K (B,V,3,3) pixels; w2c (B,V,4,4); near/far (B,) or floats."""
        b, v, H, W = context_shape(images)
        dev, dt = images.device, images.dtype
        K = K.to(dev, dt)
        w2c = w2c.to(dev, dt)
        near = torch.as_tensor(near, device=dev, dtype=dt).reshape(-1).expand(b)
        far = torch.as_tensor(far, device=dev, dtype=dt).reshape(-1).expand(b)

        # pad bottom/right to a multiple of 16 (principal point unaffected)
        Hp = -(-H // PAD_MULTIPLE) * PAD_MULTIPLE
        Wp = -(-W // PAD_MULTIPLE) * PAD_MULTIPLE
        x = images.permute(0, 1, 4, 2, 3).reshape(b * v, 3, H, W)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        f1, f2, f4 = self.encoder(x * 2 - 1)
        h4, w4 = f4.shape[-2:]
        f4 = f4.reshape(b, v, -1, h4, w4)
        if self.attention is not None:
            f4 = self.attention(f4)

        K4 = scale_intrinsics(K, 0.25, 0.25)  # features at 1/4 resolution; exact for the pixel-edge convention
        invd = inverse_depth_planes(near, far, self.cfg.num_planes)   # (B,D)
        cost = plane_sweep_cost(f4, K4, w2c, invd)                    # (B,V,D,h4,w4)
        logits, ref_feat = self.refiner(cost.reshape(b * v, -1, h4, w4), f4.reshape(b * v, -1, h4, w4))
        prob = torch.softmax(logits, dim=1)
        invd_bv = invd.repeat_interleave(v, 0)[:, :, None, None]     # (B*V,D,1,1)
        inv_depth4 = (prob * invd_bv).sum(1, keepdim=True)
        conf4 = prob.max(1, keepdim=True).values

        inv_near = (1.0 / near).repeat_interleave(v)[:, None, None, None]
        inv_far = (1.0 / far).repeat_interleave(v)[:, None, None, None]
        t4 = (inv_depth4 - inv_far) / (inv_near - inv_far)            # 0 at far, 1 at near
        t1 = F.interpolate(t4, size=(Hp, Wp), mode="bilinear", align_corners=False)
        conf1 = F.interpolate(conf4, size=(Hp, Wp), mode="bilinear", align_corners=False)

        y = torch.cat([ref_feat, f4.reshape(b * v, -1, h4, w4)], 1)
        y = F.interpolate(y, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, f2], 1))
        y = F.interpolate(y, size=(Hp, Wp), mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, f1, x, t1, conf1], 1))
        out = self.head(y)[:, :, :H, :W]                               # crop the padding
        t1, conf1 = t1[:, :, :H, :W], conf1[:, :, :H, :W]

        return self._to_gaussians(out, t1, conf1, images, K, w2c, inv_near, inv_far, b, v, H, W)

    def _to_gaussians(self, out, t1, conf1, images, K, w2c, inv_near, inv_far, b, v, H, W) -> PredictorOutput:
        c = self.cfg
        o = out.permute(0, 2, 3, 1)                                    # (BV,H,W,n_out)
        i = 0

        def take(n):
            nonlocal i
            r = o[..., i:i + n]
            i += n
            return r

        r_depth, r_opac, r_scale, r_rot = take(1), take(1), take(3), take(4)
        r_col, r_lam = take(3 * self.n_sh), take(len(GROUPS))

        t = t1.permute(0, 2, 3, 1).clamp(1e-4, 1 - 1e-4)
        span = (inv_near - inv_far).reshape(-1, 1, 1, 1)
        if c.depth_residual == "log":
            # a bounded factor around the cost volume's depth: the matching decides depth
            depth = torch.exp(DEPTH_LOG_BOUND * torch.tanh(r_depth)) / (inv_far.reshape(-1, 1, 1, 1) + t * span)
        else:
            # depth refinement in normalised inverse depth, kept inside (far, near)
            t = torch.sigmoid(torch.logit(t) + r_depth)
            depth = 1.0 / (inv_far.reshape(-1, 1, 1, 1) + t * span)     # (BV,H,W,1)

        Kf = K.reshape(b * v, 3, 3)
        c2w = torch.linalg.inv(w2c.reshape(b * v, 4, 4))
        pix = pixel_centres(H, W, images.device, images.dtype)          # (3,HW)
        means = unproject(Kf, c2w, pix, depth.reshape(b * v, H * W))    # (BV,HW,3)

        focal = 0.5 * (Kf[:, 0, 0] + Kf[:, 1, 1])
        pix_size = depth.reshape(b * v, H * W, 1) / focal[:, None, None]
        log_scales = torch.log(pix_size * c.scale_init_px) + 3.0 * torch.tanh(r_scale.reshape(b * v, H * W, 3) / 3.0)

        q_cam = r_rot.reshape(b * v, H * W, 4) + torch.tensor([1.0, 0, 0, 0], device=o.device, dtype=o.dtype)
        q_cam = quat_normalize(q_cam, eps=1e-8)
        q_c2w = rotmat_to_quat(c2w[:, :3, :3])                          # (BV,4)
        quats = quat_multiply(q_c2w[:, None, :].expand_as(q_cam), q_cam)

        opacity_logits = r_opac.reshape(b * v, H * W)
        rgb = images.reshape(b * v, H * W, 3)
        col = r_col.reshape(b * v, H * W, self.n_sh, 3)
        dc = rgb_to_sh_dc(rgb) + col[:, :, 0]
        sh = torch.cat([dc[:, :, None], col[:, :, 1:]], 2)

        log_lam = self.log_lam_bias + 8.0 * torch.tanh(r_lam.reshape(b * v, H * W, len(GROUPS)) / 8.0)
        if c.lam_relative:
            log_lam = log_lam - math.log(v * H * W)
        lam = torch.exp(log_lam)
        if c.lam_floor > 0:
            lam = lam + (c.lam_floor / (v * H * W) if c.lam_relative else c.lam_floor)
            log_lam = torch.log(lam)

        n = v * H * W
        gs, lams, log_lams = [], [], []
        for k in range(b):
            sl = slice(k * v, (k + 1) * v)
            gs.append(Gaussians(means[sl].reshape(n, 3), log_scales[sl].reshape(n, 3), quats[sl].reshape(n, 4),
                                opacity_logits[sl].reshape(n), sh[sl].reshape(n, self.n_sh, 3)))
            lams.append(lam[sl].reshape(n, len(GROUPS)))
            log_lams.append(log_lam[sl].reshape(n, len(GROUPS)))
        return PredictorOutput(gs, lams, log_lams, depth.reshape(b, v, H, W), conf1.reshape(b, v, H, W))


def build_predictor(size: str = "small", **overrides) -> Predictor:
    """A freshly initialised predictor of a named size ("small" or "base")."""
    return Predictor(PredictorConfig.preset(size, **overrides))


__all__ = ["Predictor", "PredictorConfig", "PredictorOutput", "build_predictor"]
