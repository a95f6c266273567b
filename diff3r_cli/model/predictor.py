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
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import GROUPS, Gaussians, rgb_to_sh_dc
from diff3r_cli.model.costvolume import inverse_depth_planes, pixel_grid, plane_sweep_cost

PAD_MULTIPLE = 16


@dataclass
class PredictorConfig:
    """Hyper-parameters of the predictor (saved with the weights)."""

    size: str = "small"
    enc_channels: tuple[int, int] = (16, 32)   # channels at full and 1/2 resolution
    feat_dim: int = 48                          # channels at 1/4 resolution (cost volume features)
    enc_blocks: int = 1                         # residual blocks at 1/4 resolution
    attn_layers: int = 1                        # cross-view attention layers at 1/8 (0 = off)
    attn_heads: int = 2
    num_planes: int = 32                        # depth hypotheses
    refine_channels: int = 48                   # cost-volume U-Net width
    head_channels: int = 32                     # full-resolution decoder width
    sh_degree: int = 0
    scale_init_px: float = 0.5                  # Gaussian std in pixels at initialisation
    opacity_init: float = 0.75
    # Λ per group at initialisation. With lam_relative, Λ is expressed in units of 1/P
    # (P = V·H·W context pixels), the scale of one pixel's term in the TTO energy
    # E = 1/(2P)·Σ‖r‖² + ½Σλ(θ−θ0)², so λ ≈ 1 weighs θ0 about as much as one pixel's
    # photometric curvature, whatever the resolution and number of views.
    lam_init: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    lam_relative: bool = True

    @staticmethod
    def preset(size: str, **overrides) -> "PredictorConfig":
        """Named sizes: "small" (CPU-trainable) and "base"."""
        if size == "small":
            cfg = PredictorConfig()
        elif size == "base":
            cfg = PredictorConfig(size="base", enc_channels=(32, 64), feat_dim=96, enc_blocks=3, attn_layers=2,
                                  attn_heads=4, num_planes=64, refine_channels=96, head_channels=48)
        else:
            raise ValueError(f"unknown model size {size!r} (use small or base)")
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"unknown predictor option {k!r}")
            setattr(cfg, k, v)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "PredictorConfig":
        d = dict(d)
        for k in ("enc_channels", "lam_init"):
            if k in d:
                d[k] = tuple(d[k])
        d.setdefault("lam_relative", False)  # files written before the 1/P convention
        known = {f for f in PredictorConfig.__dataclass_fields__}
        return PredictorConfig(**{k: v for k, v in d.items() if k in known})


@dataclass
class PredictorOutput:
    """Per batch element: Gaussians of all context views concatenated (view-major, row-major pixels)."""

    gaussians: list[Gaussians]
    lam: list[torch.Tensor]            # (N,5) positive
    log_lam: list[torch.Tensor]        # (N,5)
    depth: torch.Tensor                # (B,V,H,W) z-depth of each pixel's Gaussian
    confidence: torch.Tensor           # (B,V,H,W) max depth-plane probability (upsampled)
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# small building blocks

def _groups(ch: int) -> int:
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


class ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.n1 = nn.GroupNorm(_groups(ch), ch)
        self.c2 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.n2 = nn.GroupNorm(_groups(ch), ch)
        # Start close to identity so deep stacks train stably without batch statistics.
        nn.init.zeros_(self.n2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.c1(x)))
        return F.relu(x + self.n2(self.c2(y)))


class Encoder(nn.Module):
    """Shared CNN: image (N,3,H,W) -> features at 1/1, 1/2, 1/4."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        c0, c1 = cfg.enc_channels
        self.stem = nn.Sequential(ConvAct(3, c0), ResBlock(c0))
        self.down1 = nn.Sequential(ConvAct(c0, c1, stride=2), ResBlock(c1))
        self.down2 = nn.Sequential(ConvAct(c1, cfg.feat_dim, stride=2),
                                   *[ResBlock(cfg.feat_dim) for _ in range(cfg.enc_blocks)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.stem(x)
        f2 = self.down1(f1)
        f4 = self.down2(f2)
        return f1, f2, f4


class CrossViewAttention(nn.Module):
    """Pre-norm transformer layers over all views' tokens at 1/8 resolution, residual at 1/4."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(layers):
            attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), attn, nn.LayerNorm(dim), mlp]))
        self.out = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, f4: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = f4.shape
        x = F.avg_pool2d(f4.reshape(b * v, c, h, w), 2)
        h8, w8 = x.shape[-2:]
        # Sinusoidal 2D position code so matching can also use where a feature sits.
        pos = _pos_code(h8, w8, c, x.device, x.dtype)
        t = (x + pos).reshape(b, v, c, h8 * w8).permute(0, 1, 3, 2).reshape(b, v * h8 * w8, c)
        for n1, attn, n2, mlp in self.layers:
            q = n1(t)
            t = t + attn(q, q, q, need_weights=False)[0]
            t = t + mlp(n2(t))
        y = t.reshape(b, v, h8 * w8, c).permute(0, 1, 3, 2).reshape(b * v, c, h8, w8)
        y = F.interpolate(self.out(y), size=(h, w), mode="bilinear", align_corners=False)
        return f4 + y.reshape(b, v, c, h, w)


