"""Procedural solid textures (value noise, stripes, checkers, gradients) and Lambert shading."""

from __future__ import annotations

import math

import torch

from diff3r_cli.data.synth.scene import TEX_CHECKER, TEX_NOISE, TEX_STRIPES, SynthScene, Texture

NOISE_PERIOD = 64
_NOISE_VOLUME: dict[tuple, torch.Tensor] = {}


def noise_lattice(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(P+1)^3 random lattice values (period P = 64), last slice = first on every axis (wraps)."""
    vol = _NOISE_VOLUME.get((dtype, str(device)))
    if vol is None:
        base = torch.rand(NOISE_PERIOD, NOISE_PERIOD, NOISE_PERIOD, generator=torch.Generator().manual_seed(12345),
                          dtype=torch.float64)
        base = torch.cat([base, base[:1]], 0)
        base = torch.cat([base, base[:, :1]], 1)
        base = torch.cat([base, base[:, :, :1]], 2)
        vol = base.to(device, dtype)
        _NOISE_VOLUME[(dtype, str(device))] = vol
    return vol


def value_noise(p: torch.Tensor, octaves: int = 3) -> torch.Tensor:
    """Multi-scale value noise of points (M,3) in [0,1]: smoothstep-weighted trilinear lattice values.

    The trilinear interpolation runs in grid_sample (one fused call per octave): warping the
    fractional coordinate by the smoothstep first makes its linear weights the smoothstep ones.
    """
    vol = noise_lattice(p.dtype, p.device)[None, None]                        # (1,1,P+1,P+1,P+1) [z,y,x]
    total = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    amp, norm, q = 1.0, 0.0, p
    for _ in range(octaves):
        fl = torch.floor(q)
        f = q - fl
        x = torch.remainder(fl, NOISE_PERIOD) + f * f * (3 - 2 * f)  # smoothstep: no lattice creases
        grid = (x * (2.0 / NOISE_PERIOD) - 1).view(1, -1, 1, 1, 3)    # grid (x,y,z) indexes (W,H,D)
        v = torch.nn.functional.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
        total = total + amp * v.view(-1)
        norm += amp
        amp *= 0.5
        q = q * 2.03 + 17.0  # non-integer ratio so octaves do not align
    return total / norm


def _palette_lerp(pal: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map of s in [0,1] through the three palette colours."""
    s = s.clamp(0, 1)[:, None]
    lo = torch.where(s < 0.5, pal[0], pal[1])
    hi = torch.where(s < 0.5, pal[1], pal[2])
    u = torch.where(s < 0.5, s * 2, s * 2 - 1)
    return lo + (hi - lo) * u


# Tri-planar projection: the patch plane for a surface whose normal is along x, y, z (texture frame):
# (horizontal, downwards) coordinates, so photos on walls stand upright.
_PLANES = ((2, 1), (0, 2), (0, 1))


def _image_albedo(tex: Texture, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Albedo (M,3) of a photo patch mapped onto the surfaces at p with normals n.

    The patch is projected along the normal's axis in the texture frame (blended by |n|^4 where
    curved surfaces turn), mirror-repeated every ``tile`` metres: seamless, and a function of the
    3D point and the geometry only, so every view sees the same colours.
    """
    dt, dev = p.dtype, p.device
    rot = tex.rot.to(dev, dt)
    q = (p @ rot.T) / tex.tile + tex.offset.to(dev, dt)
    w = (n @ rot.T).abs() ** 4
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    img = tex.image.to(dev, dt)[None]
    out = torch.zeros_like(p)
    for axis, (a, b) in enumerate(_PLANES):
        if float(w[:, axis].max()) < 1e-6:  # room faces and box faces use one plane only
            continue
        uv = torch.stack([q[:, a], q[:, b] if axis == 1 else -q[:, b]], 1)
        uv = 1 - (1 - torch.remainder(uv, 2.0)).abs()  # mirror repeat in [0, 1]
        col = torch.nn.functional.grid_sample(img, (uv * 2 - 1).view(1, 1, -1, 2), mode="bilinear",
                                              padding_mode="border", align_corners=False)
        out = out + w[:, axis:axis + 1] * col[0, :, 0].T
    return out


def shade_texture(tex: Texture, p: torch.Tensor, n: torch.Tensor | None = None) -> torch.Tensor:
    """Albedo (M,3) of a texture at world points p (M,3); an image texture needs the normals n (M,3)."""
    dt = p.dtype
    dev = p.device
    if tex.image is not None:
        if n is None:
            raise ValueError("an image texture needs the surface normals")
        return _image_albedo(tex, p, n)
    pal = tex.palette.to(dev, dt)
    q = (p @ tex.rot.to(dev, dt).T) * tex.freq + tex.offset.to(dev, dt)
    if tex.kind == TEX_NOISE:
        s = value_noise(q, 4)
        s = (s - 0.5) * 2.2 + 0.5
    elif tex.kind == TEX_STRIPES:
        x = (p @ tex.direction.to(dev, dt)) * tex.freq
        s = 0.5 + 0.5 * torch.tanh(4.0 * torch.sin(2 * math.pi * x))
    elif tex.kind == TEX_CHECKER:
        s = (torch.floor(q).long().sum(1) % 2).to(dt)
    else:
        x = (p @ tex.direction.to(dev, dt)) * tex.freq
        s = 0.5 + 0.5 * torch.sin(2 * math.pi * x)
    albedo = _palette_lerp(pal, s)
    grain = value_noise(q * 3.1 + 5.0, 2)
    return albedo * (1 + tex.grain * (grain - 0.5) * 2).clamp_min(0)[:, None]


def shade(scene: SynthScene, p: torch.Tensor, n: torch.Tensor, surf: torch.Tensor) -> torch.Tensor:
    """Lambert colour (M,3) of hit points p with normals n on surfaces surf."""
    dt = p.dtype
    albedo = torch.zeros_like(p)
    for s in torch.bincount(surf).nonzero()[:, 0].tolist():
        m = (surf == s).nonzero()[:, 0]
        albedo[m] = shade_texture(scene.textures[s], p[m], n[m])
    light = torch.full((p.shape[0],), scene.ambient, dtype=dt, device=p.device)
    for L in scene.lights.to(p.device, dt):
        v = L[:3] - p
        dist = v.norm(dim=1).clamp_min(1e-6)
        cos = ((v * n).sum(1) / dist).clamp_min(0)
        light = light + L[3] * cos / (1 + (dist / scene.falloff) ** 2) * 1.6
    return (albedo * light[:, None]).clamp(0, 1)


def apply_exposure(rgb: torch.Tensor, scene: SynthScene, frame: int) -> torch.Tensor:
    """A frame's exposure: gain, then gamma (the scene's per-frame drift; unchanged without one)."""
    if scene.exposure is None:
        return rgb
    gain, gamma = (float(x) for x in scene.exposure[frame])
    return (rgb * gain).clamp(0, 1) ** gamma


__all__ = ["noise_lattice", "value_noise", "shade_texture", "shade", "apply_exposure", "NOISE_PERIOD"]
