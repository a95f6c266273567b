"""Bare image folders posed by pycolmap SfM: frames of our own ray-cast synthetic rooms (always run,
exact cameras known), and real LLFF fern frames (skipped when the shared data is absent)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.synth import random_scene, render_frame
from diff3r_cli.errors import UserError
from diff3r_cli.geometry import look_rotation
from diff3r_cli.scene_io import detect_format, load_scene
from diff3r_cli.scene_io import folder as folder_mod
from diff3r_cli.scene_io.two_view import triangulate_dlt

FERN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llff_fern" / "images"
needs_fern = pytest.mark.skipif(not FERN.is_dir(), reason="shared llff_fern data absent")


def fern_folder(tmp: Path, idx: list[int], scale: dict[int, float] | None = None) -> Path:
    """A folder holding the chosen fern frames (optionally some rescaled to another size)."""
    files = sorted(FERN.iterdir())
    tmp.mkdir(parents=True, exist_ok=True)
    for i in idx:
        if scale and i in scale:
            im = Image.open(files[i])
            im.resize((round(im.width * scale[i]), round(im.height * scale[i])), Image.LANCZOS).save(tmp / files[i].name)
        else:
            shutil.copy(files[i], tmp / files[i].name)
    return tmp


def relative_angles(a, b, i: int, j: int) -> tuple[float, float]:
    """(rotation difference, translation-direction difference) in degrees of the i->j relative poses."""
    ra = a.cameras.w2c[j] @ a.cameras.c2w[i]
    rb = b.cameras.w2c[j] @ b.cameras.c2w[i]
    R = ra[:3, :3].T @ rb[:3, :3]
    rot = torch.rad2deg(torch.arccos(((R.trace() - 1) / 2).clamp(-1, 1)))
    ta, tb = ra[:3, 3] / ra[:3, 3].norm(), rb[:3, 3] / rb[:3, 3].norm()
    return float(rot), float(torch.rad2deg(torch.arccos((ta @ tb).clamp(-1, 1))))


def points_in_view_fraction(scene) -> float:
    """Fraction of (point, view) pairs of the sparse cloud that land in front of and inside each view."""
    uv, z = scene.cameras.project(scene.extras["points3d"])
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= scene.width) & (uv[..., 1] >= 0) & (uv[..., 1] <= scene.height)
    return float(inside.double().mean())


# ----------------------------------------------------------------------------- synthetic rooms

def synth_rig(seed: int, views: int, step: float, width: int, height: int):
    """A synthetic room seen by ``views`` cameras in a sideways row ``step`` m apart, all looking at one
    point 3 m ahead of the room's mid-clip camera (a converging rig: good geometry for SfM)."""
    sc = random_scene(seed, frames=24, width=width, height=height)
    mid = Cameras(sc.K, sc.w2c, width, height).c2w[12]
    target = mid[:3, 3] + 3.0 * mid[:3, 2]
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # synthetic worlds are y-up
    c2w = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    for k in range(views):
        c2w[k, :3, 3] = mid[:3, 3] + (k - (views - 1) / 2) * step * mid[:3, 0]
        c2w[k, :3, :3] = look_rotation((target - c2w[k, :3, 3]) / (target - c2w[k, :3, 3]).norm(), up)
    return dataclasses.replace(sc, K=sc.K[:views], w2c=torch.linalg.inv(c2w))


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    """A bare folder of PNG frames of one synthetic room, and the exact cameras that took them."""
    sc = synth_rig(seed=2, views=5, step=0.25, width=256, height=192)
    root = tmp_path_factory.mktemp("synth_sfm")
    for i in range(len(sc.K)):
        rgb, _ = render_frame(sc, i, spp=1)
        Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(root / f"{i:02d}.png")
    return root, Cameras(sc.K, sc.w2c, sc.width, sc.height)


