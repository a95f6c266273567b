"""Image quality metrics: PSNR and SSIM (differentiable, batched).

Images are (..., H, W, 3) float tensors in [0, 1] (the layout of RenderOutput.rgb and
Scene.images). Every metric returns one value per leading index, e.g. (C,) for (C,H,W,3).

SSIM follows Wang et al. 2004 as used by pixelSplat/MVSplat (skimage with
gaussian_weights=True): Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range
1, population (not sample) statistics, computed per channel over the "valid" region (no
padding) and averaged over pixels and channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 3:
        raise ValueError(f"expected (..., H, W, C) images, got shape {tuple(a.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (..., H, W, C) -> (...)."""
    _check_pair(a, b)
    return ((a - b) ** 2).flatten(-3).mean(-1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (..., H, W, C) -> (...).

    Identical images give +inf (as the definition says); callers averaging over a data set
    should be aware of that.
    """
    m = mse(a, b)
    return 10.0 * torch.log10(data_range ** 2 / m)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                       dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian taps centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64, device="cpu") - (size - 1) / 2.0  # float64 taps, then moved
    w = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (w / w.sum()).to(dtype=dtype, device=device)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
             window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel SSIM over the valid region: (..., H, W, C) -> (..., H-window+1, W-window+1, C)."""
    _check_pair(a, b)
    *lead, h, w, c = a.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {h}x{w}")
    x = a.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    y = b.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    g = gaussian_window_1d(window, sigma, dtype=a.dtype, device=a.device)
    gh, gw = g.view(1, 1, window, 1), g.view(1, 1, 1, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # The 2D Gaussian is separable: two 1D passes instead of one 11x11 conv.
        return F.conv2d(F.conv2d(t, gh), gw)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    ho, wo = s.shape[-2:]
    return s.reshape(-1, c, ho, wo).permute(0, 2, 3, 1).reshape(*lead, ho, wo, c)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image: (..., H, W, C) -> (...). 1 for identical images."""
    return ssim_map(a, b, data_range).flatten(-3).mean(-1)


def psnr_from_mse(m: float) -> float:
    """PSNR (dB, data range 1) of a mean squared error given as a Python float."""
    return float("inf") if m <= 0 else -10.0 * math.log10(m)


__all__ = ["mse", "psnr", "ssim", "ssim_map", "gaussian_window_1d", "psnr_from_mse"]
