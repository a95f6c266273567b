"""Camera paths of synthetic clips: the classic RE10K-like clip, a forward walk, an orbit around an
object and an aerial fly-by (high camera looking down, moving sideways), as in the real corpus.

World frame: y up, floor at y = 0; rotations are camera-to-world with OpenCV columns (x right,
y down, z forward). A path keeps the camera 0.56 m inside the walls; objects are placed after it
(see ``clutter``), using the path's hints to put them in view and out of the camera's way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diff3r_cli.data.synth.draw import rand, uniform
from diff3r_cli.geometry import look_rotation

MARGIN = 0.8  # metres from the walls (the inside test allows 70% of it for the wobble)
_UP = (0.0, 1.0, 0.0)


@dataclass
class CameraPath:
    """Positions (T,3), camera-to-world rotations (T,3,3), yaws (T,) and how to place objects around it."""

    pos: torch.Tensor
    rots: torch.Tensor
    yaws: torch.Tensor
    kind: str = "classic"
    focus: tuple[float, float] = (1.3, 4.0)   # distances ahead of the mid camera where objects go
    clear: float = 0.9                         # objects keep this far (plus their radius) from the path in xz
    object_scale: float = 1.0
    crowd: float = 1.0                         # multiplies the number of free-standing objects
    anchor: Optional[tuple[float, float, float]] = None  # (x, z, max radius) of the object an orbit circles


def look_rotation_ypr(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """Camera-to-world rotation (columns: camera x right, y down, z forward in world coords)."""
    fwd = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)],
                       dtype=torch.float64)
    base = look_rotation(fwd, torch.tensor(_UP, dtype=torch.float64))
    right, down = base[:, 0], base[:, 1]
    # Apply roll about the forward axis.
    c, s = math.cos(roll), math.sin(roll)
    r2 = c * right + s * down
    d2 = -s * right + c * down
    return torch.stack([r2, d2, fwd], dim=1)


def _rotations(yaws: torch.Tensor, pitches: torch.Tensor, rolls: torch.Tensor) -> torch.Tensor:
    return torch.stack([look_rotation_ypr(float(a), float(b), float(c)) for a, b, c in zip(yaws, pitches, rolls)])


def _inside(pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    return bool(((pos > lo + MARGIN * 0.7) & (pos < hi - MARGIN * 0.7)).all())


def classic_path(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, frames: int) -> CameraPath:
    """A smooth RE10K-like clip: forward, sideways, diagonal or turning motion with small rotations."""
    margin = MARGIN
    for attempt in range(100):
        p0 = torch.stack([rand(g, lo[0] + margin, hi[0] - margin)[0], rand(g, 1.1, min(1.9, hi[1] - 0.5))[0],
                          rand(g, lo[2] + margin, hi[2] - margin)[0]])
        # Face the room's interior (RE10K clips look into rooms far more often than at a wall).
        centre = (lo + hi) / 2
        yaw0 = math.atan2(float(centre[0] - p0[0]), float(centre[2] - p0[2])) + uniform(g, -0.9, 0.9)
        mode = int(torch.randint(0, 4, (1,), generator=g))  # forward, sideways, diagonal, turning
        motion_yaw = yaw0 + [0.0, math.copysign(math.pi / 2, uniform(g, -1, 1)), uniform(g, -0.8, 0.8),
                             uniform(g, -0.3, 0.3)][mode]
        length = uniform(g, 0.6, 2.2) * (0.5 if mode == 3 else 1.0) * (0.5 ** (attempt // 25))
        yaw_total = uniform(g, -0.35, 0.35) if mode != 3 else uniform(g, -0.9, 0.9)
        pitch0, roll0 = uniform(g, -0.25, 0.12), uniform(g, -0.04, 0.04)
        t = torch.linspace(0, 1, frames, dtype=torch.float64)
        s = t + uniform(g, -0.1, 0.1) * torch.sin(math.pi * t)  # mildly uneven speed, monotone
        direction = torch.tensor([math.sin(motion_yaw), 0.0, math.cos(motion_yaw)], dtype=torch.float64)
        lateral = torch.tensor([math.cos(motion_yaw), 0.0, -math.sin(motion_yaw)], dtype=torch.float64)
        wob_f, wob_p = uniform(g, 0.5, 1.5), uniform(g, 0, 2 * math.pi)
        pos = (p0 + s[:, None] * length * direction
               + (0.04 * torch.sin(2 * math.pi * wob_f * t + wob_p))[:, None] * lateral
               + (0.02 * torch.sin(2 * math.pi * 1.3 * wob_f * t))[:, None] * torch.tensor([0, 1.0, 0], dtype=torch.float64))
        if _inside(pos, lo, hi):
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
    return CameraPath(pos, _rotations(yaws, pitches, rolls), yaws)


def _sideways(yaw: float) -> torch.Tensor:
    """The horizontal unit vector to the camera's right for a heading ``yaw``."""
    return torch.tensor([math.cos(yaw), 0.0, -math.sin(yaw)], dtype=torch.float64)


