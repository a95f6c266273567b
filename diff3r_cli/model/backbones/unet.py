"""The 2D U-Net the released MVSplat/DepthSplat models use to refine cost volumes and depth:
a latent-diffusion style U-Net without time embedding, "post-norm" residual blocks
(conv -> GroupNorm -> SiLU), and attention blocks whose tokens span all views of a scene
(the batch is view-major, (V*B, C, H, W)). Attribute names follow the released checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    """8 groups, or 4 when the channel count is not a multiple of 8."""
    return nn.GroupNorm(8 if channels % 8 == 0 else 4, channels)


class ResBlock(nn.Module):
    """x + [conv-GN-SiLU]x2 (post-norm) or x + [GN-SiLU-conv]x2 (pre-norm; a parameter-free
    dropout slot before the second conv keeps the released indices); a 1x1 conv on the shortcut
    when the width changes."""

    def __init__(self, cin: int, cout: int, postnorm: bool = True):
        super().__init__()
        if postnorm:
            self.in_layers = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), group_norm(cout), nn.SiLU())
            self.out_layers = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), group_norm(cout), nn.SiLU())
        else:
            self.in_layers = nn.Sequential(group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, 1, 1))
            self.out_layers = nn.Sequential(group_norm(cout), nn.SiLU(), nn.Identity(), nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class CrossViewAttention(nn.Module):
    """Multi-head self-attention over the tokens of all V views of a scene (32 channels a head);
    post-norm: x + GN(proj(attn(x))), pre-norm: x + proj(attn(GN(x)))."""

    def __init__(self, channels: int, head_channels: int = 32, postnorm: bool = True, batch_major: bool = False):
        super().__init__()
        self.heads = channels // head_channels
        self.postnorm = postnorm
        self.batch_major = batch_major
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """x (V*B,C,H,W) view-major, or (B*V,...) with ``batch_major``."""
        vb, c, h, w = x.shape
        b = vb // views
        flat = x.reshape(vb, c, h * w)
        qkv = self.qkv(flat if self.postnorm else self.norm(flat))
        if self.batch_major:
            qkv = qkv.reshape(b, views, 3 * c, h * w).permute(0, 2, 1, 3).reshape(b, 3 * c, views * h * w)
        else:
            qkv = qkv.reshape(views, b, 3 * c, h * w).permute(1, 2, 0, 3).reshape(b, 3 * c, views * h * w)
        ch = c // self.heads
        # per head, the q, k and v channels are contiguous blocks of ``ch``
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, -1).split(ch, dim=1)
        s = 1.0 / math.sqrt(math.sqrt(ch))
        att = torch.softmax(torch.einsum("nct,ncs->nts", q * s, k * s), -1)
        out = torch.einsum("nts,ncs->nct", att, v).reshape(b, c, views, h * w)
        out = out.permute(0, 2, 1, 3) if self.batch_major else out.permute(2, 0, 1, 3)
        out = self.proj_out(out.reshape(vb, c, h * w))
        if self.postnorm:
            out = self.norm(out)
        return (flat + out).reshape(vb, c, h, w)


class Downsample(nn.Module):
    """Strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _run(block: nn.Sequential, x: torch.Tensor, views: int) -> torch.Tensor:
    for m in block:
        x = m(x, views) if isinstance(m, CrossViewAttention) else m(x)
    return x


class UNet(nn.Module):
    """One residual block per level (``len(mult)`` levels, x2 down between them), attention at the
    downsampling factors in ``attn``, a mirrored decoder with skips; output conv-GN-SiLU
    (post-norm, MVSplat) or GN-SiLU-conv (pre-norm, DepthSplat, whose batch is batch-major)."""

    def __init__(self, cin: int, width: int, cout: int, mult: tuple[int, ...], attn: tuple[int, ...],
                 postnorm: bool = True):
        super().__init__()
        pn = postnorm

        def res(a: int, b: int) -> nn.Module:
            return ResBlock(a, b, pn)

        def att(ch: int) -> nn.Module:
            return CrossViewAttention(ch, postnorm=pn, batch_major=not pn)

        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1))])
        skips = [width]
        ch, ds = width, 1
        for level, m in enumerate(mult):
            layers: list[nn.Module] = [res(ch, m * width)]
            ch = m * width
            if ds in attn:
                layers.append(att(ch))
            self.input_blocks.append(nn.Sequential(*layers))
            skips.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(nn.Sequential(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = nn.Sequential(res(ch, ch), nn.Identity(), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(2):
                layers = [res(ch + skips.pop(), width * m)]
                ch = width * m
                if ds in attn:
                    layers.append(att(ch))
                if level and i == 1:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.Sequential(*layers))
        if pn:
            self.out = nn.Sequential(nn.Conv2d(width, cout, 3, 1, 1), group_norm(cout), nn.SiLU())
        else:
            self.out = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, cout, 3, 1, 1))

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """x (V*B, C, H, W), view-major (post-norm) or batch-major (pre-norm)."""
        hs = []
        for blk in self.input_blocks:
            x = _run(blk, x, views)
            hs.append(x)
        x = self.middle_block(x)
        for blk in self.output_blocks:
            x = _run(blk, torch.cat([x, hs.pop()], 1), views)
        return self.out(x)


__all__ = ["UNet", "group_norm"]
