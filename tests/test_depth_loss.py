"""The self-supervised depth loss against a ray-cast scene's exact depth maps."""

from __future__ import annotations

import pytest
import torch

from diff3r_cli.data.synth import random_scene, render_frame
from diff3r_cli.train.depth_loss import reprojection_loss, warp_from


@pytest.fixture(scope="module")
def two_views():
    """Two frames of a procedural room with exact z-depth maps (4:3)."""
    sc = random_scene(3, frames=24, width=96, height=72)
    frames = [6, 9]
    rgbd = [render_frame(sc, f, spp=4) for f in frames]
    return (torch.stack([c for c, _ in rgbd]), torch.stack([d for _, d in rgbd]).float(),
            sc.K[frames].float(), sc.w2c[frames].float())


def test_warp_at_the_true_depth_rebuilds_the_view(two_views):
    images, depths, K, w2c = two_views
    warped, valid = warp_from(depths[0], K[0], w2c[0], images[1], K[1], w2c[1])
    assert float(valid.float().mean()) > 0.5
    err = (warped.permute(1, 2, 0) - images[0]).abs().mean(-1)[valid]
    # occlusions and edges aside, the other view's colours land on the right pixels
    assert float(err.median()) < 0.03
    wrong, _ = warp_from(depths[0] * 1.3, K[0], w2c[0], images[1], K[1], w2c[1])
    assert float((wrong.permute(1, 2, 0) - images[0]).abs().mean(-1)[valid].median()) > 2 * float(err.median())


def test_loss_is_lowest_at_the_true_depth(two_views):
    images, depths, K, w2c = two_views
    vals = {s: float(reprojection_loss(depths * s, images, K, w2c)) for s in (0.8, 0.9, 1.0, 1.1, 1.25)}
    assert min(vals, key=vals.get) == 1.0, vals
    # and its gradient points back towards the truth from a wrong depth
    d = (depths * 1.1).requires_grad_(True)
    reprojection_loss(d, images, K, w2c).backward()
    step = d.detach() - 50.0 * d.grad
    assert float(reprojection_loss(step, images, K, w2c)) < vals[1.1]
