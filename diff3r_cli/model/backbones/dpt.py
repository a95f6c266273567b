"""The DPT-style fusion head DepthSplat uses twice (depth residual upsampler and Gaussian-feature
upsampler), in the configuration of its single-scale, x4 model: ViT tokens at 1/8 are projected
to four resolutions (1/2, 1/4, 1/8, 1/16), concatenated with the CNN (1/2, 1/2, 1/4) and
multi-view (1/4) features (+ the coarse inverse depth for the depth head), and fused coarse to
fine. Attribute names follow the release (``projects``, ``resize_layers``, ``concat_projects``,
``scratch.layer{1..4}_rn``, ``scratch.refinenet{1..4}``, ``scratch.output_conv``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x))))."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """(coarse [+ RCU(skip)]) -> RCU -> bilinear resize (x2 or to ``size``) -> 1x1 conv."""

    def __init__(self, ch: int, with_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(ch, ch, 1)
        if with_skip:
            self.resConfUnit1 = ResidualConvUnit(ch)
        self.resConfUnit2 = ResidualConvUnit(ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, **({"size": size} if size is not None else {"scale_factor": 2}), mode="bilinear",
                          align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """ViT features (4 x (N,C,H/8,W/8)) + CNN/multi-view features -> full-resolution output:
    ``features`` channels (``return_feature``) or one channel (the depth residual)."""

    def __init__(self, in_channels: int, features: int, out_channels: tuple[int, int, int, int],
                 return_feature: bool, cnn_channels: tuple[int, int, int] = (64, 96, 128), mv_channels: int = 128):
        super().__init__()
        oc = out_channels
        self.return_feature = return_feature
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(oc[0], oc[0], 4, 4), nn.ConvTranspose2d(oc[1], oc[1], 2, 2),
                                            nn.Identity(), nn.Conv2d(oc[3], oc[3], 3, 2, 1)])
        depth_ch = 0 if return_feature else 1
        self.concat_projects = nn.ModuleList([
            nn.Conv2d(cnn_channels[0] + cnn_channels[1] + oc[0], oc[0], 1),
            nn.Conv2d(cnn_channels[2] + oc[1] + mv_channels + depth_ch, oc[1], 1),
            nn.Conv2d(oc[2], oc[2], 1)])
        self.scratch = nn.Module()
        for i in range(4):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(oc[i], features, 3, 1, 1, bias=False))
        for i in range(4):
            setattr(self.scratch, f"refinenet{i + 1}", FusionBlock(features, with_skip=(i != 3)))
        if not return_feature:
            self.scratch.output_conv = nn.Sequential(
                nn.Conv2d(features, features // 2, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                nn.Conv2d(features // 2, 16, 3, 1, 1, padding_mode="replicate"), nn.GELU(), nn.Conv2d(16, 1, 1))

    def forward(self, vit: list[torch.Tensor], cnn: list[torch.Tensor], mv: torch.Tensor,
                depth: torch.Tensor | None = None) -> torch.Tensor:
        l1, l2, l3, l4 = (r(p(x)) for x, p, r in zip(vit, self.projects, self.resize_layers))
        l1 = self.concat_projects[0](torch.cat([cnn[0], cnn[1], l1], 1))
        extra = [] if self.return_feature else [depth]
        l2 = self.concat_projects[1](torch.cat([cnn[2], l2, mv] + extra, 1))
        l3 = self.concat_projects[2](l3)
        s = self.scratch
        r1, r2, r3, r4 = s.layer1_rn(l1), s.layer2_rn(l2), s.layer3_rn(l3), s.layer4_rn(l4)
        p = s.refinenet4(r4, size=r3.shape[2:])
        p = s.refinenet3(p, r3, size=r2.shape[2:])
        p = s.refinenet2(p, r2, size=r1.shape[2:])
        p = s.refinenet1(p, r1)
        return p if self.return_feature else s.output_conv(p)


__all__ = ["DPTHead"]