def _heading(yaw: float) -> torch.Tensor:
    return torch.tensor([math.sin(yaw), 0.0, math.cos(yaw)], dtype=torch.float64)


def walk_path(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, frames: int) -> Optional[CameraPath]:
    """A forward walk along the room's long axis: eye height, slight bob and sway, small heading drift."""
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    long_axis = 0 if float(hi[0] - lo[0]) >= float(hi[2] - lo[2]) else 2
    for _ in range(30):
        sign = 1.0 if uniform(g, -1, 1) > 0 else -1.0
        heading = (math.pi / 2 if long_axis == 0 else 0.0) + (0.0 if sign > 0 else math.pi) + uniform(g, -0.3, 0.3)
        extent = float(hi[long_axis] - lo[long_axis]) - 2 * MARGIN
        length = uniform(g, 0.35, 0.8) * extent
        start = torch.stack([rand(g, lo[0] + MARGIN, hi[0] - MARGIN)[0], rand(g, 1.4, 1.75)[0],
                             rand(g, lo[2] + MARGIN, hi[2] - MARGIN)[0]])
        start[long_axis] = (lo[long_axis] + MARGIN) if sign > 0 else (hi[long_axis] - MARGIN)
        steps, phase = uniform(g, 2.0, 4.0), uniform(g, 0, 2 * math.pi)
        s = t + uniform(g, -0.08, 0.08) * torch.sin(math.pi * t)
        pos = (start + s[:, None] * length * _heading(heading)
               + (0.02 * torch.sin(math.pi * steps * t + phase))[:, None] * _sideways(heading)
               + (0.015 * torch.sin(2 * math.pi * steps * t + phase).abs())[:, None] * torch.tensor(_UP, dtype=torch.float64))
        if _inside(pos, lo, hi):
            yaws = heading + uniform(g, -0.15, 0.15) * t + 0.02 * torch.sin(math.pi * steps * t)
            pitches = uniform(g, -0.15, 0.05) + 0.01 * torch.sin(2 * math.pi * steps * t + phase)
            rolls = uniform(g, -0.03, 0.03) + 0.008 * torch.sin(math.pi * steps * t + phase)
            return CameraPath(pos, _rotations(yaws, pitches, rolls), yaws, "walk", focus=(1.3, 5.0))
    return None


