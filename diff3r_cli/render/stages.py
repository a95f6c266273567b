"""Named intermediate stages of the torch rasterizer, as gsplat names its stages.

``project_gaussians`` turns Gaussians into :class:`ProjectedGaussians` (one *entry* per
surviving (camera, Gaussian) pair), and ``bin_pairs`` turns those into :class:`PixelPairs`
(the (entry, pixel) intersections that compositing visits, in compositing order). Both are
plain records of tensors so that a reader can see what flows between the stages; the
arithmetic lives in ``torch_backend.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ProjectedGaussians:
    """The (camera, Gaussian) entries that survive culling, in (camera, Gaussian index) order.

    Differentiable w.r.t. the Gaussians: ``mean2d`` (E,2) pixel position; ``conic`` (E,3)
    entries a, b, c of the inverse 2D covariance [[a,b],[b,c]]; ``depth`` (E,) camera z;
    ``opacity`` (E,); ``cov2d`` (E,3) the dilated 2D covariance xx, xy, yy.
    Without autograd: ``cam`` and ``gid`` (E,) camera and Gaussian index of each entry;
    ``extend`` (E,) footprint radius in standard deviations; ``depth_rank`` (E,) position of
    each entry in (camera, depth) order and ``by_depth`` (E,) its inverse permutation.
    """

    cam: torch.Tensor
    gid: torch.Tensor
    mean2d: torch.Tensor
    conic: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    cov2d: torch.Tensor
    extend: torch.Tensor
    depth_rank: torch.Tensor
    by_depth: torch.Tensor

    @property
    def num(self) -> int:
        """Number of entries E."""
        return int(self.cam.shape[0])


@dataclass
class PixelPairs:
    """The (entry, pixel) pairs that compositing visits, sorted by (camera, pixel, depth).

    All per-pair tensors have shape (M,): ``entry`` index into the ProjectedGaussians;
    ``pixel`` key cam·H·W + y·W + x; ``alpha`` α of the pair (>= 1/255); ``transmittance`` T
    in front of the pair; ``segment`` the id of the pixel's run of pairs. ``segment_start``
    (S,) is the index of each run's first pair. No autograd. ``pairs_sorted`` counts the
    pairs sorted before the transmittance cut-off and ``depth_chunks`` the front-to-back
    chunks binning took (1 when everything fitted at once).
    """

    entry: torch.Tensor
    pixel: torch.Tensor
    alpha: torch.Tensor
    transmittance: torch.Tensor
    segment: torch.Tensor
    segment_start: torch.Tensor
    pairs_sorted: int = 0
    depth_chunks: int = 0

    @property
    def num(self) -> int:
        """Number of pairs M."""
        return int(self.entry.numel())


__all__ = ["ProjectedGaussians", "PixelPairs"]
