"""Synthetic RE10K-like training data from an exact ray caster (not a splatting renderer).

Each scene is an indoor-like room (an axis-aligned box seen from inside: textured walls,
floor and ceiling) holding several objects (yaw-rotated boxes, spheres, vertical capped
cylinders). Surfaces carry procedural solid textures evaluated at the 3D hit point
(multi-scale value noise, stripes, checkers, smooth gradients; random palettes), shaded
with Lambert's law under one or two point lights plus ambient. Pixels are anti-aliased
with ``spp`` jittered samples; depth is the z-depth (camera coordinates) of the sample
through the pixel centre. Camera paths mimic RE10K clips: smooth forward/sideways motion
with small rotations, inside the room and away from objects.

World frame: y up, floor at y = 0. Cameras: OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.re10k import (BadChunkError, cameras_to_rows, encode_jpeg, read_chunk, read_index,
                                       write_chunk, write_json_atomic)

SPLIT_SEED_OFFSET = {"train": 0, "test": 1_000_000}
EPS = 1e-4
TEX_NOISE, TEX_STRIPES, TEX_CHECKER, TEX_GRADIENT = 0, 1, 2, 3


# ----------------------------------------------------------------------------- scene description

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
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)


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
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    right = torch.linalg.cross(up, fwd)  # with y up and z forward, x = up x fwd points right? fix sign below
    right = -right / right.norm()
    down = torch.linalg.cross(fwd, right)
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


# ----------------------------------------------------------------------------- ray casting

def _objects(scene: SynthScene) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(kind, params, bounding-sphere centre, bounding radius) in surface-id order (after the 6 room faces)."""
    objs = []
    for sp in scene.spheres:
        objs.append(("sphere", sp, sp[:3], float(sp[3])))
    for bx in scene.boxes:
        objs.append(("box", bx, bx[:3], float(bx[3:6].norm())))
    for cl in scene.cylinders:
        centre = torch.stack([cl[0], (cl[3] + cl[4]) / 2, cl[1]])
        objs.append(("cylinder", cl, centre, math.hypot(float(cl[2]), float(cl[4] - cl[3]) / 2)))
    return objs


