"""Photo sets as people take them (issue 23): mixed sizes and orientations, and folders that SfM
can only partly pose. SfM itself is replaced by a stub here (fast); test_sfm.py runs the real one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diff3r_cli.cameras import Cameras
from diff3r_cli.cli import app
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io import folder as folder_mod
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import crop_fraction, plan_frame, quarter_turn


def test_plan_follows_the_majority_not_the_first_photo():
    # the first photo is portrait, the majority landscape (sacre_coeur's kind of set)
    sizes = [(470, 640), (640, 412), (640, 416), (640, 425), (640, 416), (480, 640), (640, 480)]
    plan = plan_frame(sizes)
    assert plan.width > plan.height
    assert plan.turned == [True, False, False, False, False, True, False]
    assert (plan.width, plan.height) == (640, 425)  # the median aspect ratio of the 7 photos
    oriented = [(h, w) if t else (w, h) for (w, h), t in zip(sizes, plan.turned)]
    assert crop_fraction(oriented, plan.width, plan.height) < 0.15  # nobody loses half the frame
    assert "turned" in plan.line and "\n" not in plan.line


def test_plan_majority_size_and_one_orientation_never_turns():
    plan = plan_frame([(512, 384), (384, 288), (512, 384)])
    assert (plan.width, plan.height) == (512, 384) and not any(plan.turned)
    plan = plan_frame([(300, 400), (300, 400), (400, 300)])
    assert (plan.width, plan.height) == (300, 400) and plan.turned == [False, False, True]
    # an explicit size of the other orientation does not turn a set of one orientation
    assert not any(plan_frame([(400, 300), (400, 300)], target=(128, 256)).turned)


def test_quarter_turn_is_exact():
    gen = torch.Generator().manual_seed(0)
    W, H = 40, 30
    K = torch.tensor([[50.0, 0, 21.3], [0, 47.0, 14.2], [0, 0, 1]], dtype=torch.float64)
    ang = 0.3
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = torch.tensor([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    w2c[:3, 3] = torch.tensor([0.1, -0.2, 0.5])
    img = torch.rand(H, W, 3, generator=gen)
    img2, K2, w2c2 = quarter_turn(img, K, w2c)
    assert img2.shape == (W, H, 3)
    pts = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, 3.0], dtype=torch.float64)
    uv, z = Cameras(K[None], w2c[None], W, H).project(pts)
    uv2, z2 = Cameras(K2[None], w2c2[None], H, W).project(pts)
    assert torch.allclose(z, z2)
    assert torch.allclose(uv2[0, :, 0], uv[0, :, 1]) and torch.allclose(uv2[0, :, 1], W - uv[0, :, 0])
    # pixel (row i, col j) of the turned image is the old pixel whose centre maps there
    for i, j in [(0, 0), (5, 7), (W - 1, H - 1)]:
        u_new, v_new = j + 0.5, i + 0.5
        u_old, v_old = W - v_new, u_new
        assert torch.equal(img2[i, j], img[int(v_old), int(u_old)])


def _photo_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"{k:02d}.png")
    return root


def _fake_sfm(posed: list[int]):
    """run_sfm stand-in: the given images posed (pinhole, along x), the others dropped."""
    import pycolmap

    def run(paths, **kw):
        from diff3r_cli.scene_io.images import load_image

        images = [load_image(p) for p in paths]
        names = [f"{i:04d}_{p.stem}.png" for i, p in enumerate(paths)]
        w2c, cams = {}, {}
        for i in posed:
            h, w = images[i].shape[:2]
            w2c[names[i]] = torch.eye(4, dtype=torch.float64)
            w2c[names[i]][0, 3] = -0.1 * i
            cams[names[i]] = pycolmap.Camera(model="PINHOLE", width=w, height=h, params=[w, w, w / 2, h / 2])
        return dict(images=images, names=names, num_images=len(paths), loose_init=False, fallback=None, match_attempts=1, w2c=w2c,
                    cameras=cams, reprojection_error=0.5, num_registered=len(posed), seconds=0.0,
                    dropped=[nm for i, nm in enumerate(names) if i not in posed])
    return run


def test_folder_of_mixed_orientations_uses_the_majority_frame(tmp_path, monkeypatch, caplog):
    root = _photo_folder(tmp_path / "mix", [(48, 64), (64, 40), (64, 42), (64, 44)])
    monkeypatch.setattr(folder_mod, "run_sfm", _fake_sfm([0, 1, 2, 3]))
    with caplog.at_level(logging.WARNING, logger="diff3r_cli.scene_io.folder"):
        s = load_scene(root, progress=False)
    assert (s.width, s.height) == (64, 44)  # median aspect ratio, not the first (portrait) photo
    assert s.extras["turned"] == [str(root / "00.png")]
    notes = [r.getMessage() for r in caplog.records if "working size" in r.getMessage()]
    assert len(notes) == 1 and "turned a quarter turn" in notes[0]


def test_fewer_than_three_posed_is_a_clear_error(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "few", [(32, 24)] * 5)
    monkeypatch.setattr(folder_mod, "run_sfm", _fake_sfm([1, 3]))
    with pytest.raises(UserError, match="posed only 2 of 5") as e:
        load_scene(root, progress=False)
    assert "overlap" in str(e.value) and "--views" in str(e.value)
    res = CliRunner().invoke(app, ["reconstruct", str(root), "--out", str(tmp_path / "x.ply")])
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "posed only 2 of 5" in err and "Traceback" not in res.stderr


def test_dropped_photos_line_says_what_helps(tmp_path, monkeypatch, caplog):
    root = _photo_folder(tmp_path / "some", [(32, 24)] * 4)
    monkeypatch.setattr(folder_mod, "run_sfm", _fake_sfm([0, 1, 2]))
    with caplog.at_level(logging.WARNING, logger="diff3r_cli.scene_io.folder"):
        s = load_scene(root, progress=False)
    assert len(s) == 3
    line = next(r.getMessage() for r in caplog.records if "could not pose" in r.getMessage())
    assert "03.png" in line and "overlap" in line and "--views" in line
