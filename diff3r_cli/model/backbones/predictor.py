"""A released backbone as a diff3r predictor: the pretrained tree (``net``, loaded strictly from
the authors' file) + our Λ head outside it, with the checkpoint's conventions applied at the
boundary.

Same call as :class:`diff3r_cli.model.predictor.Predictor`: images (B,V,H,W,3) in [0,1], K in
pixels, world-to-camera, near/far of the user's scene -> :class:`PredictorOutput`.

Scene scale: a checkpoint was trained at one depth range (MVSplat re10k: near 1, far 100). The
scene is scaled by ``s = train_near / near`` (camera centres times s; ``near`` comes from the
"normalised" depth-range policy, so the 5th-percentile depth lands where the training data had
it), the network runs at its own near/far, and means, scales and depths are divided by s on the
way out. ``last_scene_scale`` holds the factor of the latest call.
Size: inputs are padded (edge replicate, bottom/right: K unchanged) to the multiple the network
accepts; Gaussians of padded pixels are dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.gaussians import GROUPS, Gaussians, rgb_to_sh_dc
from diff3r_cli.model.backbones.convert import camera_quats_to_world, release_sh_matrix, scale_multiplier, unit_rays
from diff3r_cli.model.backbones.depthsplat import DepthSplatArch, DepthSplatEncoder
from diff3r_cli.model.backbones.mvsplat import MVSplatArch, MVSplatEncoder
from diff3r_cli.model.predictor import PredictorOutput, context_shape

FAMILIES = ("mvsplat", "depthsplat")
CONVENTIONS = {"mvsplat": "trained on RE10K (re10k.ckpt; acid.ckpt alike) at 256x256, 2 views, near 1 / far 100 "
                          "(scenes are scaled so their near plane maps to 1); SH degree 4 (degrees <= 3 rendered); "
                          "Gaussian scale 0.5-15 px x depth",
               "depthsplat": "small (ViT-S) trained on RE10K at 256x256, 2 views, near 0.5 / far 100 (scenes are "
                             "scaled so their near plane maps to 0.5); SH degree 2; Gaussian scales in world "
                             "units (softplus, at most 3)"}
TRAIN_RANGE = {"mvsplat": (1.0, 100.0), "depthsplat": (0.5, 100.0)}


@dataclass
class BackboneConfig:
    """What a backbone predictor is (saved with fine-tuned weights, like PredictorConfig)."""

    family: str = "mvsplat"
    variant: str = "re10k"
    arch: dict = field(default_factory=dict)          # the family's architecture hyper-parameters
    train_near: float = 1.0
    train_far: float = 100.0
    sh_degree: int = 3                                # what our renderer evaluates (and theirs)
    lam_init: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    lam_relative: bool = True
    lam_floor: float = 0.0
    depth_range: str = "normalised"
    scale_scene: bool = True

    @property
    def size(self) -> str:
        return f"{self.family}-{self.variant}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = self.size
        return d

    @staticmethod
    def from_dict(d: dict) -> "BackboneConfig":
        known = set(BackboneConfig.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if "lam_init" in kw:
            kw["lam_init"] = tuple(kw["lam_init"])
        return BackboneConfig(**kw)


def is_backbone_config(d: dict) -> bool:
    """Whether a saved predictor config describes a backbone (vs our own predictor)."""
    return "family" in d


class LamHead(nn.Module):
    """Per-pixel raw Λ (5 groups) from the backbone's refinement features, the image and the
    normalised disparity. The last layer starts at zero, so Λ starts at its bias."""

    def __init__(self, cin: int, hidden: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, 1, 1)
        self.conv2 = nn.Conv2d(hidden, len(GROUPS), 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


def _arch(family: str, d: dict) -> MVSplatArch | DepthSplatArch:
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return (MVSplatArch if family == "mvsplat" else DepthSplatArch)(**kw)


class BackbonePredictor(nn.Module):
    """Released encoder (``net``) + Λ head (``lam_head``, ``log_lam_bias``); see the module docstring."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.family not in FAMILIES:
            raise ValueError(f"unknown backbone family {cfg.family!r}")
        self.cfg = cfg
        self.arch = _arch(cfg.family, cfg.arch)
        self.cfg.arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.arch).items()}
        self.net = MVSplatEncoder(self.arch) if cfg.family == "mvsplat" else DepthSplatEncoder(self.arch)
        self.lam_head = LamHead(self.arch.lam_feature_channels + 3 + 1)
        self.log_lam_bias = nn.Parameter(torch.log(torch.tensor(cfg.lam_init, dtype=torch.float32)))
        self.last_scene_scale = 1.0
        self.meta: dict[str, Any] = {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pretrained_parameters(self):
        """The parameters of the released tree (frozen by ``--freeze-backbone``)."""
        return self.net.parameters()

    def forward(self, images: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, near: torch.Tensor,
                far: torch.Tensor) -> PredictorOutput:
        """images (B,V,H,W,3) in [0,1]; K (B,V,3,3) pixels; w2c (B,V,4,4); near/far (B,) or floats."""
        b, v, H, W = context_shape(images, "the backbone")
        dev, dt = images.device, images.dtype
        c = self.cfg
        near = torch.as_tensor(near, device=dev, dtype=dt).reshape(-1).expand(b)
        s = (c.train_near / near) if c.scale_scene else torch.ones_like(near)        # (B,)
        self.last_scene_scale = float(s[0])
        c2w = torch.inverse(w2c.to(dev, dt))
        top = torch.cat([c2w[..., :3, :3], c2w[..., :3, 3:] * s[:, None, None, None]], -1)
        c2w = torch.cat([top, c2w[..., 3:, :]], -2)

        m = self.arch.multiple
        Hp, Wp = -(-H // m) * m, -(-W // m) * m
        x = images.permute(0, 1, 4, 2, 3).reshape(b * v, 3, H, W)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        x = x.reshape(b, v, 3, Hp, Wp)
        Kn = K.to(dev, dt).clone()
        Kn[..., 0, :] = Kn[..., 0, :] / Wp
        Kn[..., 1, :] = Kn[..., 1, :] / Hp
        nf = torch.full((b, v), c.train_near, device=dev, dtype=dt)
        ff = torch.full((b, v), c.train_far, device=dev, dtype=dt)
        out = self.net(x, Kn, c2w, nf, ff)
        return self._gaussians(out, x, Kn, c2w, s, b, v, H, W, Hp, Wp)

    def _gaussians(self, out: dict, x: torch.Tensor, Kn: torch.Tensor, c2w: torch.Tensor, s: torch.Tensor,
                   b: int, v: int, H: int, W: int, Hp: int, Wp: int) -> PredictorOutput:
        a, c = self.arch, self.cfg

        def bv(t: torch.Tensor) -> torch.Tensor:        # (V*B, C, Hp, Wp) -> (B*V, Hp*Wp, C), batch-major
            t = t.reshape(v, b, t.shape[1], Hp * Wp).transpose(0, 1)
            return t.reshape(b * v, -1, Hp * Wp).transpose(1, 2)

        raw = bv(out["raw"])
        dist = 1.0 / bv(out["disparity"])[..., 0]              # along the ray: a distance (MVSplat), z (DepthSplat)
        Kf, c2wf = Kn.reshape(b * v, 3, 3), c2w.reshape(b * v, 4, 4)
        ys, xs = torch.meshgrid(torch.arange(Hp, device=x.device, dtype=x.dtype),
                                torch.arange(Wp, device=x.device, dtype=x.dtype), indexing="ij")
        xy = torch.stack([(xs.reshape(-1) + 0.5) / Wp, (ys.reshape(-1) + 0.5) / Hp], -1)
        xy = xy[None] + (torch.sigmoid(raw[..., :2]) - 0.5) / xy.new_tensor([Wp, Hp])
        origin, direction = unit_rays(xy, Kf, c2wf, unit=(c.family == "mvsplat"))
        means = origin + direction * dist[..., None]
        sc, rot, shr = raw[..., 2:].split((3, 4, 3 * a.d_sh), -1)
        if c.family == "mvsplat":   # a footprint in pixels, tied to depth and focal length
            scales = (a.gaussian_scale_min + (a.gaussian_scale_max - a.gaussian_scale_min) * torch.sigmoid(sc))
            scales = scales * dist[..., None] * scale_multiplier(Kf, Hp, Wp)[:, None, None]
        else:                       # world units
            scales = F.softplus(sc - 4.0).clamp(a.gaussian_scale_min, a.gaussian_scale_max)
        quats = camera_quats_to_world(rot, c2wf)
        # the release damps degree l by 0.1·0.25^l, then rotates camera -> world; both are linear
        # maps on each colour's coefficients, applied as one (k_out, d_sh) matrix per view
        mask = torch.ones(a.d_sh, dtype=torch.float64, device="cpu")  # the SH maps are built on the CPU in float64
        for l in range(1, a.sh_degree + 1):
            mask[l * l:(l + 1) ** 2] = 0.1 * 0.25 ** l
        maps = torch.stack([release_sh_matrix(c2wf[i, :3, :3], a.d_sh, c.sh_degree) * mask for i in range(b * v)])
        sh_cm = shr.reshape(b * v, Hp * Wp, 3, a.d_sh) @ maps.to(x.device, x.dtype).transpose(1, 2)[:, None]
        if c.family == "depthsplat":  # the DC term starts at the pixel's colour (DC is rotation-invariant)
            rgb = x.reshape(b * v, 3, Hp * Wp).transpose(1, 2)
            sh_cm = torch.cat([sh_cm[..., :1] + rgb_to_sh_dc(rgb)[..., None], sh_cm[..., 1:]], -1)
        sh = sh_cm.transpose(2, 3)                                                    # (BV, P, k_out, 3)
        opacity_logits = bv(out["density_logit"])[..., 0]
        z = ((means - origin) * c2wf[:, None, :3, 2]).sum(-1)                         # camera z-depth

        lo, hi = 1.0 / c.train_far, 1.0 / c.train_near
        tdisp = (out["disparity"] - lo) / (hi - lo)
        raw_lam = bv(self.lam_head(torch.cat([out["refine"], x.transpose(0, 1).reshape(v * b, 3, Hp, Wp), tdisp], 1)))
        npix = v * H * W
        log_lam = self.log_lam_bias + 8.0 * torch.tanh(raw_lam / 8.0)
        if c.lam_relative:
            log_lam = log_lam - math.log(npix)
        lam = torch.exp(log_lam)
        if c.lam_floor > 0:
            lam = lam + (c.lam_floor / npix if c.lam_relative else c.lam_floor)
            log_lam = torch.log(lam)

        def crop(t: torch.Tensor) -> torch.Tensor:      # (B*V, Hp*Wp, ...) -> (B, V*H*W, ...)
            if (Hp, Wp) == (H, W):
                return t.reshape(b, v * H * W, *t.shape[2:])
            t = t.reshape(b * v, Hp, Wp, *t.shape[2:])[:, :H, :W]
            return t.reshape(b, v * H * W, *t.shape[3:])

        inv_s = (1.0 / s)
        gs, lams, log_lams = [], [], []
        for k in range(b):
            mk = crop(means)[k] * inv_s[k]
            gs.append(Gaussians(mk, crop(torch.log(scales))[k] + torch.log(inv_s[k]), crop(quats)[k],
                                crop(opacity_logits)[k], crop(sh)[k]))
            lams.append(crop(lam)[k])
            log_lams.append(crop(log_lam)[k])
        depth = crop(z).reshape(b, v, H, W) * inv_s[:, None, None, None]
        conf = crop(bv(out["pdf_max"])[..., 0]).reshape(b, v, H, W)
        return PredictorOutput(gs, lams, log_lams, depth, conf)


__all__ = ["BackboneConfig", "BackbonePredictor", "LamHead", "is_backbone_config", "FAMILIES"]
