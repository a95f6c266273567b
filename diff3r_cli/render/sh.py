"""Real spherical harmonics up to degree 3, in the sign convention of the 3DGS reference
renderer and gsplat (so coefficients from standard ``.ply`` files mean the same thing)."""

from __future__ import annotations

import torch

from diff3r_cli.gaussians import SH_C0  # the one definition (it also fixes the .ply colour convention)

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate the (degree+1)^2 real SH basis functions at directions (..., 3) -> (..., K).

    ``dirs`` need not be normalised; it is normalised here (zero vectors stay zero, like
    ``F.normalize``). Only out-of-place ops, so it works under autograd and forward-mode AD.
    """
    if degree < 0 or degree > 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    cols = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        x, y, z = d.unbind(-1)
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
        if degree >= 2:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            cols += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy),
                     SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
            if degree >= 3:
                cols += [SH_C3[0] * y * (3.0 * xx - yy),
                         SH_C3[1] * xy * z,
                         SH_C3[2] * y * (4.0 * zz - xx - yy),
                         SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                         SH_C3[4] * x * (4.0 * zz - xx - yy),
                         SH_C3[5] * z * (xx - yy),
                         SH_C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(cols, dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """SH coefficients (..., K, 3) at directions (..., 3) -> raw value (..., 3) (no +0.5)."""
    k = sh.shape[-2]
    degree = int(round(k ** 0.5)) - 1
    basis = sh_basis(degree, dirs)  # (..., K)
    return (basis[..., :, None] * sh).sum(dim=-2)