def similarity_align(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(s, R, t) minimising |s R src + t - dst|^2 over points (N,3) (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, S, Vt = torch.linalg.svd(xd.T @ xs / len(src))
    D = torch.eye(3, dtype=src.dtype)
    if torch.det(U @ Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float((S * D.diagonal()).sum() / xs.pow(2).sum(1).mean())
    return s, R, mu_d - s * R @ mu_s


def assert_matches_up_to_similarity(scene, truth: Cameras, centre_tol: float, angle_tol_deg: float) -> None:
    """Camera centres agree after the best similarity transform (error relative to the spread of the
    true centres), and so do the cameras' rotations relative to the first posed one (invariant to the
    similarity; a row of centres alone would leave the rotation about the row undetermined)."""
    keep = [int(Path(p).stem) for p in scene.paths]
    gt = truth.centers.double()[keep]
    est = scene.cameras.centers.double()
    s, R, t = similarity_align(est, gt)
    spread = float((gt - gt.mean(0)).norm(dim=1).max())
    err = float((s * est @ R.T + t - gt).norm(dim=1).max())
    assert err < centre_tol * spread, (err, spread)
    r_est = scene.cameras.c2w[:, :3, :3].double()
    r_gt = truth.c2w[keep, :3, :3].double()
    for k in range(1, len(keep)):
        d = (r_est[0].T @ r_est[k]) @ (r_gt[0].T @ r_gt[k]).T
        angle = float(torch.rad2deg(torch.arccos(((d.trace() - 1) / 2).clamp(-1, 1))))
        assert angle < angle_tol_deg, (keep[k], angle)


def test_sfm_recovers_synthetic_cameras_up_to_similarity(synth_folder):
    root, truth = synth_folder
    assert detect_format(root) == "folder"
    s = load_scene(root, progress=False)
    assert s.extras["num_registered"] == 5 and s.extras["fallback"] is None and not s.extras["dropped"]
    assert s.extras["reprojection_error"] < 1.0
    assert_matches_up_to_similarity(s, truth, centre_tol=0.05, angle_tol_deg=1.0)
    assert points_in_view_fraction(s) > 0.9


def test_photos_left_unposed_are_matched_again(synth_folder, monkeypatch):
    """pycolmap's matches vary between runs, so a mapping that leaves photos unposed is retried on a
    fresh matching (new RANSAC seed) and the reconstruction posing the most photos wins."""
    root, truth = synth_folder
    real_mapping = folder_mod.pycolmap.incremental_mapping
    seeds, calls = [], []

    def unlucky_first(db, images, out, opts, **kw):
        calls.append(out.name)
        recs = real_mapping(db, images, out, opts, **kw)
        if out.name.startswith("sparse0"):  # the first matching: keep only a 2-photo model
            for r in recs.values():
                for im in list(r.images.values())[2:]:
                    r.deregister_frame(im.frame_id)
        return recs

    real_match = folder_mod.match_all_pairs
    monkeypatch.setattr(folder_mod, "match_all_pairs", lambda db, seed=0: (seeds.append(seed), real_match(db, seed)))
    monkeypatch.setattr(folder_mod.pycolmap, "incremental_mapping", unlucky_first)
    s = load_scene(root, progress=False)
    assert s.extras["match_attempts"] == 2 and seeds == [0, 1]
    assert calls[:2] == ["sparse0", "sparse0_loose"] and "sparse1" in calls
    assert s.extras["num_registered"] == 5 and not s.extras["dropped"]
    assert_matches_up_to_similarity(s, truth, centre_tol=0.05, angle_tol_deg=1.0)


def test_matching_seeds_verification_and_clears(synth_folder, tmp_path, monkeypatch):
    """match_all_pairs seeds the verification's RANSAC (pycolmap's default -1 is the clock), and
    clear_matches leaves features but no matches behind for the next matching."""
    import pycolmap

    from diff3r_cli.scene_io import colmap_run

    root, _ = synth_folder
    db = tmp_path / "database.db"
    names = sorted(p.name for p in root.iterdir())[:3]
    pycolmap.extract_features(db, root, image_names=names, device=pycolmap.Device.cpu)
    seen = {}
    real = colmap_run.pycolmap.match_exhaustive
    monkeypatch.setattr(colmap_run.pycolmap, "match_exhaustive",
                        lambda d, **kw: (seen.update(seed=kw["verification_options"].ransac.random_seed), real(d, **kw)))
    colmap_run.match_all_pairs(db, seed=7)
    assert seen["seed"] == 7

    def counts():
        with pycolmap.Database.open(str(db)) as d:
            return d.num_matches(), d.num_verified_image_pairs(), d.num_keypoints()
    matched = counts()
    assert matched[0] > 0 and matched[1] == 3
    colmap_run.clear_matches(db)
    assert counts() == (0, 0, matched[2])


def test_two_view_strategy_recovers_synthetic_cameras(synth_folder):
    root, truth = synth_folder
    # two-view poses keep the focal they are given (here the true one; COLMAP's size prior is ~40% off)
    s = load_scene(root, progress=False, strategy="two_view", views=[0, 2, 4], focal=float(truth.K[0, 0, 0]))
    assert s.extras["fallback"] == "two_view" and s.extras["num_registered"] == 3 and not s.extras["dropped"]
    assert torch.allclose(s.cameras.K.double(), truth.K[[0, 2, 4]].double(), atol=1e-6)
    assert_matches_up_to_similarity(s, truth, centre_tol=0.05, angle_tol_deg=1.0)


# ----------------------------------------------------------------------------- real frames (shared data)

@pytest.fixture(scope="module")
def fern_pair(tmp_path_factory):
    if not FERN.is_dir():
        pytest.skip("shared llff_fern data absent")
    return load_scene(fern_folder(tmp_path_factory.mktemp("pair"), [0, 1]), progress=False)


@pytest.fixture(scope="module")
def fern_three(tmp_path_factory):
    if not FERN.is_dir():
        pytest.skip("shared llff_fern data absent")
    root = fern_folder(tmp_path_factory.mktemp("f3"), [0, 1, 2])
    assert detect_format(root) == "folder"
    t0 = time.perf_counter()
    s = load_scene(root, progress=True)  # exercises the rich display too
    return root, s, time.perf_counter() - t0


@needs_fern
def test_fern_three_frames_register_all(fern_three):
    _, s, dt = fern_three
    e = s.extras
    print(f"fern x3: {dt:.1f}s, registered {e['num_registered']}/{e['num_images']}, "
          f"mean reprojection error {e['reprojection_error']:.3f}px")
    assert len(s) == 3 and e["num_registered"] == 3 and e["fallback"] is None
    assert s.images.shape == (3, 384, 512, 3) and (s.width, s.height) == (512, 384)
    assert 0 < e["reprojection_error"] < 1.0
    assert points_in_view_fraction(s) > 0.9
    # adjacent LLFF frames: cameras side by side, looking the same way
    fwd = s.cameras.c2w[:, :3, 2]
    assert float((fwd[0] @ fwd[1])) > 0.98 and float((fwd[1] @ fwd[2])) > 0.98
    assert [Path(p).name for p in s.paths] == ["000.jpg", "001.jpg", "002.jpg"]


@needs_fern
def test_fern_two_frames_register(fern_pair):
    e = fern_pair.extras
    assert e["num_registered"] == 2 and e["reprojection_error"] < 1.0
    assert e["loose_init"]  # the default 16-degree initialization cannot start from two adjacent frames
    assert points_in_view_fraction(fern_pair) > 0.9


@needs_fern
def test_two_view_fallback_matches_incremental(tmp_path, monkeypatch, caplog, fern_pair):
    """Force the mapper to fail: the two-view poses must agree with the incremental ones."""
    monkeypatch.setattr(folder_mod.pycolmap, "incremental_mapping", lambda *a, **k: {})
    root = fern_folder(tmp_path / "fb", [0, 1])
    with caplog.at_level(logging.WARNING):
        s = load_scene(root, progress=False)
    assert s.extras["fallback"] == "two_view" and s.extras["num_registered"] == 2
    assert any("two-view" in r.getMessage() for r in caplog.records)
    c = s.cameras.centers
    assert abs(float((c[0] - c[1]).norm()) - 1.0) < 1e-9  # baseline set to 1
    eye = torch.eye(4, dtype=s.cameras.w2c.dtype)
    assert any(torch.allclose(s.cameras.w2c[i], eye) for i in range(2))  # the first camera of the pair is the origin
    rot, tdir = relative_angles(fern_pair, s, 0, 1)
    assert rot < 3.0 and tdir < 5.0, (rot, tdir)
    assert s.extras["reprojection_error"] < 1.0
    assert points_in_view_fraction(s) > 0.9  # triangulated matches lie in front of both cameras


@needs_fern
def test_two_view_strategy_poses_third_view_by_pnp(fern_three):
    root, inc, _ = fern_three
    s = load_scene(root, progress=False, strategy="two_view")
    assert s.extras["fallback"] == "two_view" and s.extras["num_registered"] == 3 and not s.extras["dropped"]
    # the focal prior (1.2 x width) differs from the mapper's estimate, so allow a few degrees
    for j in (1, 2):
        rot, tdir = relative_angles(inc, s, 0, j)
        assert rot < 8.0 and tdir < 10.0, (j, rot, tdir)
    assert s.extras["reprojection_error"] < 1.5
    assert points_in_view_fraction(s) > 0.9


@needs_fern
def test_mixed_sizes_resampled_to_the_majority(tmp_path):
    root = fern_folder(tmp_path / "mix", [3, 4, 5], scale={4: 0.75})
    s = load_scene(root, progress=False)
    assert s.extras["num_registered"] == 3
    assert s.images.shape == (3, 384, 512, 3)
    # the rescaled view was brought back to the common size: its pixels match the original frame
    orig = torch.from_numpy(np.asarray(Image.open(sorted(FERN.iterdir())[4]).convert("RGB"), np.float32) / 255)
    assert float((s.images[1] - orig).abs().mean()) < 0.03
    assert points_in_view_fraction(s) > 0.9
    s2 = load_scene(root, progress=False, resolution=(256, 256))
    assert s2.images.shape == (3, 256, 256, 3)


def test_folder_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        load_scene(tmp_path / "empty")
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(one / "a.png")
    with pytest.raises(UserError, match="at least 2"):
        load_scene(one)
    (one / "b.jpg").write_bytes(b"garbage, not an image")
    with pytest.raises(UserError) as e:
        load_scene(one, progress=False)
    assert "b.jpg" in str(e.value)


def test_unrelated_images_fail_cleanly(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match="posed|matches|two-view") as e:
        load_scene(tmp_path, progress=False)
    assert str(e.value).startswith(str(tmp_path))  # names the user's folder, not the SfM temp dir


def test_dlt_triangulation_recovers_points():
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (50, 3)) + np.array([0, 0, 5.0])
    P1 = np.hstack([np.eye(3), np.zeros((3, 1))])
    c, s_ = np.cos(0.2), np.sin(0.2)
    P2 = np.hstack([np.array([[c, 0, s_], [0, 1, 0], [-s_, 0, c]]), np.array([[-1.0], [0.1], [0.2]])])

    def proj(P):
        x = X @ P[:, :3].T + P[:, 3]
        return x[:, :2] / x[:, 2:]

    np.testing.assert_allclose(triangulate_dlt(P1, P2, proj(P1), proj(P2)), X, atol=1e-9)


@needs_fern
def test_known_focal_is_kept(tmp_path):
    root = fern_folder(tmp_path / "foc", [0, 1])
    s = load_scene(root, progress=False, focal=421.0)
    assert s.extras["num_registered"] == 2
    assert torch.allclose(s.cameras.K[:, 0, 0], torch.full((2,), 421.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(s.cameras.K[:, :2, 2], torch.tensor([256.0, 192.0], dtype=torch.float64), atol=1e-6)


@needs_fern
def test_exif_35mm_focal_is_the_prior(tmp_path):
    root = tmp_path / "exif"
    root.mkdir()
    for f in sorted(FERN.iterdir())[:2]:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = 30  # FocalLengthIn35mmFilm
        Image.open(f).save(root / f.name, exif=exif, quality=95)
    s = load_scene(root, progress=False, strategy="two_view")  # two-view poses keep the prior as is
    assert torch.allclose(s.cameras.K[:, 0, 0], torch.full((2,), 30 / 36 * 512, dtype=torch.float64), atol=1e-6)


def test_focal_needs_one_camera(tmp_path):
    for i, size in enumerate([(40, 30), (30, 40)]):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match="focal"):
        load_scene(tmp_path, progress=False, focal=100.0)
