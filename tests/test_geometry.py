"""diff3r_cli.geometry against independent references: Rodrigues' formula, hand-built rotations,
round trips, and a known camera in both the OpenGL and the OpenCV convention."""

from __future__ import annotations

import math

import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.geometry import (crop_intrinsics, look_rotation, opencv_to_opengl, opengl_to_opencv, pixel_centres,
                                 pixel_rays, quat_canonical, quat_multiply, quat_normalize, quat_slerp,
                                 quat_to_rotmat, rotmat_to_quat, scale_intrinsics, unit_quat_to_rotmat, unproject)

F64 = torch.float64


def rodrigues(axis, angle: float) -> torch.Tensor:
    """R = I + sin(a) [k]x + (1 - cos(a)) [k]x^2 for a unit axis k (written out, no package code)."""
    k = torch.as_tensor(axis, dtype=F64)
    k = k / k.norm()
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=F64)
    return torch.eye(3, dtype=F64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def axis_angle_quat(axis, angle: float) -> torch.Tensor:
    k = torch.as_tensor(axis, dtype=F64)
    k = k / k.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)], dtype=F64), math.sin(angle / 2) * k])


def random_quats(n: int, seed: int = 0) -> torch.Tensor:
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return q / q.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- quaternions

@pytest.mark.parametrize("axis,angle", [([0, 0, 1], math.pi / 2), ([1, 2, 3], 0.7), ([-1, 0.5, 0.2], 2.9),
                                        ([0.3, -1, 0], math.pi)])
def test_quat_to_rotmat_matches_rodrigues(axis, angle):
    assert torch.allclose(quat_to_rotmat(axis_angle_quat(axis, angle)), rodrigues(axis, angle), atol=1e-12)


def test_known_90_degree_rotation_about_z():
    """A quarter turn about z maps x to y and y to -x (right-handed, active rotation)."""
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=F64)
    R = quat_to_rotmat(q)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    assert torch.allclose(R, expected, atol=1e-15)
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([0.0, 1, 0], dtype=F64), atol=1e-15)
    assert torch.allclose(rotmat_to_quat(expected), q, atol=1e-15)


def test_quat_to_rotmat_ignores_the_norm_and_gives_rotations():
    q = random_quats(50, 1)
    R = quat_to_rotmat(3.7 * q)
    assert torch.allclose(R, unit_quat_to_rotmat(q), atol=1e-14)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(50, 3, 3), atol=1e-13)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=F64), atol=1e-13)


def test_rotmat_quat_round_trip_with_canonical_sign():
    q = random_quats(200, 2)
    q[:10, 0] = 1e-9  # near-180-degree rotations (w ~ 0), where the trace formula alone breaks down
    q[10:20, 0] = -q[10:20, 0].abs()  # negative w: the same rotations as -q
    q = quat_normalize(q)
    q2 = rotmat_to_quat(quat_to_rotmat(q))
    assert bool((q2[:, 0] >= 0).all())
    assert torch.allclose(q2, quat_canonical(q), atol=1e-12)
    # and from independent matrices
    R = torch.stack([rodrigues(ax, a) for ax, a in [([1, 0, 0], 3.0), ([0, 1, 1], -2.0), ([2, 1, 0], 0.1)]])
    assert torch.allclose(quat_to_rotmat(rotmat_to_quat(R)), R, atol=1e-12)


def test_quat_canonical_and_normalize():
    q = torch.tensor([[-0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, 0.5]], dtype=F64)
    assert torch.equal(quat_canonical(q), torch.tensor([[0.5, -0.5, -0.5, -0.5], [0.5, -0.5, 0.5, 0.5]], dtype=F64))
    assert torch.allclose(quat_normalize(torch.tensor([0.0, 3.0, 0.0, 4.0], dtype=F64)),
                          torch.tensor([0.0, 0.6, 0.0, 0.8], dtype=F64))
    assert bool(torch.isfinite(quat_normalize(torch.zeros(4))).all())


def test_quat_multiply_composes_rotations():
    a, b = random_quats(100, 3), random_quats(100, 4)
    assert torch.allclose(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b), atol=1e-12)
    # two quarter turns about x make a half turn
    qx = axis_angle_quat([1, 0, 0], math.pi / 2)
    assert torch.allclose(quat_to_rotmat(quat_multiply(qx, qx)), rodrigues([1, 0, 0], math.pi), atol=1e-12)


def test_slerp_follows_the_shorter_arc_at_constant_speed():
    q0 = axis_angle_quat([0, 1, 0], 0.0)
    q1 = axis_angle_quat([0, 1, 0], 1.2)
    for t in (0.0, 0.25, 0.5, 1.0):
        assert torch.allclose(quat_to_rotmat(quat_slerp(q0, q1, t)), rodrigues([0, 1, 0], 1.2 * t), atol=1e-12)
        # -q1 is the same rotation: still the short way round
        assert torch.allclose(quat_to_rotmat(quat_slerp(q0, -q1, t)), rodrigues([0, 1, 0], 1.2 * t), atol=1e-12)


