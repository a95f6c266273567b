"""The predictor's network layers: CNN encoder, cross-view attention, cost-volume depth refiner."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from diff3r_cli.model.config import PredictorConfig


def _groups(ch: int) -> int:
    """GroupNorm group count: the largest of 8, 4, 2 dividing ``ch`` (else 1)."""
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


class ConvAct(nn.Sequential):
    """Conv (same padding for stride 1) + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a residual connection."""

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


__all__ = ["ConvAct", "ResBlock", "Encoder", "CrossViewAttention", "DepthRefiner"]
