"""PSNR / SSIM against independent float64 references and closed-form values."""

import math

import torch

from diff3r_cli.metrics import gaussian_window_1d, psnr, ssim, ssim_map


def _ssim_direct(x, y, win=11, sigma=1.5, k1=0.01, k2=0.03):
    """Brute-force SSIM of one grey (H,W) float64 image pair: explicit 2D window per position."""
    ax = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g1 = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    w2 = torch.outer(g1, g1)
    w2 = w2 / w2.sum()
    h, w = x.shape
    c1, c2 = k1 ** 2, k2 ** 2
    out = torch.empty(h - win + 1, w - win + 1, dtype=torch.float64)
    for i in range(h - win + 1):
        for j in range(w - win + 1):
            px, py = x[i:i + win, j:j + win], y[i:i + win, j:j + win]
            mx, my = (w2 * px).sum(), (w2 * py).sum()
            vx = (w2 * (px - mx) ** 2).sum()
            vy = (w2 * (py - my) ** 2).sum()
            cxy = (w2 * (px - mx) * (py - my)).sum()
            out[i, j] = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return out


def test_window_is_normalised_gaussian():
    g = gaussian_window_1d(11, 1.5, dtype=torch.float64)
    assert abs(float(g.sum()) - 1) < 1e-12
    assert float(g[5]) == float(g.max())
    # ratio of neighbouring taps follows exp(-(x^2 - (x-1)^2)/(2 sigma^2))
    assert math.isclose(float(g[6] / g[5]), math.exp(-1 / (2 * 1.5 ** 2)), rel_tol=1e-12)


def test_ssim_matches_direct_float64():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 17, 19, 3, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(2, 17, 19, 3, generator=gen, dtype=torch.float64)).clamp(0, 1)
    fast = ssim_map(a, b)
    assert fast.shape == (2, 7, 9, 3)
    for n in range(2):
        for c in range(3):
            ref = _ssim_direct(a[n, :, :, c], b[n, :, :, c])
            assert torch.allclose(fast[n, :, :, c], ref, atol=1e-12), (n, c)
    mean = ssim(a, b)
    assert mean.shape == (2,)
    assert torch.allclose(mean, fast.mean(dim=(1, 2, 3)))
    # float32 path agrees with the float64 reference to float32 precision
    assert torch.allclose(ssim(a.float(), b.float()).double(), mean, atol=1e-5)


def test_ssim_known_values():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 16, 16, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(ssim(a, a), torch.ones(1, dtype=torch.float64), atol=1e-12)
    # Constant images: the structure term is C2/C2 = 1, only luminance remains.
    p, q = 0.3, 0.7
    x = torch.full((1, 12, 12, 3), p, dtype=torch.float64)
    y = torch.full((1, 12, 12, 3), q, dtype=torch.float64)
    c1 = 0.01 ** 2
    expected = (2 * p * q + c1) / (p * p + q * q + c1)
    assert math.isclose(float(ssim(x, y)), expected, rel_tol=1e-12)
    # A perfectly anti-correlated zero-mean-shifted image gives a negative SSIM
    z = 1 - a
    assert float(ssim(a, z)) < 0
    # noise lowers SSIM monotonically
    n = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    s1 = float(ssim(a, (a + 0.05 * n).clamp(0, 1)))
    s2 = float(ssim(a, (a + 0.2 * n).clamp(0, 1)))
    assert 1 > s1 > s2


def test_psnr_known_values():
    a = torch.zeros(3, 8, 8, 3)
    b = a + 0.1  # MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(a, b), torch.full((3,), 20.0), atol=1e-4)
    b2 = a.clone()
    b2[0, 0, 0, 0] = 1.0  # MSE = 1/192
    assert math.isclose(float(psnr(a[:1], b2[:1])), 10 * math.log10(192), rel_tol=1e-6)
    assert torch.isinf(psnr(a, a)).all()


def test_ssim_gradient_matches_finite_differences():
    """Directional derivatives of SSIM by autograd vs central differences (float64)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(1, 16, 16, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.rand(1, 16, 16, 3, dtype=torch.float64, generator=gen)
    (g,) = torch.autograd.grad(ssim(a, b).sum(), a)
    for _ in range(3):
        d = torch.randn(a.shape, dtype=torch.float64, generator=gen)
        eps = 1e-6
        with torch.no_grad():
            fd = (ssim(a + eps * d, b) - ssim(a - eps * d, b)).sum() / (2 * eps)
        assert abs(float((g * d).sum()) - float(fd)) < 1e-7 * max(1.0, abs(float(fd)))