def _pos_code(h: int, w: int, c: int, device, dtype) -> torch.Tensor:
    nf = max(1, c // 4)
    freqs = torch.exp(torch.linspace(0, math.log(max(h, w)), nf, device=device, dtype=dtype))
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    py = ys[:, None] * freqs[None] * math.pi
    px = xs[:, None] * freqs[None] * math.pi
    code = torch.cat([torch.sin(py)[:, None, :].expand(h, w, nf), torch.cos(py)[:, None, :].expand(h, w, nf),
                      torch.sin(px)[None, :, :].expand(h, w, nf), torch.cos(px)[None, :, :].expand(h, w, nf)], -1)
    out = torch.zeros(h, w, c, device=device, dtype=dtype)
    out[..., :min(c, code.shape[-1])] = code[..., :c]
    return out.permute(2, 0, 1)[None]


class DepthRefiner(nn.Module):
    """U-Net at 1/4 resolution: [cost volume, features] -> logits over depth planes."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        r = cfg.refine_channels
        self.inp = ConvAct(cfg.num_planes + cfg.feat_dim, r)
        self.enc = ResBlock(r)
        self.down = nn.Sequential(ConvAct(r, 2 * r, stride=2), ResBlock(2 * r))
        self.up = ConvAct(2 * r, r)
        self.dec = nn.Sequential(ConvAct(2 * r, r), ResBlock(r))
        self.out = nn.Conv2d(r, cfg.num_planes, 3, 1, 1)

    def forward(self, cost: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.enc(self.inp(torch.cat([cost, feat], 1)))
        y = self.down(x)
        y = self.up(F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False))
        x = self.dec(torch.cat([x, y], 1))
        # The raw cost is added to the logits so matching drives depth from the first step.
        return self.out(x) + cost, x


# --------------------------------------------------------------------------------------
# geometry helpers

def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """(…,3,3) rotation matrices -> (…,4) unit quaternions w,x,y,z (w >= 0), Shepperd's method."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (…,4,4): candidate k has 4*q_k^2 at position k
    diag = torch.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    k = diag.argmax(-1)
    q = torch.gather(cands, -2, k[..., None, None].expand(*k.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of (…,4) w,x,y,z quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------

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
        if images.dim() != 5 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B,V,H,W,3), got {tuple(images.shape)}")
        b, v, H, W, _ = images.shape
        if v < 2:
            raise ValueError("the predictor needs at least two context views")
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

        K4 = K.clone()
        K4[..., :2, :] = K[..., :2, :] / 4.0   # exact for the pixel-edge convention
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

        # depth refinement in normalised inverse depth, kept inside (far, near)
        t = t1.permute(0, 2, 3, 1).clamp(1e-4, 1 - 1e-4)
        t = torch.sigmoid(torch.logit(t) + r_depth)
        inv_depth = inv_far.reshape(-1, 1, 1, 1) + t * (inv_near - inv_far).reshape(-1, 1, 1, 1)
        depth = 1.0 / inv_depth                                         # (BV,H,W,1)

        Kf = K.reshape(b * v, 3, 3)
        c2w = torch.linalg.inv(w2c.reshape(b * v, 4, 4))
        pix = pixel_grid(H, W, images.device, images.dtype)             # (3,HW)
        rays = torch.linalg.inv(Kf) @ pix                               # (BV,3,HW) with z = 1
        cam_pts = rays * depth.reshape(b * v, 1, H * W)
        means = (c2w[:, :3, :3] @ cam_pts + c2w[:, :3, 3:]).transpose(1, 2)  # (BV,HW,3)

        focal = 0.5 * (Kf[:, 0, 0] + Kf[:, 1, 1])
        pix_size = depth.reshape(b * v, H * W, 1) / focal[:, None, None]
        log_scales = torch.log(pix_size * c.scale_init_px) + 3.0 * torch.tanh(r_scale.reshape(b * v, H * W, 3) / 3.0)

        q_cam = r_rot.reshape(b * v, H * W, 4) + torch.tensor([1.0, 0, 0, 0], device=o.device, dtype=o.dtype)
        q_cam = q_cam / q_cam.norm(dim=-1, keepdim=True).clamp_min(1e-8)
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

        n = v * H * W
        gs, lams, log_lams = [], [], []
        for k in range(b):
            sl = slice(k * v, (k + 1) * v)
            gs.append(Gaussians(means[sl].reshape(n, 3), log_scales[sl].reshape(n, 3), quats[sl].reshape(n, 4),
                                opacity_logits[sl].reshape(n), sh[sl].reshape(n, self.n_sh, 3)))
            lams.append(lam[sl].reshape(n, len(GROUPS)))
            log_lams.append(log_lam[sl].reshape(n, len(GROUPS)))
        return PredictorOutput(gs, lams, log_lams, depth.reshape(b, v, H, W), conf1.reshape(b, v, H, W))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, cameras: Cameras, near: float, far: float) -> tuple[Gaussians, torch.Tensor]:
        """One scene: images (V,H,W,3) + Cameras -> (Gaussians, Λ (N,5)), no autograd."""
        dev = next(self.parameters()).device
        out = self(images[None].to(dev, torch.float32), cameras.K[None].to(dev, torch.float32),
                   cameras.w2c[None].to(dev, torch.float32), torch.tensor([near], device=dev),
                   torch.tensor([far], device=dev))
        return out.gaussians[0], out.lam[0]


def build_predictor(size: str = "small", **overrides) -> Predictor:
    """A freshly initialised predictor of a named size ("small" or "base")."""
    return Predictor(PredictorConfig.preset(size, **overrides))


__all__ = ["Predictor", "PredictorConfig", "PredictorOutput", "build_predictor", "rotmat_to_quat", "quat_multiply"]
