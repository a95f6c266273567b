"""From the released backbones' per-pixel outputs to diff3r's Gaussians.

Their conventions, reproduced (not "fixed", so colours and geometry are the model's):

- MVSplat's means lie on each pixel's *unit* ray at the predicted depth, i.e. the depth is a
  distance along the ray, not a z-depth; DepthSplat's rays are scaled to unit camera z, so its
  depth is a z-depth. Both shift each ray inside its pixel by a predicted sub-pixel offset.
- Scales (MVSplat) are ``(min + (max-min)·sigmoid(s)) · depth · 0.1·Σ(K⁻¹·pixel size)``;
  rotations are xyzw quaternions in the camera frame; the covariance is rotated to world.
- SH coefficients are predicted in the camera frame and rotated to world by the authors with a
  Wigner-D routine whose axis convention differs from their renderer's basis. In the renderer's
  (3DGS) basis the applied map is the SH rotation by R' = P R Pᵀ, not by R, with
  P = [[0,0,-1],[-1,0,0],[0,1,0]] (measured against the reference; see tests/test_backbones.py).
  Their renderer evaluates degrees <= 3 only, so higher degrees are dropped after rotating.
"""

from __future__ import annotations

import functools
import math

import torch

from diff3r_cli.geometry import rotmat_to_quat
from diff3r_cli.render.sh import sh_basis

QUIRK_P = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _fibonacci_dirs(n: int = 64) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = (1 - z * z).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


@functools.lru_cache(maxsize=None)
def _basis_pinv(degree: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fixed sample directions and, per degree l = 1..degree, the pseudo-inverse of the basis there."""
    d = _fibonacci_dirs()
    A = sh_basis(degree, d)
    return d, [torch.linalg.pinv(A[:, l * l:(l + 1) ** 2]) for l in range(1, degree + 1)]


def sh_rotation_matrices(R: torch.Tensor, degree: int = 3) -> list[torch.Tensor]:
    """Per degree l = 1..degree, (N, 2l+1, 2l+1) matrices M with Σ(Mc)_k Y_k(d) = Σ c_k Y_k(Rᵀd)
    in the renderer's SH basis (float64, by least squares on well-spread directions)."""
    d, pinvs = _basis_pinv(degree)
    R = R.to(torch.float64).cpu()
    B = sh_basis(degree, torch.einsum("nij,pi->npj", R, d))          # Y(Rᵀ d): d·R = (Rᵀd)ᵀ
    return [pinvs[l - 1][None] @ B[..., l * l:(l + 1) ** 2] for l in range(1, degree + 1)]


def release_sh_matrix(c2w_rot: torch.Tensor, k_in: int, out_degree: int = 3) -> torch.Tensor:
    """The linear map camera-frame SH (k_in coefficients) -> world-frame SH as their renderer sees
    them: block-diagonal (K_out, k_in), K_out = (min(degree_in, out_degree)+1)², float64.

    One (3,3) rotation; applies the rotation by P R Pᵀ (module docstring) per degree and drops
    degrees above ``out_degree``.
    """
    deg = min(int(round(math.sqrt(k_in))) - 1, out_degree)
    Rq = (QUIRK_P @ c2w_rot.detach().to("cpu", torch.float64) @ QUIRK_P.T)[None]
    k_out = (deg + 1) ** 2
    M = torch.zeros(k_out, k_in, dtype=torch.float64, device="cpu")
    M[0, 0] = 1.0
    for l, block in enumerate(sh_rotation_matrices(Rq, deg), start=1):
        M[l * l:(l + 1) ** 2, l * l:(l + 1) ** 2] = block[0]
    return M


def rotate_sh_like_release(sh_cam: torch.Tensor, c2w_rot: torch.Tensor, out_degree: int = 3) -> torch.Tensor:
    """Camera-frame SH (N,K,3) of the release -> world-frame SH (N,K_out,3) (:func:`release_sh_matrix`)."""
    n, k, _ = sh_cam.shape
    M = release_sh_matrix(c2w_rot, k, out_degree).to(sh_cam.device, sh_cam.dtype)
    flat = sh_cam.permute(1, 0, 2).reshape(k, n * 3)              # one GEMM for all Gaussians
    return (M @ flat).reshape(-1, n, 3).permute(1, 0, 2)


def _apply(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,3,3) matrices applied to (N,P,3) vectors (elementwise: a batched GEMM with k=3 is slow on CPU)."""
    return (v[:, :, None, :] * M[:, None]).sum(-1)


def unit_rays(xy_norm: torch.Tensor, intrinsics: torch.Tensor, c2w: torch.Tensor,
              unit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """World ray origins and directions for normalised image points: unit length (depth is a
    distance along the ray: MVSplat) or unit camera z (depth is a z-depth: DepthSplat).

    xy_norm (N,P,2) in [0,1]; intrinsics normalised (N,3,3); c2w (N,4,4) -> ((N,P,3), (N,P,3)).
    """
    hom = torch.cat([xy_norm, torch.ones_like(xy_norm[..., :1])], -1)
    d = _apply(torch.inverse(intrinsics), hom)
    d = d / (d.norm(dim=-1, keepdim=True) if unit else d[..., 2:])
    d = _apply(c2w[:, :3, :3], d)
    return c2w[:, None, :3, 3].expand_as(d), d


def scale_multiplier(intrinsics: torch.Tensor, h: int, w: int, factor: float = 0.1) -> torch.Tensor:
    """(N,) the release's pixel-footprint factor: factor · Σ_i (K[:2,:2]⁻¹ · (1/w, 1/h))_i."""
    px = intrinsics.new_tensor([1.0 / w, 1.0 / h])
    return factor * (torch.inverse(intrinsics[:, :2, :2]) @ px).sum(-1)


def xyzw_to_wxyz(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([q[..., 3:], q[..., :3]], -1)


def camera_quats_to_world(q_xyzw: torch.Tensor, c2w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Camera-frame xyzw quaternions (N,P,4) (normalised as the release: q/(|q|+eps)) -> world wxyz."""
    q = xyzw_to_wxyz(q_xyzw / (q_xyzw.norm(dim=-1, keepdim=True) + eps))
    w, x, y, z = rotmat_to_quat(c2w[:, :3, :3]).unbind(-1)
    # Hamilton product qc ⊗ q as a 4x4 matrix of qc per view (one small matrix, many quaternions)
    L = torch.stack([torch.stack([w, -x, -y, -z], -1), torch.stack([x, w, -z, y], -1),
                     torch.stack([y, z, w, -x], -1), torch.stack([z, -y, x, w], -1)], -2)
    return (q[:, :, None, :] * L[:, None]).sum(-1)


__all__ = ["rotate_sh_like_release", "release_sh_matrix", "sh_rotation_matrices", "unit_rays", "scale_multiplier", "camera_quats_to_world",
           "QUIRK_P"]