# ----------------------------------------------------------------------------- cameras

def test_look_rotation_points_z_forward_and_y_down():
    fwd = torch.tensor([1.0, 0.0, 1.0], dtype=F64) / math.sqrt(2)
    R = look_rotation(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=F64))  # world y up
    assert torch.allclose(R[:, 2], fwd)
    assert torch.allclose(R[:, 1] @ torch.tensor([0.0, 1.0, 0.0], dtype=F64), torch.tensor(-1.0, dtype=F64))
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=F64), atol=1e-15)
    assert torch.allclose(torch.linalg.det(R), torch.tensor(1.0, dtype=F64))
    # looking along +z with y up: camera x is world -x (a right-handed frame with y down)
    R0 = look_rotation(torch.tensor([0.0, 0.0, 1.0], dtype=F64), torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    assert torch.allclose(R0, torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64)))


def test_opengl_opencv_on_a_known_camera():
    """A camera at (0,0,5) looking down -z with y up, as transforms.json writes it (identity rotation),
    is in OpenCV terms a camera whose z (forward) is world -z and whose y (down) is world -y."""
    c2w_gl = torch.eye(4, dtype=F64)
    c2w_gl[2, 3] = 5.0
    c2w_cv = opengl_to_opencv(c2w_gl)
    assert torch.equal(c2w_cv[:3, 3], torch.tensor([0.0, 0.0, 5.0], dtype=F64))
    assert torch.equal(c2w_cv[:3, 2], torch.tensor([0.0, 0.0, -1.0], dtype=F64))
    assert torch.equal(c2w_cv[:3, 1], torch.tensor([0.0, -1.0, 0.0], dtype=F64))
    assert torch.equal(opencv_to_opengl(c2w_cv), c2w_gl)
    # the origin is straight ahead: it projects to the principal point at depth 5
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]], dtype=F64)
    cams = Cameras.from_c2w_opengl(K, c2w_gl, 64, 48)
    uv, z = cams.project(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64))
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 24.0], dtype=F64)) and torch.allclose(z[0, 0], torch.tensor(5.0, dtype=F64))
    # world +y is up in OpenGL scenes: it lands above the centre (smaller v), +x to the right
    assert torch.allclose(uv[0, 1], torch.tensor([32.0 + 20.0, 24.0 - 20.0], dtype=F64))
    assert torch.allclose(cams.c2w_opengl()[0], c2w_gl)


def test_unproject_and_pixel_rays_invert_projection():
    K = torch.tensor([[[80.0, 0, 20.5], [0, 90.0, 14.0], [0, 0, 1]]], dtype=F64)
    w2c = torch.eye(4, dtype=F64)[None].clone()
    w2c[0, :3, :3] = rodrigues([0.3, 1, -0.2], 0.9)
    w2c[0, :3, 3] = torch.tensor([0.2, -0.1, 1.5], dtype=F64)
    cams = Cameras(K, w2c, 40, 30)
    pix = pixel_centres(30, 40, dtype=F64)
    depth = torch.linspace(1.0, 7.0, 1200, dtype=F64)[None]
    world = unproject(K, cams.c2w, pix, depth)
    uv, z = cams.project(world[0])
    assert torch.allclose(uv[0], pix[:2].T, atol=1e-10) and torch.allclose(z[0], depth[0], atol=1e-12)
    rays = pixel_rays(K[0], pix[0], pix[1])
    assert torch.allclose(rays, (torch.linalg.inv(K[0]) @ pix).T, atol=1e-14)
    assert torch.equal(pix[:, 0], torch.tensor([0.5, 0.5, 1.0], dtype=F64))
    assert torch.equal(pix[:, 41], torch.tensor([1.5, 1.5, 1.0], dtype=F64))  # row-major


def test_intrinsics_scaling_and_cropping_move_pixels_with_the_image():
    """A point at pixel-edge coordinate u in a W-wide image sits at u*s after scaling by s, and at
    u - left after cropping: the intrinsics must project it there."""
    K = torch.tensor([[50.0, 0, 16.0], [0, 60.0, 12.0], [0, 0, 1]], dtype=F64)
    X = torch.tensor([0.3, -0.2, 2.0], dtype=F64)
    uv = (K @ X)[:2] / X[2]
    Ks = scale_intrinsics(K, 0.5, 2.0)
    assert torch.allclose((Ks @ X)[:2] / X[2], uv * torch.tensor([0.5, 2.0], dtype=F64))
    Kc = crop_intrinsics(K, 3, 5)
    assert torch.allclose((Kc @ X)[:2] / X[2], uv - torch.tensor([3.0, 5.0], dtype=F64))
    assert torch.equal(K, torch.tensor([[50.0, 0, 16.0], [0, 60.0, 12.0], [0, 0, 1]], dtype=F64))  # inputs kept
    batched = scale_intrinsics(K.expand(4, 3, 3), 0.25, 0.25)
    assert batched.shape == (4, 3, 3) and torch.equal(batched[2], scale_intrinsics(K, 0.25, 0.25))
