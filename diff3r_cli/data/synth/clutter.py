"""Objects of a synthetic room: free-standing boxes, spheres and cylinders placed in view of the
clip (the classic draw), the object an orbit circles, occluders close to the camera path, and thin
furniture (poles, tables on legs, panels).

Every object has a footprint circle in xz; footprints do not overlap and keep clear of the camera
path, so the camera never enters an object. Boxes are (cx, cy, cz, hx, hy, hz, yaw) with cy the
centre height; cylinders (cx, cz, r, y0, y1); spheres (cx, cy, cz, r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diff3r_cli.data.synth_config import SynthConfig
from diff3r_cli.data.synth.draw import rand, randint, uniform
from diff3r_cli.data.synth.paths import CameraPath


@dataclass
class Objects:
    """The object lists (surface ids follow: spheres, then boxes, then cylinders) and their footprints."""

    lo: torch.Tensor
    hi: torch.Tensor
    path: CameraPath
    spheres: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    cylinders: list = field(default_factory=list)
    placed: list = field(default_factory=list)  # (x, z, footprint radius)

    def fits(self, c: torch.Tensor, r: float, clear: float) -> bool:
        """Inside the walls, ``clear`` + r away from the camera path, apart from every placed footprint."""
        lo, hi = self.lo, self.hi
        if not (lo[0] + r + 0.05 < c[0] < hi[0] - r - 0.05 and lo[2] + r + 0.05 < c[1] < hi[2] - r - 0.05):
            return False
        if clear > 0 and (self.path.pos[:, [0, 2]] - c).norm(dim=1).min() < r + clear:
            return False
        return not any(math.hypot(float(c[0]) - x, float(c[1]) - z) < r + rr + 0.05 for x, z, rr in self.placed)

    def add(self, g: torch.Generator, kind: int, c: torch.Tensor, r: float) -> None:
        """One object of ``kind`` (0 sphere, 1 box, 2 cylinder) with footprint radius r at c (xz)."""
        self.placed.append((float(c[0]), float(c[1]), r))
        if kind == 0:
            cy = r if uniform(g, 0, 1) < 0.6 else uniform(g, r, min(2.0, float(self.hi[1]) - r - 0.1))
            self.spheres.append([float(c[0]), cy, float(c[1]), r])
        elif kind == 1:
            h = uniform(g, 0.2, 1.2)
            # Footprint radius r bounds the box's half-diagonal so the xz check stays valid.
            hx, hz = r * uniform(g, 0.45, 0.7), r * uniform(g, 0.45, 0.7)
            self.boxes.append([float(c[0]), h, float(c[1]), hx, h, hz, uniform(g, -math.pi, math.pi)])
        else:
            self.cylinders.append([float(c[0]), float(c[1]), r * uniform(g, 0.5, 1.0), 0.0, uniform(g, 0.3, 2.0)])

    def ahead(self, g: torch.Generator, frame: int, dist: float) -> torch.Tensor:
        """A point ``dist`` ahead of a frame's camera in xz, spread sideways by up to 0.6 dist."""
        yaw = float(self.path.yaws[frame])
        fwd = torch.tensor([math.sin(yaw), math.cos(yaw)], dtype=torch.float64)
        return self.path.pos[frame, [0, 2]] + fwd * dist + torch.stack([fwd[1], -fwd[0]]) * dist * uniform(g, -0.6, 0.6)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.spheres, dtype=torch.float64).reshape(-1, 4),
                torch.tensor(self.boxes, dtype=torch.float64).reshape(-1, 7),
                torch.tensor(self.cylinders, dtype=torch.float64).reshape(-1, 5))


def place_objects(g: torch.Generator, objs: Objects, count: tuple[int, int]) -> None:
    """The classic draw: most objects in view of the middle frame, every third anywhere in the room."""
    path, lo, hi = objs.path, objs.lo, objs.hi
    n_obj = round(randint(g, *count) * path.crowd) + len(objs.placed)
    mid = path.pos.shape[0] // 2
    for k in range(round(120 * path.crowd)):
        if len(objs.placed) >= n_obj:
            break
        kind = int(torch.randint(0, 3, (1,), generator=g))
        r = uniform(g, 0.2, 0.6) * path.object_scale
        if k % 3 != 2:
            c = objs.ahead(g, mid, uniform(g, *path.focus))
        else:
            c = torch.stack([rand(g, lo[0], hi[0])[0], rand(g, lo[2], hi[2])[0]])
        if objs.fits(c, r, path.clear):  # ~0.9 m between the camera and any surface
            objs.add(g, kind, c, r)