def _hit_sphere(sp: torch.Tensor, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Ray parameter of the first hit of o + t d (d (...,3)) with a sphere, inf if none."""
    oc = o - sp[:3]
    a = (d * d).sum(-1)
    b = d @ oc
    c = float(oc @ oc - sp[3] ** 2)
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc > 0) & (t > EPS), t, torch.full_like(t, float("inf")))


def _hit_box(bx: torch.Tensor, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """First hit with a box rotated by yaw about the vertical axis (slab test in its frame)."""
    c, s = math.cos(float(bx[6])), math.sin(float(bx[6]))
    rel = o - bx[:3]
    ol = [c * rel[0] - s * rel[2], rel[1], s * rel[0] + c * rel[2]]
    dl = [d[..., 0] * c - d[..., 2] * s, d[..., 1], d[..., 0] * s + d[..., 2] * c]
    tn = torch.full(d.shape[:-1], -float("inf"), dtype=d.dtype, device=d.device)
    tf = torch.full(d.shape[:-1], float("inf"), dtype=d.dtype, device=d.device)
    for i in range(3):
        inv = 1.0 / torch.where(dl[i].abs() < 1e-12, torch.full_like(dl[i], 1e-12), dl[i])
        t1 = (-float(bx[3 + i]) - ol[i]) * inv
        t2 = (float(bx[3 + i]) - ol[i]) * inv
        tn = torch.maximum(tn, torch.minimum(t1, t2))
        tf = torch.minimum(tf, torch.maximum(t1, t2))
    return torch.where((tn < tf) & (tn > EPS), tn, torch.full_like(tn, float("inf")))


def _hit_cylinder(cl: torch.Tensor, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """First hit with a vertical capped cylinder (side or caps)."""
    inf = torch.full(d.shape[:-1], float("inf"), dtype=d.dtype, device=d.device)
    ox, oz, r, y0, y1 = float(o[0] - cl[0]), float(o[2] - cl[1]), float(cl[2]), float(cl[3]), float(cl[4])
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = (dx * dx + dz * dz).clamp_min(1e-12)
    b = dx * ox + dz * oz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    ts = (-b - disc.clamp_min(0).sqrt()) / a
    ys = float(o[1]) + ts * dy
    t = torch.where((disc > 0) & (ts > EPS) & (ys >= y0) & (ys <= y1), ts, inf)
    dys = torch.where(dy.abs() < 1e-12, torch.full_like(dy, 1e-12), dy)
    for yy in (y0, y1):
        tc = (yy - float(o[1])) / dys
        px, pz = ox + tc * dx, oz + tc * dz
        t = torch.minimum(t, torch.where((tc > EPS) & (px * px + pz * pz <= r * r), tc, inf))
    return t


_HIT = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder}


def _screen_box(centre: torch.Tensor, radius: float, K: torch.Tensor, w2c: torch.Tensor, W: int, H: int
                ) -> tuple[int, int, int, int] | None:
    """Pixel rows/cols (y0, y1, x0, x1), end exclusive, that can see a bounding sphere; None if none.

    Projects the 8 corners of the sphere's camera-space bounding cube (all in front of the
    camera), which bounds the sphere's image; one pixel of slack covers the jittered samples.
    """
    cc = w2c[:3, :3] @ centre + w2c[:3, 3]
    if float(cc[2]) - radius < 0.05:  # reaches behind/near the camera: test every ray
        return 0, H, 0, W
    corners = cc + radius * torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                                         dtype=cc.dtype)
    u = K[0, 0] * corners[:, 0] / corners[:, 2] + K[0, 2]
    v = K[1, 1] * corners[:, 1] / corners[:, 2] + K[1, 2]
    x0, x1 = max(0, math.floor(float(u.min())) - 1), min(W, math.floor(float(u.max())) + 2)
    y0, y1 = max(0, math.floor(float(v.min())) - 1), min(H, math.floor(float(v.max())) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def intersect(scene: SynthScene, o: torch.Tensor, d: torch.Tensor, K: torch.Tensor | None = None,
              w2c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of rays o + t d (o (3,) shared, d (...,3), not necessarily unit).

    Returns t (...), surface id (...) long (0..5 room faces -x,+x,-y(floor),+y,-z,+z, then
    spheres, boxes, cylinders in order) and the unit surface normal (...,3) facing the ray.
    With K and w2c and d shaped (S,H,W,3) (rays through pixel (i,j) at [:, i, j]), each object
    is tested only on the pixels its bounding sphere can cover (same result, less work).
    """
    dt = d.dtype
    dev = d.device
    lo, hi = scene.room_lo.to(dev, dt), scene.room_hi.to(dev, dt)
    o = o.to(dev, dt)
    # Room from inside: the exit plane on each axis, then the nearest of the three.
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t_axes = (torch.where(d > 0, hi, lo) - o) / safe
    t_best, axis = t_axes.min(dim=-1)
    surf = axis * 2 + (d.gather(-1, axis[..., None])[..., 0] > 0).long()
    cull = K is not None and w2c is not None and d.dim() == 4
    for k, (kind, prm, centre, radius) in enumerate(_objects(scene)):
        prm = prm.to(dev, dt)
        if cull:
            box = _screen_box(centre, radius, K.double(), w2c.double(), d.shape[2], d.shape[1])
            if box is None:
                continue
            y0, y1, x0, x1 = box
            sl = (slice(None), slice(y0, y1), slice(x0, x1))
        else:
            sl = (Ellipsis,)
        t = _HIT[kind](prm, o, d[sl])
        closer = t < t_best[sl]
        t_best[sl] = torch.where(closer, t, t_best[sl])
        surf[sl] = torch.where(closer, torch.full_like(surf[sl], 6 + k), surf[sl])
    p = o + t_best[..., None] * d
    return t_best, surf, surface_normals(scene, p, surf, d)


