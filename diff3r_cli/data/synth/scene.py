"""Random synthetic scenes: a textured room with objects, lights and a RE10K-like camera path.

World frame: y up, floor at y = 0. Cameras: OpenCV (x right, y down, z forward). Everything is
drawn from one integer seed, so a scene is reproducible from its seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diff3r_cli.geometry import look_rotation, unit_quat_to_rotmat

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


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*(shape or (1,)), generator=g, dtype=torch.float64)


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(_rand(g, lo, hi))


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
    h = _u(g, 0, 1)
    scheme = int(torch.randint(0, 3, (1,), generator=g))
    cols = []
    for k in range(3):
        dh = [0.08 * k, 0.5 * (k % 2) + 0.03 * k, _u(g, 0, 1)][scheme]
        cols.append(_hsv_to_rgb((h + dh) % 1.0, _u(g, 0.15, 0.8), _u(g, 0.25, 0.95)))
    return torch.tensor(cols, dtype=torch.float64)


def _random_texture(g: torch.Generator, scale: float = 1.0) -> Texture:
    kind = int(torch.randint(0, 4, (1,), generator=g))
    d = torch.randn(3, generator=g, dtype=torch.float64)
    freq = {TEX_NOISE: _u(g, 0.8, 3.0), TEX_STRIPES: _u(g, 1.0, 5.0), TEX_CHECKER: _u(g, 1.0, 4.0),
            TEX_GRADIENT: _u(g, 0.2, 0.8)}[kind] * scale
    return Texture(kind, _random_palette(g), freq, d / d.norm(), _random_rotation(g),
                   _rand(g, 0, 100, 3), _u(g, 0.1, 0.35))


def _look_rotation(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """Camera-to-world rotation (columns: camera x right, y down, z forward in world coords)."""
    fwd = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)],
                       dtype=torch.float64)
    base = look_rotation(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right, down = base[:, 0], base[:, 1]
    # Apply roll about the forward axis.
    c, s = math.cos(roll), math.sin(roll)
    r2 = c * right + s * down
    d2 = -s * right + c * down
    return torch.stack([r2, d2, fwd], dim=1)


def _camera_path(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, frames: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Positions (T,3), camera-to-world rotations (T,3,3), yaws (T,) and length of a smooth RE10K-like clip."""
    margin = 0.8  # metres from the walls (the inside test allows 70% of it for the wobble)
    for attempt in range(100):
        p0 = torch.stack([_rand(g, lo[0] + margin, hi[0] - margin)[0], _rand(g, 1.1, min(1.9, hi[1] - 0.5))[0],
                          _rand(g, lo[2] + margin, hi[2] - margin)[0]])
        # Face the room's interior (RE10K clips look into rooms far more often than at a wall).
        centre = (lo + hi) / 2
        yaw0 = math.atan2(float(centre[0] - p0[0]), float(centre[2] - p0[2])) + _u(g, -0.9, 0.9)
        mode = int(torch.randint(0, 4, (1,), generator=g))  # forward, sideways, diagonal, turning
        motion_yaw = yaw0 + [0.0, math.copysign(math.pi / 2, _u(g, -1, 1)), _u(g, -0.8, 0.8), _u(g, -0.3, 0.3)][mode]
        length = _u(g, 0.6, 2.2) * (0.5 if mode == 3 else 1.0) * (0.5 ** (attempt // 25))
        yaw_total = _u(g, -0.35, 0.35) if mode != 3 else _u(g, -0.9, 0.9)
        pitch0, roll0 = _u(g, -0.25, 0.12), _u(g, -0.04, 0.04)
        t = torch.linspace(0, 1, frames, dtype=torch.float64)
        s = t + _u(g, -0.1, 0.1) * torch.sin(math.pi * t)  # mildly uneven speed, monotone
        direction = torch.tensor([math.sin(motion_yaw), 0.0, math.cos(motion_yaw)], dtype=torch.float64)
        lateral = torch.tensor([math.cos(motion_yaw), 0.0, -math.sin(motion_yaw)], dtype=torch.float64)
        wob_f, wob_p = _u(g, 0.5, 1.5), _u(g, 0, 2 * math.pi)
        pos = (p0 + s[:, None] * length * direction
               + (0.04 * torch.sin(2 * math.pi * wob_f * t + wob_p))[:, None] * lateral
               + (0.02 * torch.sin(2 * math.pi * 1.3 * wob_f * t))[:, None] * torch.tensor([0, 1.0, 0], dtype=torch.float64))
        inside = ((pos > lo + margin * 0.7) & (pos < hi - margin * 0.7)).all()
        if inside:
            break
    else:  # a standing camera that only rotates a little (always valid)
        p0 = (lo + hi) / 2
        p0[1] = 1.5
        pos = p0.expand(frames, 3).clone()
        t = torch.linspace(0, 1, frames, dtype=torch.float64)
        yaw_total, pitch0, roll0, wob_f, wob_p = 0.5, 0.0, 0.0, 1.0, 0.0
    yaws = yaw0 + yaw_total * t + 0.03 * torch.sin(2 * math.pi * wob_f * t + wob_p)
    pitches = pitch0 + 0.04 * torch.sin(2 * math.pi * 0.7 * t + wob_p)
    rolls = roll0 + 0.01 * torch.sin(2 * math.pi * 0.9 * t)
    rots = torch.stack([_look_rotation(float(a), float(b), float(c)) for a, b, c in zip(yaws, pitches, rolls)])
    return pos, rots, yaws, float(length)


def random_scene(seed: int, frames: int = 40, width: int = 256, height: int = 256) -> SynthScene:
    """Sample a room, objects, textures, lights and a camera path from an integer seed."""
    g = torch.Generator().manual_seed(int(seed))
    size = torch.tensor([_u(g, 4.0, 8.0), _u(g, 2.6, 3.6), _u(g, 4.0, 8.0)], dtype=torch.float64)
    lo = torch.tensor([-size[0] / 2, 0.0, -size[2] / 2], dtype=torch.float64)
    hi = torch.tensor([size[0] / 2, size[1], size[2] / 2], dtype=torch.float64)
    pos, rots, yaws, _ = _camera_path(g, lo, hi, frames)

    # Objects: most in the view of the middle frame (so they are seen), the rest anywhere; keep
    # them out of the camera path and apart from each other (footprint circles in xz).
    n_obj = int(torch.randint(5, 11, (1,), generator=g))
    placed: list[tuple[float, float, float]] = []  # (x, z, footprint radius)
    spheres, boxes, cylinders = [], [], []
    mid = frames // 2
    fwd = torch.tensor([math.sin(float(yaws[mid])), math.cos(float(yaws[mid]))], dtype=torch.float64)
    path_xz = pos[:, [0, 2]]
    for k in range(120):
        if len(placed) >= n_obj:
            break
        kind = int(torch.randint(0, 3, (1,), generator=g))
        r = _u(g, 0.2, 0.6)
        if k % 3 != 2:
            dist = _u(g, 1.3, 4.0)
            c = pos[mid, [0, 2]] + fwd * dist + torch.stack([fwd[1], -fwd[0]]) * dist * _u(g, -0.6, 0.6)
        else:
            c = torch.stack([_rand(g, lo[0], hi[0])[0], _rand(g, lo[2], hi[2])[0]])
        if not (lo[0] + r + 0.05 < c[0] < hi[0] - r - 0.05 and lo[2] + r + 0.05 < c[1] < hi[2] - r - 0.05):
            continue
        if (path_xz - c).norm(dim=1).min() < r + 0.9:  # keep the camera ~0.9 m clear of surfaces
            continue
        if any(math.hypot(float(c[0]) - x, float(c[1]) - z) < r + rr + 0.05 for x, z, rr in placed):
            continue
        placed.append((float(c[0]), float(c[1]), r))
        if kind == 0:
            cy = r if _u(g, 0, 1) < 0.6 else _u(g, r, min(2.0, float(hi[1]) - r - 0.1))
            spheres.append([float(c[0]), cy, float(c[1]), r])
        elif kind == 1:
            h = _u(g, 0.2, 1.2)
            # Footprint radius r bounds the box's half-diagonal so the xz check stays valid.
            hx, hz = r * _u(g, 0.45, 0.7), r * _u(g, 0.45, 0.7)
            boxes.append([float(c[0]), h, float(c[1]), hx, h, hz, _u(g, -math.pi, math.pi)])
        else:
            cylinders.append([float(c[0]), float(c[1]), r * _u(g, 0.5, 1.0), 0.0, _u(g, 0.3, 2.0)])
    spheres_t = torch.tensor(spheres, dtype=torch.float64).reshape(-1, 4)
    boxes_t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 7)
    cyl_t = torch.tensor(cylinders, dtype=torch.float64).reshape(-1, 5)

    textures = [_random_texture(g, 0.7) for _ in range(6)]
    textures += [_random_texture(g, 2.0) for _ in range(len(spheres) + len(boxes) + len(cylinders))]
    n_lights = int(torch.randint(1, 3, (1,), generator=g))
    lights = torch.stack([torch.cat([_rand(g, lo[0] + 0.3, hi[0] - 0.3), _rand(g, hi[1] * 0.6, hi[1] - 0.2),
                                     _rand(g, lo[2] + 0.3, hi[2] - 0.3), _rand(g, 0.6, 1.0) / n_lights ** 0.5])
                          for _ in range(n_lights)])

    fov = math.radians(_u(g, 55.0, 75.0))
    f = (width / 2) / math.tan(fov / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64).expand(frames, 3, 3).clone()
    w2c = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    w2c[:, :3, :3] = rots.transpose(1, 2)
    w2c[:, :3, 3] = -(rots.transpose(1, 2) @ pos[:, :, None])[..., 0]
    return SynthScene(lo, hi, spheres_t, boxes_t, cyl_t, textures, lights, _u(g, 0.25, 0.4), _u(g, 2.5, 5.0),
                      K, w2c, width, height, int(seed))


__all__ = ["SynthScene", "Texture", "random_scene", "TEX_NOISE", "TEX_STRIPES", "TEX_CHECKER", "TEX_GRADIENT"]