def place_anchor(g: torch.Generator, objs: Objects) -> None:
    """The object an orbit circles, at the orbit's centre."""
    x, z, r_max = objs.path.anchor
    objs.add(g, randint(g, 0, 2), torch.tensor([x, z], dtype=torch.float64), min(uniform(g, 0.25, 0.6), r_max))


def place_occluders(g: torch.Generator, objs: Objects, count: tuple[int, int]) -> None:
    """Objects 0.9-1.6 m in front of random frames, closer to the path than the classic ones."""
    n, frames = randint(g, *count), objs.path.pos.shape[0]
    for _ in range(30 * n):
        if n <= 0:
            break
        frame = randint(g, 0, frames - 1)
        c, r = objs.ahead(g, frame, uniform(g, 0.9, 1.6)), uniform(g, 0.08, 0.3)
        kind = randint(g, 0, 2)
        if objs.fits(c, r, 0.45):
            objs.add(g, kind, c, r)
            n -= 1


def _table(g: torch.Generator, objs: Objects, c: torch.Tensor, r: float) -> None:
    """A thin top on four thin legs (five objects, one footprint)."""
    yaw, top = uniform(g, -math.pi, math.pi), uniform(g, 0.45, 0.9)
    hx, hz, thick = r * uniform(g, 0.55, 0.7), r * uniform(g, 0.55, 0.7), uniform(g, 0.015, 0.035)
    objs.boxes.append([float(c[0]), top - thick, float(c[1]), hx, thick, hz, yaw])
    leg = uniform(g, 0.015, 0.035)
    cs, sn = math.cos(yaw), math.sin(yaw)
    for sx, sz in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        lx, lz = sx * (hx - 0.05), sz * (hz - 0.05)
        # the box's local frame maps to the world by the transposed yaw rotation of the ray caster
        objs.cylinders.append([float(c[0]) + cs * lx + sn * lz, float(c[1]) - sn * lx + cs * lz, leg, 0.0,
                               top - 2 * thick])


def place_furniture(g: torch.Generator, objs: Objects, count: tuple[int, int]) -> None:
    """Thin things in view: poles (lamp stands), tables on legs, standing panels."""
    n, frames = randint(g, *count), objs.path.pos.shape[0]
    for _ in range(30 * n):
        if n <= 0:
            break
        c = objs.ahead(g, randint(g, 0, frames - 1), uniform(g, *objs.path.focus))
        kind = randint(g, 0, 2)
        r = [uniform(g, 0.02, 0.06), uniform(g, 0.4, 0.75), uniform(g, 0.35, 0.8)][kind]
        if not objs.fits(c, r, min(objs.path.clear, 0.6)):  # thin things may stand closer than boxes
            continue
        n -= 1
        if kind == 0:
            objs.placed.append((float(c[0]), float(c[1]), r))
            objs.cylinders.append([float(c[0]), float(c[1]), r, 0.0, uniform(g, 0.8, min(2.4, float(objs.hi[1]) - 0.2))])
        elif kind == 1:
            objs.placed.append((float(c[0]), float(c[1]), r))
            _table(g, objs, c, r)
        else:  # a panel: half-width r along its own x, a few cm thick
            objs.placed.append((float(c[0]), float(c[1]), r))
            h = uniform(g, 0.4, 1.0)
            objs.boxes.append([float(c[0]), h, float(c[1]), r * 0.98, h, uniform(g, 0.01, 0.03), uniform(g, -math.pi, math.pi)])


def room_objects(g: torch.Generator, features: torch.Generator, lo: torch.Tensor, hi: torch.Tensor,
                 path: CameraPath, config: SynthConfig) -> Objects:
    """All objects of a room: the classic draw from ``g``, the issue-13 additions from ``features``."""
    objs = Objects(lo, hi, path)
    if path.anchor is not None:
        place_anchor(features, objs)
    place_furniture(features, objs, config.furniture)  # before the crowd: large footprints fit less later
    place_objects(g, objs, config.objects)
    if path.clear > 0:  # an aerial camera flies above everything: nothing is between it and the floor
        place_occluders(features, objs, config.occluders)
    return objs


__all__ = ["Objects", "room_objects", "place_objects", "place_occluders", "place_furniture"]
