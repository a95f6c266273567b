"""Novel-view camera paths: interpolation between input cameras and orbits."""

from __future__ import annotations

import math

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.geometry import look_rotation, quat_slerp, quat_to_rotmat, rotmat_to_quat


def interpolate_path(cameras: Cameras, frames: int) -> Cameras:
    """A smooth path through the given cameras in order (slerp rotations, lerp centres and K).

    With one camera the path is that camera repeated. Returns `frames` cameras (float64).
    """
    c2w = cameras.c2w.to(torch.float64)
    K = cameras.K.to(torch.float64)
    n = len(cameras)
    if n == 1 or frames == 1:
        return Cameras(K[:1].repeat(frames, 1, 1), cameras.w2c[:1].to(torch.float64).repeat(frames, 1, 1),
                       cameras.width, cameras.height)
    quats = [rotmat_to_quat(c2w[i, :3, :3]) for i in range(n)]
    Ks, w2cs = [], []
    for f in range(frames):
        s = f / (frames - 1) * (n - 1)
        i = min(int(math.floor(s)), n - 2)
        t = s - i
        R = quat_to_rotmat(quat_slerp(quats[i], quats[i + 1], t))
        C = (1 - t) * c2w[i, :3, 3] + t * c2w[i + 1, :3, 3]
        m = torch.eye(4, dtype=torch.float64, device=c2w.device)
        m[:3, :3] = R
        m[:3, 3] = C
        w2cs.append(torch.linalg.inv(m))
        Ks.append((1 - t) * K[i] + t * K[i + 1])
    return Cameras(torch.stack(Ks), torch.stack(w2cs), cameras.width, cameras.height)


def orbit_path(cameras: Cameras, target: torch.Tensor, frames: int, radius_scale: float = 0.5) -> Cameras:
    """Small circular orbit of the mean input camera around its viewing axis, looking at `target`.

    Forward-facing captures (the usual few-view case) break with a full 360° orbit, so the
    camera circles in the plane facing the scene with a radius set by the input baseline.
    """
    c2w = cameras.c2w.to(torch.float64)
    center = c2w[:, :3, 3].mean(0)
    target = target.to(torch.float64)
    fwd = target - center
    fwd = fwd / fwd.norm().clamp_min(1e-9)
    up_hint = -c2w[:, :3, 1].mean(0)  # OpenCV y is down
    right = torch.linalg.cross(fwd, -up_hint)
    right = right / right.norm().clamp_min(1e-9)
    down = torch.linalg.cross(fwd, right)
    spread = (c2w[:, :3, 3] - center).norm(dim=1).max()
    radius = float(spread) if float(spread) > 1e-6 else 0.05 * float((target - center).norm())
    radius *= max(radius_scale, 1e-3) * 2
    w2cs = []
    for f in range(frames):
        a = 2 * math.pi * f / frames
        C = center + radius * (math.cos(a) * right + math.sin(a) * down)
        z = target - C
        m = torch.eye(4, dtype=torch.float64, device=c2w.device)
        m[:3, :3] = look_rotation(z / z.norm(), up_hint)
        m[:3, 3] = C
        w2cs.append(torch.linalg.inv(m))
    K = cameras.K.to(torch.float64).mean(0, keepdim=True).repeat(frames, 1, 1)
    return Cameras(K, torch.stack(w2cs), cameras.width, cameras.height)
