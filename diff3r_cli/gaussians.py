"""The Gaussian parameter container, in the standard 3DGS parameterisation.

means (N,3); log_scales (N,3); quats (N,4) w,x,y,z unnormalised; opacity_logits (N,);
sh (N,(d+1)^2,3) with colour = 0.5 + SH_C0 * sh[:,0] for degree 0.

Uncertainty weights Λ have shape (N,5), one per parameter group in GROUPS order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SH_C0 = 0.28209479177387814
GROUPS = ("mean", "scale", "rotation", "opacity", "color")
_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0,1] -> SH DC coefficient (inverse of 0.5 + SH_C0 * dc)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """SH DC coefficient -> colour (the view-independent part of the SH colour)."""
    return 0.5 + SH_C0 * dc


@dataclass
class Gaussians:
    """N 3D Gaussians. All tensors share device and dtype."""

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        if self.sh.dim() == 2:  # (N,3) colours-as-DC shorthand
            self.sh = self.sh[:, None, :]
        shapes = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        k = self.sh.shape[1]
        if self.sh.shape[0] != n or self.sh.shape[2] != 3 or int(math.isqrt(k)) ** 2 != k:
            raise ValueError(f"Gaussians.sh has shape {tuple(self.sh.shape)}, expected (N,(d+1)^2,3)")

    # --- basic properties -------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(math.isqrt(self.sh.shape[1])) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f) for f in _FIELDS)

    def map(self, fn) -> "Gaussians":
        """Apply fn to every tensor (e.g. detach, clone, .to)."""
        return Gaussians(*(fn(t) for t in self.tensors()))

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self.map(lambda t: t.clone())

    def to(self, device=None, dtype=None) -> "Gaussians":
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def __getitem__(self, idx) -> "Gaussians":
        return self.map(lambda t: t[idx])

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    # --- flat parameter vector (the optimiser's view) -------------------------------
    def group_sizes(self) -> tuple[int, ...]:
        """Numbers of scalars per Gaussian in each group of GROUPS."""
        return (3, 3, 4, 1, self.sh.shape[1] * 3)

    def flatten(self) -> torch.Tensor:
        """Concatenate all parameters into one vector of length N * sum(group_sizes).

        Layout is per group blocks: all means, then all log-scales, quats, opacities, SH.
        """
        return torch.cat([t.reshape(-1) for t in self.tensors()])

    def unflatten(self, vec: torch.Tensor) -> "Gaussians":
        """Inverse of flatten, using this object's shapes (vec may carry autograd/jvp)."""
        sizes = [t.numel() for t in self.tensors()]
        if sum(sizes) != vec.numel():
            raise ValueError(f"vector has {vec.numel()} entries, expected {sum(sizes)}")
        # split, not slicing: its backward concatenates the parts' gradients, where each
        # slice's backward would zero-fill a full-length buffer (5 per TTO step).
        parts = torch.split(vec, sizes)
        return Gaussians(*(p.reshape(t.shape) for p, t in zip(parts, self.tensors())))

    def expand_groups(self, lam: torch.Tensor) -> torch.Tensor:
        """Per-Gaussian group weights (N,5) -> per-scalar weights in the flatten() layout."""
        n = self.num
        if tuple(lam.shape) != (n, len(GROUPS)):
            raise ValueError(f"uncertainty weights have shape {tuple(lam.shape)}, expected ({n}, {len(GROUPS)})")
        blocks = [lam[:, g:g + 1].expand(n, s).reshape(-1) for g, s in enumerate(self.group_sizes())]
        return torch.cat(blocks)

    def reduce_groups(self, vec: torch.Tensor) -> torch.Tensor:
        """Sum a flatten()-layout vector over the scalars of each group -> (N,5)."""
        n, out, i = self.num, [], 0
        for s in self.group_sizes():
            out.append(vec[i:i + n * s].reshape(n, s).sum(1))
            i += n * s
        return torch.stack(out, dim=1)


__all__ = ["Gaussians", "GROUPS", "SH_C0", "rgb_to_sh_dc", "sh_dc_to_rgb"]