def orbit_path(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, frames: int) -> Optional[CameraPath]:
    """An arc around an object (the path's anchor) at 1.4-2.6 m, the camera looking at it."""
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    room = min(float(hi[0] - lo[0]), float(hi[2] - lo[2])) - 2 * MARGIN
    radius = min(uniform(g, 1.6, 2.6), room / 2 - 0.01)
    if radius < 1.4:
        return None
    cx = uniform(g, float(lo[0]) + MARGIN + radius, float(hi[0]) - MARGIN - radius)
    cz = uniform(g, float(lo[2]) + MARGIN + radius, float(hi[2]) - MARGIN - radius)
    a0, sweep = uniform(g, 0, 2 * math.pi), uniform(g, 0.5, 2.0) * (1 if uniform(g, -1, 1) > 0 else -1)
    height, target_y = uniform(g, 0.9, 1.9), uniform(g, 0.3, 0.8)
    ang = a0 + sweep * (t + uniform(g, -0.08, 0.08) * torch.sin(math.pi * t))
    r = radius + 0.1 * torch.sin(2 * math.pi * uniform(g, 0.3, 1.0) * t)
    pos = torch.stack([cx + r * torch.sin(ang), height + 0.05 * torch.sin(math.pi * t), cz + r * torch.cos(ang)], 1)
    if not _inside(pos, lo, hi):
        return None
    aim = torch.tensor([cx, target_y, cz], dtype=torch.float64) - pos
    yaws = torch.atan2(aim[:, 0], aim[:, 2]) + uniform(g, -0.12, 0.12)
    pitches = torch.atan2(aim[:, 1], aim[:, [0, 2]].norm(dim=1))
    rolls = uniform(g, -0.03, 0.03) + 0.01 * torch.sin(2 * math.pi * t)
    # objects go around and behind the circled one rather than between it and the camera
    return CameraPath(pos, _rotations(yaws, pitches, rolls), yaws, "orbit", focus=(0.8 * radius, radius + 2.0),
                      anchor=(cx, cz, radius - 0.95))


def aerial_path(g: torch.Generator, lo: torch.Tensor, hi: torch.Tensor, frames: int) -> Optional[CameraPath]:
    """A fly-by: the camera high up (a tall hall, see ``aerial_room``), looking down 30-57°, moving sideways."""
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    height = min(float(hi[1]) - MARGIN, uniform(g, 0.65, 0.85) * float(hi[1]))
    for _ in range(30):
        start = torch.stack([rand(g, lo[0] + MARGIN, hi[0] - MARGIN)[0], torch.tensor(height, dtype=torch.float64),
                             rand(g, lo[2] + MARGIN, hi[2] - MARGIN)[0]])
        centre = (lo + hi) / 2
        heading = math.atan2(float(centre[0] - start[0]), float(centre[2] - start[2])) + uniform(g, -0.6, 0.6)
        motion = heading + math.copysign(math.pi / 2, uniform(g, -1, 1)) + uniform(g, -0.3, 0.3)
        pos = start + (t * uniform(g, 1.5, 4.5))[:, None] * _heading(motion)
        pos[:, 1] += 0.1 * torch.sin(math.pi * t)
        if _inside(pos, lo, hi):
            pitch = -uniform(g, 0.5, 1.0)
            yaws = heading + uniform(g, -0.2, 0.2) * t
            pitches = pitch + 0.03 * torch.sin(2 * math.pi * uniform(g, 0.3, 1.0) * t)
            rolls = uniform(g, -0.05, 0.05) + 0.01 * torch.sin(2 * math.pi * t)
            ahead = height / math.tan(-pitch)  # where the mid frame's optical axis meets the floor
            return CameraPath(pos, _rotations(yaws, pitches, rolls), yaws, "aerial",
                              focus=(0.4 * ahead, 1.3 * ahead), clear=0.0, object_scale=1.8, crowd=2.5)
    return None


def aerial_room(g: torch.Generator, size: torch.Tensor) -> torch.Tensor:
    """A wider, taller room for a fly-by (the classic room is too low to look down from)."""
    grow = uniform(g, 1.6, 2.4)
    return torch.tensor([float(size[0]) * grow, uniform(g, 5.5, 9.0), float(size[2]) * grow], dtype=torch.float64)


def walk_room(g: torch.Generator, size: torch.Tensor) -> torch.Tensor:
    """The room stretched along its long axis, so a walk has room to go."""
    out = size.clone()
    axis = 0 if float(size[0]) >= float(size[2]) else 2
    out[axis] = out[axis] * uniform(g, 1.3, 2.0)
    return out


PATHS: dict[str, Callable[..., Optional[CameraPath]]] = {"walk": walk_path, "orbit": orbit_path,
                                                          "aerial": aerial_path}
ROOMS: dict[str, Callable[[torch.Generator, torch.Tensor], torch.Tensor]] = {"walk": walk_room,
                                                                              "aerial": aerial_room}

__all__ = ["CameraPath", "classic_path", "walk_path", "orbit_path", "aerial_path", "look_rotation_ypr", "PATHS",
           "ROOMS", "MARGIN"]
