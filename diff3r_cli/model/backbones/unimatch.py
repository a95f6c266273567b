"""The feature stage shared by MVSplat and DepthSplat: a UniMatch-style CNN and a multi-view
swin transformer, written from the published architecture description so that the attribute
names (and so the state-dict keys) are those of the released checkpoints.

CNN: 7x7/2 stem, three stages of two residual blocks (instance norm without affine
parameters), a 1x1 projection; features at 1/4 (MVSplat, DepthSplat) of the input.
Transformer: per layer a windowed self-attention and a windowed cross-attention to the other
views (keys of all other views share one softmax), with a feed-forward net on [x, message];
windows are 2x2 splits of the feature map, shifted by half a window on odd layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0,1] -> ImageNet-standardised."""
    mean = x.new_tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).reshape(3, 1, 1)
    return (x - mean) / std


class ResidualBlock(nn.Module):
    """conv-IN-ReLU twice plus a (strided 1x1 conv + IN) shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        if stride != 1 or cin != cout:
            self.norm3 = nn.InstanceNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), self.norm3)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class CNNEncoder(nn.Module):
    """Image (N,3,H,W) (standardised) -> features (N,out_dim,H/s,W/s) after a /2 stem and stages of
    strides 1, ``strides[0]``, ``strides[1]`` (MVSplat: 2, 1; DepthSplat: 1, 2; both end at 1/4)."""

    def __init__(self, out_dim: int = 128, strides: tuple[int, int] = (2, 1), dims: tuple[int, int, int] = (64, 96, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, dims[0], 7, 2, 3, bias=False)
        self.norm1 = nn.InstanceNorm2d(dims[0])
        self.layer1 = nn.Sequential(ResidualBlock(dims[0], dims[0]), ResidualBlock(dims[0], dims[0]))
        self.layer2 = nn.Sequential(ResidualBlock(dims[0], dims[1], strides[0]), ResidualBlock(dims[1], dims[1]))
        self.layer3 = nn.Sequential(ResidualBlock(dims[1], dims[2], strides[1]), ResidualBlock(dims[2], dims[2]))
        self.conv2 = nn.Conv2d(dims[2], out_dim, 1)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[layer1 output, layer2 output, final features], high to low resolution."""
        a = self.layer1(F.relu(self.norm1(self.conv1(x))))
        b = self.layer2(a)
        return [a, b, self.conv2(self.layer3(b))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]


