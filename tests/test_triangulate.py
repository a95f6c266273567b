"""Depth range from features triangulated with known poses, checked against a ray caster's depth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.synth import random_scene, render_frame
from diff3r_cli.engines.policy import choose_context, estimate_depth_range
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

FOX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fox"


@pytest.fixture(scope="module")
def two_views():
    """Two frames of a procedural room with their exact z-depth maps (4:3, not square)."""
    sc = random_scene(5, frames=24, width=256, height=192)
    frames = [6, 12]
    rgbd = [render_frame(sc, f, spp=4) for f in frames]
    cams = Cameras(sc.K[frames].double(), sc.w2c[frames].double(), 256, 192)
    return torch.stack([c for c, _ in rgbd]), torch.stack([d for _, d in rgbd]), cams


def _depth_errors(points: torch.Tensor, depths: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """Relative error of each point's camera depth against the ray-cast depth of its pixel."""
    uv, z = cams.project(points)
    errs = []
    for c in range(len(cams)):
        px = uv[c].floor().long()
        ok = (px[:, 0] >= 0) & (px[:, 0] < cams.width) & (px[:, 1] >= 0) & (px[:, 1] < cams.height)
        ref = depths[c][px[ok, 1], px[ok, 0]].double()
        errs.append(((z[c][ok] - ref) / ref).abs())
    return torch.cat(errs)


def test_triangulated_points_lie_on_the_ray_cast_surface(two_views):
    images, depths, cams = two_views
    r = triangulate_known_cameras(images, cams)
    assert r["num_points"] >= 30
    assert r["reprojection_error"] < 1.0
    err = _depth_errors(r["points3d"], depths, cams)
    # feature points sit on texture edges, where a pixel's centre depth can differ: median, not max
    assert float(err.median()) < 0.03
    assert float((err < 0.05).float().mean()) > 0.6


def test_triangulated_points_reproject_onto_their_keypoints_through_our_cameras(two_views, monkeypatch):
    # Direct check of the intrinsics handed to COLMAP (fx, fy, cx, cy in its PINHOLE order): every
    # triangulated point, projected with *our* cameras, lands on the keypoints it was made from.
    # With cx and cy swapped, COLMAP's cameras disagree with ours by |cx - cy| = 32 px.
    import pycolmap

    images, _, cams = two_views
    seen = {}
    real = pycolmap.triangulate_points

    def spy(*args, **kwargs):
        seen["rec"] = rec = real(*args, **kwargs)
        return rec

    monkeypatch.setattr(pycolmap, "triangulate_points", spy)
    r = triangulate_known_cameras(images, cams)
    rec = seen["rec"]
    assert r["num_points"] >= 30 and len(rec.points3D) == r["num_points"]
    errs = []
    for p in rec.points3D.values():
        uv, _ = cams.project(torch.tensor(p.xyz, dtype=torch.float64)[None])
        for el in p.track.elements:
            im = rec.images[el.image_id]
            view = int(Path(im.name).stem)           # images are saved as 0000.png, 0001.png, ...
            kp = torch.tensor(im.points2D[el.point2D_idx].xy, dtype=torch.float64)
            errs.append(float((uv[view, 0] - kp).norm()))
    errs = torch.tensor(errs)
    assert float(errs.median()) < 0.5 and float(errs.max()) < 3.0, (errs.median(), errs.max())


def test_depth_range_comes_from_triangulation_and_brackets_the_scene(two_views):
    images, depths, cams = two_views
    scene = Scene(images, cams, ["a", "b"], "transforms")
    near, far, src = estimate_depth_range(scene, [0, 1])
    assert src.startswith("triangulated matches")
    d = depths[torch.isfinite(depths)]
    # the widened 2-98 % range must cover the bulk of the true depths and not be absurdly wide
    inside = ((d >= near) & (d <= far)).float().mean()
    assert float(inside) > 0.95
    assert far / near < 20
    # without triangulation the old look-at guess is what remains
    assert estimate_depth_range(scene, [0, 1], triangulate=False)[2] == "camera look-at"


def test_no_matches_falls_back_to_look_at(two_views):
    _, _, cams = two_views
    flat = torch.full((2, cams.height, cams.width, 3), 0.5)  # featureless: nothing to match
    scene = Scene(flat, cams, ["a", "b"], "transforms")
    assert triangulate_known_cameras(flat, cams)["num_points"] == 0
    assert estimate_depth_range(scene, [0, 1])[2] == "camera look-at"


@pytest.mark.skipif(not FOX.is_dir(), reason="shared fox data absent")
def test_fox_depth_range_from_triangulation():
    from diff3r_cli.engines.policy import default_resolution
    from diff3r_cli.scene_io import load_scene
    from diff3r_cli.scene_io.images import resize_scene

    scene = load_scene(FOX)
    scene = resize_scene(scene, *default_resolution(scene.width, scene.height))
    ctx = choose_context(scene.cameras)
    near, far, src = estimate_depth_range(scene, ctx)
    assert src.startswith("triangulated matches"), src
    # the fox sits ~2.5-5 units from these cameras (COLMAP scale of instant-ngp's sample); the
    # look-at guess was 1.13-18.1
    assert 1.0 < near < 3.0 and 5.0 < far < 15.0, (near, far)
