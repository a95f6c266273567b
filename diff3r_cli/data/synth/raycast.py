"""Exact ray casting of a synthetic scene: ray-object intersections, normals, and whole frames.

Pixels are anti-aliased with ``spp`` jittered samples; depth is the z-depth (camera
coordinates) of the sample through the pixel centre.
"""

from __future__ import annotations

import math

import torch

from diff3r_cli.data.synth.scene import SynthScene
from diff3r_cli.data.synth.shading import apply_exposure, shade
from diff3r_cli.geometry import pixel_rays

EPS = 1e-4


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
    # Camera directions with z = 1, so the ray parameter t equals the z-depth.
    dirs_cam = pixel_rays(K, u, v)                                  # (S+1,H,W,3)
    dirs = dirs_cam @ R_c2w.T.to(device)
    origin = origin.to(device)
    t, surf, nrm = intersect(scene, origin, dirs, K, w2c)
    p = origin + t[:spp, ..., None] * dirs[:spp]
    col = shade(scene, p.reshape(-1, 3), nrm[:spp].reshape(-1, 3), surf[:spp].reshape(-1))
    rgb = apply_exposure(col.reshape(spp, H, W, 3).mean(0), scene, frame)
    depth = t[spp]
    if return_surface:
        return rgb.float().cpu(), depth.float().cpu(), surf[spp].cpu().clone()
    return rgb.float().cpu(), depth.float().cpu()


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


__all__ = ["render_frame", "intersect", "surface_normals"]
