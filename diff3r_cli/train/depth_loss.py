"""Self-supervised loss on the predicted depth: each context view rebuilt from the others.

Rendering losses reach a pixel's depth only through blended Gaussians, a weak and indirect signal;
on real photos the predictor's views then disagree on depth by a few per cent, and each view's
Gaussians land in front of the other's (the "two superimposed foxes"). This loss gives every
pixel's depth a direct photometric gradient, as self-supervised depth estimation does: view i's
pixels, unprojected at their predicted depth and projected into view j, must find the same colour
there. Per pixel the error is 0.85·(1 − SSIM)/2 + 0.15·|Δ| (3×3 windows), the minimum over the
source views (occlusions), averaged where some source sees the point; an edge-aware smoothness
term on mean-normalised inverse depth keeps texture-less regions from drifting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diff3r_cli.geometry import pixel_centres, unproject

SSIM_SHARE = 0.85
SMOOTH_WEIGHT = 1e-3
_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 − SSIM)/2 in 3×3 windows (reflect-padded), averaged over channels: (N,C,H,W) -> (N,1,H,W)."""
    def pool(t):
        return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, 1)

    mx, my = pool(x), pool(y)
    sx, sy, sxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx * mx + my * my + _C1) * (sx + sy + _C2))
    return ((1 - s) / 2).clamp(0, 1).mean(1, keepdim=True)


def warp_from(depth_i: torch.Tensor, K_i: torch.Tensor, w2c_i: torch.Tensor, image_j: torch.Tensor,
              K_j: torch.Tensor, w2c_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """View j's colours at view i's pixels placed at depth_i (H,W): (warped (3,H,W), valid (H,W)).

    Pixel-edge convention: pixel (x, y) has its centre at (x+0.5, y+0.5); bilinear sampling.
    """
    H, W = depth_i.shape
    pix = pixel_centres(H, W, depth_i.device, depth_i.dtype)
    pts = unproject(K_i[None], torch.linalg.inv(w2c_i)[None], pix, depth_i.reshape(1, -1))[0]   # (HW,3)
    pc = pts @ w2c_j[:3, :3].T + w2c_j[:3, 3]
    z = pc[:, 2]
    front = z > 1e-6
    uv = pc @ K_j.T
    zs = torch.where(front, z, torch.ones_like(z))
    u, v = uv[:, 0] / zs, uv[:, 1] / zs
    gx, gy = 2 * u / W - 1, 2 * v / H - 1
    valid = front & (gx.abs() < 1) & (gy.abs() < 1)
    grid = torch.stack([torch.where(valid, gx, torch.zeros_like(gx)), torch.where(valid, gy, torch.zeros_like(gy))], -1)
    warped = F.grid_sample(image_j.permute(2, 0, 1)[None], grid.reshape(1, H, W, 2), mode="bilinear",
                           padding_mode="border", align_corners=False)[0]
    return warped, valid.reshape(H, W)


def smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware first-order smoothness of mean-normalised inverse depth; depth (H,W), image (H,W,3)."""
    disp = 1.0 / depth.clamp_min(1e-6)
    nd = disp / disp.mean().clamp_min(1e-12)
    ix = (image[:, 1:] - image[:, :-1]).abs().mean(-1)
    iy = (image[1:] - image[:-1]).abs().mean(-1)
    return ((nd[:, 1:] - nd[:, :-1]).abs() * torch.exp(-ix)).mean() + \
        ((nd[1:] - nd[:-1]).abs() * torch.exp(-iy)).mean()


def reprojection_loss(depth: torch.Tensor, images: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
                      smooth_weight: float = SMOOTH_WEIGHT) -> torch.Tensor:
    """The loss for one example's context views: depth (V,H,W) z-depths, images (V,H,W,3), K (V,3,3), w2c (V,4,4)."""
    V = depth.shape[0]
    total = depth.new_zeros(())
    for i in range(V):
        target = images[i].permute(2, 0, 1)[None]
        errs = []
        for j in range(V):
            if j == i:
                continue
            warped, valid = warp_from(depth[i], K[i], w2c[i], images[j], K[j], w2c[j])
            e = SSIM_SHARE * ssim_distance(warped[None], target)[0, 0] + \
                (1 - SSIM_SHARE) * (warped - target[0]).abs().mean(0)
            errs.append(torch.where(valid, e, torch.full_like(e, float("inf"))))
        best = torch.stack(errs).min(0).values
        seen = torch.isfinite(best)
        if bool(seen.any()):
            total = total + best[seen].mean()
        total = total + smooth_weight * smoothness(depth[i], images[i])
    return total / V


def sweep_target_loss(depth: torch.Tensor, images: torch.Tensor, cameras) -> torch.Tensor:
    """Mean |log d − log d_sweep| over the pixels where the photometric sweep (diff3r_cli.depth), run
    around the prediction itself, accepts a depth; 0 (in the graph) where it accepts none.

    depth (V,H,W) predicted z-depth; images (V,H,W,3); cameras: the context Cameras. The target is
    found without gradients: the network is pulled toward what matching between the views says.
    """
    from diff3r_cli.depth import sweep_depth

    with torch.no_grad():
        res = sweep_depth(images.detach(), cameras, depth.detach())
    if not bool(res.valid.any()):
        return depth.sum() * 0.0
    diff = (torch.log(depth.clamp_min(1e-6)) - torch.log(res.depth.clamp_min(1e-6))).abs()
    return diff[res.valid].mean()


__all__ = ["sweep_target_loss", "reprojection_loss", "warp_from", "ssim_distance", "smoothness"]