def surface_normals(scene: SynthScene, p: torch.Tensor, surf: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Unit normals (...,3) at hit points p on surfaces surf, oriented against the rays d."""
    dt = p.dtype
    n = torch.zeros_like(p)
    flat_p, flat_s, flat_n = p.reshape(-1, 3), surf.reshape(-1), n.view(-1, 3)
    objs = _objects(scene)
    for sid in torch.bincount(flat_s).nonzero()[:, 0].tolist():  # bincount: no sort
        idx = (flat_s == sid).nonzero()[:, 0]
        q = flat_p[idx]
        if sid < 6:
            nn_ = torch.zeros(3, dtype=dt, device=p.device)
            nn_[sid // 2] = 1.0 if sid % 2 == 0 else -1.0  # room faces point inwards
            flat_n[idx] = nn_
            continue
        kind, prm, _, _ = objs[sid - 6]
        prm = prm.to(p.device, dt)
        if kind == "sphere":
            flat_n[idx] = torch.nn.functional.normalize(q - prm[:3], dim=1)
        elif kind == "box":
            c, s = math.cos(float(prm[6])), math.sin(float(prm[6]))
            rel = q - prm[:3]
            loc = torch.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], 1)
            ax = (loc.abs() / prm[3:6]).argmax(1)  # the face the point lies on
            nl = torch.zeros_like(loc)
            nl.scatter_(1, ax[:, None], torch.sign(loc.gather(1, ax[:, None])))
            flat_n[idx] = torch.stack([c * nl[:, 0] + s * nl[:, 2], nl[:, 1], -s * nl[:, 0] + c * nl[:, 2]], 1)
        else:
            rx, rz = q[:, 0] - prm[0], q[:, 2] - prm[1]
            side_err = ((rx * rx + rz * rz).sqrt() / prm[2] - 1).abs()
            cap_err = torch.minimum((q[:, 1] - prm[3]).abs(), (q[:, 1] - prm[4]).abs()) / prm[2]
            side = torch.nn.functional.normalize(torch.stack([rx, torch.zeros_like(rx), rz], 1), dim=1)
            cap = torch.zeros_like(side)
            cap[:, 1] = torch.where((q[:, 1] - prm[3]).abs() < (q[:, 1] - prm[4]).abs(), -1.0, 1.0).to(dt)
            flat_n[idx] = torch.where((side_err <= cap_err)[:, None], side, cap)
    # Objects are seen from outside and the room from inside, so these face the ray already;
    # the flip only guards grazing numerical cases.
    flip = (n * d).sum(-1, keepdim=True) > 0
    return torch.where(flip, -n, n)


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


def shade_texture(tex: Texture, p: torch.Tensor) -> torch.Tensor:
    """Albedo (M,3) of a texture at world points p (M,3)."""
    dt = p.dtype
    dev = p.device
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
        albedo[m] = shade_texture(scene.textures[s], p[m])
    light = torch.full((p.shape[0],), scene.ambient, dtype=dt, device=p.device)
    for L in scene.lights.to(p.device, dt):
        v = L[:3] - p
        dist = v.norm(dim=1).clamp_min(1e-6)
        cos = ((v * n).sum(1) / dist).clamp_min(0)
        light = light + L[3] * cos / (1 + (dist / scene.falloff) ** 2) * 1.6
    return (albedo * light[:, None]).clamp(0, 1)


def render_frame(scene: SynthScene, frame: int, spp: int = 4, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, return_surface: bool = False,
                 device: torch.device | str = "cpu"):
    """Ray-cast one frame: returns rgb (H,W,3) float32 in [0,1] and z-depth (H,W) float32 (on the CPU).

    ``spp`` jittered samples per pixel (stratified when spp is a square) are shaded and
    averaged; the depth is that of the ray through the pixel centre. return_surface: also
    return the surface id (H,W) long hit by each pixel-centre ray. device: where the rays are
    cast (the jitter is drawn on the CPU, so results do not depend on it beyond rounding).
    """
    H, W = scene.height, scene.width
    K, w2c = scene.K[frame], scene.w2c[frame]
    R_c2w = w2c[:3, :3].T.to(dtype)
    origin = (-w2c[:3, :3].T @ w2c[:3, 3]).to(dtype)
    g = generator if generator is not None else torch.Generator().manual_seed(scene.seed * 7919 + frame)
    side = int(round(math.sqrt(spp)))
    offsets = []
    for s in range(spp):
        jit = torch.rand(2, H, W, generator=g).to(dtype)  # float32 draw: same samples for every dtype
        if side * side == spp:
            jit = (torch.tensor([s % side, s // side], dtype=dtype)[:, None, None] + jit) / side
        offsets.append(jit)
    offsets.append(torch.full((2, H, W), 0.5, dtype=dtype))          # pixel centre (depth)
    samples = torch.stack(offsets).to(device)                       # (S+1,2,H,W)
    u = torch.arange(W, dtype=dtype, device=device)[None, None, :] + samples[:, 0]
    v = torch.arange(H, dtype=dtype, device=device)[None, :, None] + samples[:, 1]
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    # Camera directions with z = 1, so the ray parameter t equals the z-depth.
    dirs_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)   # (S+1,H,W,3)
    dirs = dirs_cam @ R_c2w.T.to(device)
    origin = origin.to(device)
    t, surf, nrm = intersect(scene, origin, dirs, K, w2c)
    p = origin + t[:spp, ..., None] * dirs[:spp]
    col = shade(scene, p.reshape(-1, 3), nrm[:spp].reshape(-1, 3), surf[:spp].reshape(-1))
    rgb = col.reshape(spp, H, W, 3).mean(0)
    depth = t[spp]
    if return_surface:
        return rgb.float().cpu(), depth.float().cpu(), surf[spp].cpu().clone()
    return rgb.float().cpu(), depth.float().cpu()


# ----------------------------------------------------------------------------- dataset writer

def scene_seed(index: int, seed: int, split: str) -> int:
    """Seed of the index-th scene of a split: test seeds are offset by 1e6 so they never meet train."""
    if split not in SPLIT_SEED_OFFSET:
        raise UserError(f"unknown split {split!r}", None, "use train or test")
    if not 0 <= seed + index < 1_000_000:
        raise UserError("scene seeds must stay in [0, 1e6) so train and test never overlap", None,
                        "use a smaller --seed or fewer --scenes")
    return SPLIT_SEED_OFFSET[split] + seed + index


def make_example(seed: int, frames: int, resolution: int, spp: int = 4, jpeg_quality: int = 92,
                 save_depth: bool = True, device: torch.device | str = "cpu") -> dict:
    """Render one scene into an RE10K example dict (plus `depths` float16 z-depth maps)."""
    scene = random_scene(seed, frames, resolution, resolution)
    images, depths = [], []
    for f in range(frames):
        rgb, depth = render_frame(scene, f, spp, device=device)
        images.append(encode_jpeg(rgb, jpeg_quality))
        depths.append(depth.to(torch.float16))
    ex = {"key": f"synth{seed:07d}", "url": f"synth://diff3r/{seed}",
          "timestamps": torch.arange(frames, dtype=torch.int64) * 33_333,
          "cameras": cameras_to_rows(scene.K, scene.w2c, resolution, resolution),
          "images": images}
    if save_depth:
        ex["depths"] = depths
    return ex


def evaluation_entry(seed: int, frames: int, n_targets: int = 3) -> dict | None:
    """Fixed context/target frames for a test scene (deterministic in the seed)."""
    if frames < 3:
        return None
    g = torch.Generator().manual_seed(seed + 99)
    gap = int(torch.randint(max(2, frames // 3), max(3, (2 * frames) // 3 + 1), (1,), generator=g))
    gap = min(gap, frames - 1)
    c0 = int(torch.randint(0, frames - gap, (1,), generator=g))
    inner = list(range(c0 + 1, c0 + gap))
    k = min(n_targets, len(inner))
    tg = sorted(inner[int(round(i))] for i in torch.linspace(0, len(inner) - 1, k).tolist()) if k else []
    return {"context": [c0, c0 + gap], "target": tg}


def _chunk_complete(path: Path, keys: list[str], frames: int) -> bool:
    if not path.exists():
        return False
    try:
        existing = read_chunk(path)
    except BadChunkError:
        return False  # truncated/foreign: render it again
    return [e["key"] for e in existing] == keys and all(e["cameras"].shape[0] == frames for e in existing)


def _render_chunk(job: tuple) -> tuple[str, list[str], float]:
    """Render and write one chunk (runs in a worker process or inline). Returns name, keys, seconds."""
    path, group, frames, resolution, spp, jpeg_quality, save_depth, threads, device = job
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    examples = [make_example(s, frames, resolution, spp, jpeg_quality, save_depth, device) for s in group]
    write_chunk(path, examples)
    return path.name, [e["key"] for e in examples], time.perf_counter() - t0


def generate_dataset(out: str | Path, scenes: int, frames: int = 24, resolution: int = 128, seed: int = 0,
                     split: str = "train", spp: int = 4, chunk_size: int = 16, jpeg_quality: int = 92,
                     save_depth: bool = True, eval_targets: int = 3,
                     progress: Callable[[int, int], None] | bool | None = None, workers: int = 1,
                     threads: int | None = 1, device: str = "cpu") -> dict:
    """Write ``scenes`` synthetic scenes as RE10K chunks under ``out/<split>/``.

    Defaults (128x128, 24 frames, 4 spp) are what fits 2,000 scenes in under an hour on a 2-core
    CPU (benchmarks/synth.py); 256x256 x 40 frames is about 6x slower per scene.
    Scene i uses seed ``scene_seed(i, seed, split)`` (test seeds are offset by 1e6). Chunk files
    are named after their first scene seed and are skipped if already complete, so a killed run
    resumes and disjoint seed ranges can be generated in parallel into one directory.
    ``out/<split>/index.json`` is merged, and for the test split ``out/evaluation_index.json``
    (key -> context/target frames) too. progress: callback(done, total) or True for a rich bar.
    workers: processes rendering chunks in parallel. threads: torch threads per process (1 is
    fastest for this many small ops; None leaves torch's setting). device: where rays are cast
    ("cuda" works in principle but has not been run on a GPU yet; use workers=1 with it).
    Returns a summary dict
    (counts, seconds, scenes per minute of the rendered scenes).
    """
    if scenes < 0 or frames < 2 or resolution < 8 or spp < 1 or chunk_size < 1 or workers < 1:
        raise UserError(f"invalid synth settings (scenes={scenes}, frames={frames}, resolution={resolution}, "
                        f"spp={spp}, workers={workers})", out,
                        "use scenes >= 0, frames >= 2, resolution >= 8, spp >= 1, workers >= 1")
    if workers > 1 and str(device) != "cpu":
        raise UserError(f"workers={workers} with device={device!r}: worker processes render on the CPU only", out,
                        "use workers=1 on a GPU")
    out = Path(out)
    split_dir = out / split
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", split_dir,
                        "choose a writable --out") from None
    seeds = [scene_seed(i, seed, split) for i in range(scenes)]
    index = read_index(split_dir)
    bar = None
    if progress is True:
        from rich.progress import Progress
        bar = Progress(transient=False)
        task = bar.add_task(f"synth {split}", total=scenes)
        bar.start()
        cb = lambda d, t: bar.update(task, completed=d)  # noqa: E731
    else:
        cb = progress if callable(progress) else None
    old_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    done = rendered = 0
    jobs = []
    for c in range(0, scenes, chunk_size):
        group = seeds[c:c + chunk_size]
        path = split_dir / f"{group[0]:07d}.torch"
        keys = [f"synth{s:07d}" for s in group]
        if _chunk_complete(path, keys, frames):
            index.update({k: path.name for k in keys})
            done += len(group)
        else:
            jobs.append((path, group, frames, resolution, spp, jpeg_quality, save_depth, threads, device))
    if cb:
        cb(done, scenes)

    def finished(name: str, keys: list[str]) -> None:
        nonlocal done, rendered
        index.update({k: name for k in keys})
        done += len(keys)
        rendered += len(keys)
        # Index after every chunk: a killed run leaves a consistent, usable dataset.
        write_json_atomic(split_dir / "index.json", index)
        if cb:
            cb(done, scenes)

    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                name, keys, _ = _render_chunk(job)
                finished(name, keys)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(_render_chunk, job) for job in jobs]
                for fut in as_completed(futures):
                    name, keys, _ = fut.result()
                    finished(name, keys)
        write_json_atomic(split_dir / "index.json", index)
        if split == "test":
            ev_path = out / "evaluation_index.json"
            ev = {}
            if ev_path.exists():
                try:
                    ev = json.loads(ev_path.read_text())
                except ValueError:
                    ev = {}
            ev.update({f"synth{s:07d}": evaluation_entry(s, frames, eval_targets) for s in seeds})
            write_json_atomic(ev_path, ev)
    finally:
        torch.set_num_threads(old_threads)
        if bar is not None:
            bar.stop()
    secs = time.perf_counter() - t0
    return {"out": str(out), "split": split, "scenes": scenes, "rendered": rendered, "frames": frames,
            "resolution": resolution, "spp": spp, "workers": workers, "seconds": secs,
            "scenes_per_minute": (rendered / secs * 60) if rendered and secs > 0 else None}


__all__ = ["generate_dataset", "random_scene", "render_frame", "intersect", "make_example", "SynthScene",
           "value_noise", "scene_seed", "evaluation_entry"]