def sine_position(h: int, w: int, channels: int, device, dtype=torch.float32) -> torch.Tensor:
    """DETR-style normalised sine/cosine position code (channels,h,w): first half y, second half x."""
    n = channels // 2
    ys = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6) * (2 * math.pi)
    xs = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6) * (2 * math.pi)
    freq = 10000.0 ** (2 * (torch.arange(n, device=device) // 2).float() / n)

    def code(t: torch.Tensor) -> torch.Tensor:               # (L,) -> (L, n): sin on even, cos on odd slots
        a = t[:, None] / freq
        out = torch.empty_like(a)
        out[:, 0::2] = a[:, 0::2].sin()
        out[:, 1::2] = a[:, 1::2].cos()
        return out

    py = code(ys)[:, None, :].expand(h, w, n)
    px = code(xs)[None, :, :].expand(h, w, n)
    return torch.cat([py, px], -1).permute(2, 0, 1).to(dtype)


def add_window_position(x: torch.Tensor, splits: int) -> torch.Tensor:
    """Add the position code of one window, tiled over the splits x splits windows. x (N,C,H,W)."""
    _, c, h, w = x.shape
    pos = sine_position(h // splits, w // splits, c, x.device, x.dtype)
    return x + pos.repeat(1, splits, splits)


def _to_windows(x: torch.Tensor, s: int) -> torch.Tensor:
    """(N,H,W,C) -> (N*s*s, H/s * W/s, C), windows row-major within each image."""
    n, h, w, c = x.shape
    x = x.reshape(n, s, h // s, s, w // s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n * s * s, (h // s) * (w // s), c)


def _from_windows(x: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows` -> (N,H,W,C)."""
    c = x.shape[-1]
    n = x.shape[0] // (s * s)
    x = x.reshape(n, s, s, h // s, w // s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


def shifted_window_mask(h: int, w: int, s: int, device) -> torch.Tensor:
    """(s*s, T, T) additive mask (0 / -100) that keeps attention inside the regions a cyclic
    shift of half a window brought together (T = tokens per window)."""
    wh, ww = h // s, w // s
    sh, sw = wh // 2, ww // 2
    label = torch.zeros(h, w, device=device)
    rows = (slice(0, h - wh), slice(h - wh, h - sh), slice(h - sh, h))
    cols = (slice(0, w - ww), slice(w - ww, w - sw), slice(w - sw, w))
    k = 0
    for r in rows:
        for c in cols:
            label[r, c] = k
            k += 1
    lab = _to_windows(label[None, :, :, None], s)[..., 0]          # (s*s, T)
    diff = lab[:, None, :] - lab[:, :, None]
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int, splits: int,
                     shift: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """Single-head windowed attention.

    q (N,L,C); k, v (N,M,L,C) for M key views whose tokens share one softmax. Keys are ordered
    token-major ((token, view)); the shift mask is tiled M times along the key axis, as the
    released models were trained with. Returns (N,L,C).
    """
    n, l, c = q.shape
    m = k.shape[1]
    s = splits
    q = q.reshape(n, h, w, c)
    k = k.reshape(n, m, h, w, c)
    v = v.reshape(n, m, h, w, c)
    if shift:
        sh, sw = (h // s) // 2, (w // s) // 2
        q = torch.roll(q, (-sh, -sw), (1, 2))
        k = torch.roll(k, (-sh, -sw), (2, 3))
        v = torch.roll(v, (-sh, -sw), (2, 3))
    qw = _to_windows(q, s)                                                        # (N*s*s, T, C)
    kw = _to_windows(k.permute(0, 2, 3, 1, 4).reshape(n, h, w, m * c), s)         # (N*s*s, T, M*C)
    vw = _to_windows(v.permute(0, 2, 3, 1, 4).reshape(n, h, w, m * c), s)
    t = qw.shape[1]
    kw = kw.reshape(-1, t * m, c)                                                 # token-major keys
    vw = vw.reshape(-1, t * m, c)
    scores = qw @ kw.transpose(1, 2) / math.sqrt(c)
    if shift:
        scores = scores + mask.repeat(n, 1, m)
    out = torch.softmax(scores, -1) @ vw
    out = _from_windows(out, s, h, w)
    if shift:
        out = torch.roll(out, (sh, sw), (1, 2))
    return out.reshape(n, l, c)


class TransformerLayer(nn.Module):
    """Attention (q from x, k/v from the target views) + LayerNorm, optionally an FFN on [x, msg]."""

    def __init__(self, d: int = 128, ffn: bool = True, expansion: int = 4, shift: bool = False):
        super().__init__()
        self.shift = shift
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.merge = nn.Linear(d, d, bias=False)
        self.norm1 = nn.LayerNorm(d)
        self.has_ffn = ffn
        if ffn:
            self.mlp = nn.Sequential(nn.Linear(2 * d, 2 * d * expansion, bias=False), nn.GELU(),
                                     nn.Linear(2 * d * expansion, d, bias=False))
            self.norm2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, target: torch.Tensor, h: int, w: int, splits: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (N,L,C); target (N,M,L,C)."""
        msg = window_attention(self.q_proj(x), self.k_proj(target), self.v_proj(target), h, w, splits,
                               self.shift and splits > 1, mask)
        msg = self.norm1(self.merge(msg))
        if self.has_ffn:
            msg = self.norm2(self.mlp(torch.cat([x, msg], -1)))
        return x + msg


class TransformerBlock(nn.Module):
    """Self-attention (no FFN) then cross-attention to the other views (with FFN)."""

    def __init__(self, d: int, expansion: int, shift: bool):
        super().__init__()
        self.self_attn = TransformerLayer(d, ffn=False, expansion=expansion, shift=shift)
        self.cross_attn_ffn = TransformerLayer(d, ffn=True, expansion=expansion, shift=shift)

    def forward(self, x: torch.Tensor, others: torch.Tensor, h: int, w: int, splits: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn(x, x[:, None], h, w, splits, mask)
        return self.cross_attn_ffn(x, others, h, w, splits, mask)


def _others(x: torch.Tensor) -> torch.Tensor:
    """(V,B,L,C) -> (V*B, V-1, L, C): for each view, the other views in ascending order."""
    v = x.shape[0]
    rows = [torch.stack([x[j] for j in range(v) if j != i], 1) for i in range(v)]
    return torch.cat(rows, 0)


class MultiViewTransformer(nn.Module):
    """Features of V views (B,V,C,H,W) -> the same after ``num_layers`` self+cross blocks."""

    def __init__(self, num_layers: int = 6, d: int = 128, expansion: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(d, expansion, shift=(i % 2 == 1)) for i in range(num_layers))

    def forward(self, feats: torch.Tensor, splits: int = 2) -> torch.Tensor:
        b, v, c, h, w = feats.shape
        mask = shifted_window_mask(h, w, splits, feats.device).to(feats.dtype) if splits > 1 else None
        x = feats.permute(1, 0, 3, 4, 2).reshape(v, b, h * w, c)                   # view-major batches
        for layer in self.layers:
            flat = layer(x.reshape(v * b, h * w, c), _others(x), h, w, splits, mask)
            x = flat.reshape(v, b, h * w, c)
        return x.reshape(v, b, h, w, c).permute(1, 0, 4, 2, 3)


__all__ = ["CNNEncoder", "MultiViewTransformer", "add_window_position", "imagenet_normalise", "sine_position"]
