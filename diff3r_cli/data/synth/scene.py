"""Random synthetic scenes: a textured room with objects, lights and a RE10K-like camera path.

World frame: y up, floor at y = 0. Cameras: OpenCV (x right, y down, z forward). Everything is
drawn from one integer seed, so a scene is reproducible from its seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from diff3r_cli.data.synth.clutter import room_objects
from diff3r_cli.data.synth.draw import feature_generator
from diff3r_cli.data.synth_config import CLASSIC, SynthConfig
from diff3r_cli.data.synth.draw import rand, uniform
from diff3r_cli.data.synth.paths import PATHS, ROOMS, CameraPath, classic_path
from diff3r_cli.data.synth.photos import photo_textures
from diff3r_cli.geometry import unit_quat_to_rotmat

TEX_NOISE, TEX_STRIPES, TEX_CHECKER, TEX_GRADIENT = 0, 1, 2, 3


@dataclass
class Texture:
    """A procedural solid texture: kind, palette (3,3), frequency, direction, rotation, noise mix."""

    kind: int
    palette: torch.Tensor        # (3,3) colours in [0,1]
    freq: float
    direction: torch.Tensor      # (3,) unit
    rot: torch.Tensor            # (3,3) rotation for checkers/noise lattice
    offset: torch.Tensor         # (3,) lattice offset
    grain: float                 # amplitude of the multiplicative noise added to every texture
    image: Optional[torch.Tensor] = None  # (3,h,w) photo patch: an image texture (the fields above unused)
    tile: float = 1.0                     # metres one patch spans on the surface (mirror-repeated beyond)


@dataclass
class SynthScene:
    """Geometry, textures, lights and camera path of one synthetic scene."""

    room_lo: torch.Tensor                      # (3,)
    room_hi: torch.Tensor                      # (3,)
    spheres: torch.Tensor                      # (Ns,4) cx cy cz r
    boxes: torch.Tensor                        # (Nb,7) cx cy cz hx hy hz yaw
    cylinders: torch.Tensor                    # (Nc,5) cx cz r y0 y1
    textures: list[Texture]                    # 6 room faces, then spheres, boxes, cylinders
    lights: torch.Tensor                       # (L,4) x y z intensity
    ambient: float
    falloff: float
    K: torch.Tensor                            # (T,3,3) pixels
    w2c: torch.Tensor                          # (T,4,4)
    width: int
    height: int
    seed: int
    meta: dict = field(default_factory=dict)
    exposure: Optional[torch.Tensor] = None    # (T,2) per-frame gain and gamma; None: none


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    """A uniformly random rotation (a normalised Gaussian quaternion)."""
    q = torch.randn(4, generator=g, dtype=torch.float64)
    # normalised here, not again inside: a second division would change the last bits (and the textures)
    return unit_quat_to_rotmat(q / q.norm())


def _hsv_to_rgb(h: float, s: float, v: float) -> list[float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _random_palette(g: torch.Generator) -> torch.Tensor:
    """Three colours around a random hue (analogous or complementary), varied value."""
    h = uniform(g, 0, 1)
    scheme = int(torch.randint(0, 3, (1,), generator=g))
    cols = []
    for k in range(3):
        dh = [0.08 * k, 0.5 * (k % 2) + 0.03 * k, uniform(g, 0, 1)][scheme]
        cols.append(_hsv_to_rgb((h + dh) % 1.0, uniform(g, 0.15, 0.8), uniform(g, 0.25, 0.95)))
    return torch.tensor(cols, dtype=torch.float64)


def _random_texture(g: torch.Generator, scale: float = 1.0) -> Texture:
    kind = int(torch.randint(0, 4, (1,), generator=g))
    d = torch.randn(3, generator=g, dtype=torch.float64)
    freq = {TEX_NOISE: uniform(g, 0.8, 3.0), TEX_STRIPES: uniform(g, 1.0, 5.0), TEX_CHECKER: uniform(g, 1.0, 4.0),
            TEX_GRADIENT: uniform(g, 0.2, 0.8)}[kind] * scale
    return Texture(kind, _random_palette(g), freq, d / d.norm(), _random_rotation(g),
                   rand(g, 0, 100, 3), uniform(g, 0.1, 0.35))


def _exposure_drift(g: torch.Generator, frames: int, scale: float) -> torch.Tensor | None:
    """Per-frame (gain, gamma) (T,2): a slow drift of a few percent across the clip, as auto-exposure does."""
    if scale <= 0:
        return None
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    log_gain = scale * (uniform(g, -0.12, 0.12) * (2 * t - 1)
                        + uniform(g, 0.0, 0.05) * torch.sin(2 * math.pi * uniform(g, 0.5, 1.5) * t + uniform(g, 0, 6.3)))
    gamma = 1.0 + scale * uniform(g, -0.06, 0.06) * (2 * t - 1)
    return torch.stack([log_gain.exp(), gamma], 1)


def _draw_path(g: torch.Generator, features: torch.Generator, size: torch.Tensor, frames: int,
               config: SynthConfig) -> tuple[torch.Tensor, torch.Tensor, CameraPath]:
    """The room's corners and the clip's camera path (a new kind may reshape the room first)."""
    kinds, weights = zip(*config.paths)
    kind = kinds[int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=features))] \
        if len(kinds) > 1 else kinds[0]
    if kind in ROOMS:
        size = ROOMS[kind](features, size)
    lo = torch.tensor([-size[0] / 2, 0.0, -size[2] / 2], dtype=torch.float64)
    hi = torch.tensor([size[0] / 2, size[1], size[2] / 2], dtype=torch.float64)
    path = PATHS[kind](features, lo, hi, frames) if kind != "classic" else None
    return lo, hi, path if path is not None else classic_path(g, lo, hi, frames)


def random_scene(seed: int, frames: int = 40, width: int = 256, height: int = 256,
                 config: SynthConfig | None = None) -> SynthScene:
    """Sample a room, objects, textures, lights and a camera path from an integer seed.

    config: what to draw; None is `CLASSIC` (the rooms of the generator before issue 13, which the
    bundled sample and several tests are built on); the dataset writer defaults to `SynthConfig()`.
    The horizontal field of view spans ``width``.
    """
    config = CLASSIC if config is None else config
    g = torch.Generator().manual_seed(int(seed))
    features = feature_generator(seed)
    size = torch.tensor([uniform(g, 4.0, 8.0), uniform(g, 2.6, 3.6), uniform(g, 4.0, 8.0)], dtype=torch.float64)
    lo, hi, path = _draw_path(g, features, size, frames, config)
    spheres_t, boxes_t, cyl_t = room_objects(g, features, lo, hi, path, config).tensors()

    textures = [_random_texture(g, 0.7) for _ in range(6)]
    textures += [_random_texture(g, 2.0) for _ in range(len(spheres_t) + len(boxes_t) + len(cyl_t))]
    if config.texture_root is not None and config.photo_fraction > 0:
        textures = photo_textures(textures, boxes_t, len(spheres_t), config, feature_generator(seed, 2))
    n_lights = int(torch.randint(1, 3, (1,), generator=g))
    lights = torch.stack([torch.cat([rand(g, lo[0] + 0.3, hi[0] - 0.3), rand(g, hi[1] * 0.6, hi[1] - 0.2),
                                     rand(g, lo[2] + 0.3, hi[2] - 0.3), rand(g, 0.6, 1.0) / n_lights ** 0.5])
                          for _ in range(n_lights)])

    fov = math.radians(uniform(g, *config.fov_deg))
    f = (width / 2) / math.tan(fov / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64).expand(frames, 3, 3).clone()
    rots, pos = path.rots, path.pos
    w2c = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    w2c[:, :3, :3] = rots.transpose(1, 2)
    w2c[:, :3, 3] = -(rots.transpose(1, 2) @ pos[:, :, None])[..., 0]
    return SynthScene(lo, hi, spheres_t, boxes_t, cyl_t, textures, lights, uniform(g, 0.25, 0.4), uniform(g, 2.5, 5.0),
                      K, w2c, width, height, int(seed), meta={"path": path.kind, "anchor": path.anchor},
                      exposure=_exposure_drift(feature_generator(seed, 3), frames, config.exposure))


__all__ = ["SynthScene", "Texture", "random_scene", "TEX_NOISE", "TEX_STRIPES", "TEX_CHECKER", "TEX_GRADIENT"]
