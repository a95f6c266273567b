"""Plane-sweep cost volume over inverse depth (MVSplat-style), for any number of views >= 2.

For every reference view i, every depth plane d (fronto-parallel in camera i) and every
other view j, the features of view j are warped into view i assuming the pixel lies at depth
d; the correlation <f_i, warp_j(f_i)>/sqrt(C) is averaged over the other views. Cameras are
in the project's convention (OpenCV axes, K in pixels, pixel centres at +0.5) and K must be
given at the *feature* resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diff3r_cli.geometry import pixel_centres


def inverse_depth_planes(near: torch.Tensor, far: torch.Tensor, num: int) -> torch.Tensor:
    """(B,) near/far -> (B,num) inverse depths, uniformly spaced from 1/near (index 0) to 1/far."""
    t = torch.linspace(0.0, 1.0, num, device=near.device, dtype=near.dtype)
    inv_near, inv_far = 1.0 / near, 1.0 / far
    return inv_near[:, None] + t[None, :] * (inv_far - inv_near)[:, None]


def project_planes(K_ref: torch.Tensor, w2c_ref: torch.Tensor, K_src: torch.Tensor, w2c_src: torch.Tensor,
                   depths: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where reference pixels at each depth land in the source view.

    K_*: (N,3,3), w2c_*: (N,4,4), depths: (N,D) z-depths in the reference camera.
    Returns uv (N,D,h*w,2) source pixel coordinates and valid (N,D,h*w) (in front of the
    source camera).
    """
    p = pixel_centres(h, w, K_ref.device, K_ref.dtype)  # (3,P)
    rel = w2c_src @ torch.linalg.inv(w2c_ref)          # ref camera -> src camera
    R, t = rel[:, :3, :3], rel[:, :3, 3]
    # uv_hom(d) = d * (K_s R K_r^-1 p) + K_s t : linear in d, so one matmul serves all planes.
    a = K_src @ R @ torch.linalg.inv(K_ref) @ p          # (N,3,P)
    b = (K_src @ t[..., None])                           # (N,3,1)
    hom = depths[:, :, None, None] * a[:, None] + b[:, None]   # (N,D,3,P)
    z = hom[:, :, 2]
    valid = z > 1e-6
    zs = torch.where(valid, z, torch.ones_like(z))
    uv = torch.stack([hom[:, :, 0] / zs, hom[:, :, 1] / zs], dim=-1)
    return uv, valid


def warp_features(feat_src: torch.Tensor, K_ref: torch.Tensor, w2c_ref: torch.Tensor, K_src: torch.Tensor,
                  w2c_src: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp source features (N,C,h,w) into the reference view for each depth plane.

    Returns warped (N,D,C,h,w) and a validity mask (N,D,h,w) (in front of the source
    camera and inside its image). Bilinear sampling; pixel-edge convention: a source pixel
    coordinate u maps to grid_sample's normalised 2u/w - 1 with align_corners=False.
    """
    n, c, h, w = feat_src.shape
    d = depths.shape[1]
    uv, valid = project_planes(K_ref, w2c_ref, K_src, w2c_src, depths, h, w)
    gx = 2.0 * uv[..., 0] / w - 1.0
    gy = 2.0 * uv[..., 1] / h - 1.0
    inside = valid & (gx.abs() <= 1) & (gy.abs() <= 1)
    # Points behind the camera are sent far outside so zero padding silences them.
    gx = torch.where(valid, gx, torch.full_like(gx, 4.0))
    gy = torch.where(valid, gy, torch.full_like(gy, 4.0))
    grid = torch.stack([gx, gy], dim=-1).reshape(n, d * h, w, 2)
    warped = F.grid_sample(feat_src, grid.to(feat_src.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False)                  # (N,C,D*h,w)
    warped = warped.reshape(n, c, d, h, w).permute(0, 2, 1, 3, 4)
    return warped, inside.reshape(n, d, h, w)


def plane_sweep_cost(feat: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, inv_depths: torch.Tensor) -> torch.Tensor:
    """Correlation cost volume for every view against all others.

    feat (B,V,C,h,w); K (B,V,3,3) at feature resolution; w2c (B,V,4,4); inv_depths (B,D).
    Returns (B,V,D,h,w): mean over the other views of <f_ref, warped f_src>/sqrt(C).
    """
    b, v, c, h, w = feat.shape
    if v < 2:
        raise ValueError("the cost volume needs at least two context views")
    depths = 1.0 / inv_depths
    per_view = []
    for i in range(v):
        acc = 0.0
        for j in range(v):
            if j == i:
                continue
            warped, _ = warp_features(feat[:, j], K[:, i], w2c[:, i], K[:, j], w2c[:, j], depths)
            acc = acc + (warped * feat[:, i, None]).sum(2)
        per_view.append(acc / ((v - 1) * c ** 0.5))
    return torch.stack(per_view, dim=1)


__all__ = ["inverse_depth_planes", "project_planes", "warp_features", "plane_sweep_cost"]
