"""Rotations and pinhole-camera geometry, in one place.

Conventions (the project's, see cameras.py): quaternions are w,x,y,z (w first, Hamilton
product); cameras use OpenCV axes (x right, y down, z forward); ``K`` is a zero-skew pinhole
matrix in pixels with the centre of the top-left pixel at (0.5, 0.5). Everything here is plain
tensor arithmetic that works batched over leading dimensions and under autograd.
"""

from __future__ import annotations

import math

import torch

# OpenGL/NeRF camera axes (x right, y up, z backward) <-> OpenCV (x right, y down, z forward).
# The flip is its own inverse, so one matrix converts both ways.
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- quaternions

def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(…,4) quaternions scaled to unit norm (the norm floored at ``eps`` so zeros stay finite)."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_canonical(q: torch.Tensor) -> torch.Tensor:
    """The one of q and -q (the same rotation) whose w is >= 0."""
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)


def unit_quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(…,4) *unit* w,x,y,z quaternions -> (…,3,3) rotation matrices (no normalisation)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(…,4) w,x,y,z quaternions of any norm -> (…,3,3) rotation matrices."""
    return unit_quat_to_rotmat(quat_normalize(q))


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """(…,3,3) rotation matrices -> (…,4) unit quaternions w,x,y,z with w >= 0 (Shepperd's method).

    Of the four algebraically equivalent formulas, each element uses the one with the largest
    pivot (4·q_k²), which stays accurate near 180° rotations where w -> 0.
    """
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (…,4,4): candidate k has 4*q_k^2 at position k
    diag = torch.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    k = diag.argmax(-1)
    q = torch.gather(cands, -2, k[..., None, None].expand(*k.shape, 1, 4)).squeeze(-2)
    return quat_canonical(q / q.norm(dim=-1, keepdim=True))


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of (…,4) w,x,y,z quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def quat_slerp(q0: torch.Tensor, q1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between unit quaternions (4,) along the shorter arc; t in [0, 1]."""
    d = float(torch.dot(q0, q1))
    if d < 0:  # q1 and -q1 are the same rotation: take the one on q0's side
        q1, d = -q1, -d
    if d > 0.9995:  # nearly equal: sin(θ) -> 0, so lerp and renormalise instead
        q = q0 + t * (q1 - q0)
        return q / q.norm()
    th = math.acos(d)
    return (math.sin((1 - t) * th) * q0 + math.sin(t * th) * q1) / math.sin(th)


# ----------------------------------------------------------------------------- camera poses

def look_rotation(forward: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(3,3) OpenCV camera-to-world rotation whose z axis is ``forward`` (unit, world coordinates).

    Columns are the camera's x (right), y (down) and z (forward) axes; ``up`` is a world
    up hint (need not be unit or orthogonal to forward, only not parallel to it).
    """
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    return torch.stack([right, down, forward], dim=-1)


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """(…,4,4) camera-to-world in the OpenGL/NeRF axes -> OpenCV axes (and back: the flip is an involution)."""
    return c2w @ GL_TO_CV.to(c2w.device, c2w.dtype)


opencv_to_opengl = opengl_to_opencv


def pixel_centres(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, h*w) homogeneous pixel centres (x+0.5, y+0.5, 1), row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype) + 0.5,
                            torch.arange(w, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=device, dtype=dtype)])


def pixel_rays(K: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Camera-frame ray directions (…,3) with z = 1 through pixel coordinates (u, v).

    K: (3,3) or anything broadcasting against u/v after indexing (e.g. (C,1,3,3)). With z = 1 the
    ray parameter of a point is its z-depth.
    """
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    return torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u - cx)], -1)


def unproject(K: torch.Tensor, c2w: torch.Tensor, pix: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """World points of homogeneous pixels at given z-depths.

    K (N,3,3); c2w (N,4,4); pix (3,P) or (N,3,P) homogeneous pixel coordinates (last row 1);
    depth (N,P) z-depth in camera coordinates. Returns (N,P,3).
    """
    rays = torch.linalg.inv(K) @ pix                       # (N,3,P) with z = 1
    cam = rays * depth[:, None, :]
    return (c2w[:, :3, :3] @ cam + c2w[:, :3, 3:]).transpose(1, 2)


# ----------------------------------------------------------------------------- intrinsics

def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """K (…,3,3) for the same image scaled by (sx, sy): exact in the pixel-edge convention (fx and cx alike)."""
    out = K.clone()
    out[..., 0, :] = K[..., 0, :] * sx
    out[..., 1, :] = K[..., 1, :] * sy
    return out


def crop_intrinsics(K: torch.Tensor, left: float, top: float) -> torch.Tensor:
    """K (…,3,3) for the sub-image whose top-left corner is at pixel (left, top)."""
    out = K.clone()
    out[..., 0, 2] = K[..., 0, 2] - left
    out[..., 1, 2] = K[..., 1, 2] - top
    return out


__all__ = ["GL_TO_CV", "quat_normalize", "quat_canonical", "unit_quat_to_rotmat", "quat_to_rotmat", "rotmat_to_quat",
           "quat_multiply", "quat_slerp", "look_rotation", "opengl_to_opencv", "opencv_to_opengl", "pixel_centres",
           "pixel_rays", "unproject", "scale_intrinsics", "crop_intrinsics"]
