"""Scene readers: every format built here from the same synthetic cameras must read back identically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.scene_io import detect_format, load_image, load_scene, resize_scene
from diff3r_cli.scene_io.scene import Scene
from diff3r_cli.scene_io.undistort import source_pixels

W, H = 48, 32  # non-square on purpose
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- fixtures

def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation in float64 (independent of the package)."""
    a = axis / np.linalg.norm(axis)
    S = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * S + (1 - math.cos(angle)) * S @ S


def synthetic_cameras(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n cameras with varied rotations and off-centre principal points: (K (n,3,3), w2c (n,4,4))."""
    Ks, w2cs = [], []
    for i in range(n):
        K = np.array([[40.0 + 3 * i, 0, 20.25 + i], [0, 42.5 + 2 * i, 13.5 + 0.75 * i], [0, 0, 1]])
        R = rotation(np.array([0.3 + i, 1.0, -0.5 * i]), 0.2 + 0.35 * i)
        t = np.array([0.1 * i, -0.2, 3.0 + 0.5 * i])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, t
        Ks.append(K)
        w2cs.append(w2c)
    return np.stack(Ks), np.stack(w2cs)


def pattern(seed: int, w: int = W, h: int = H) -> np.ndarray:
    """Smooth colour pattern (survives JPEG in the RE10K chunk), different per seed."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.arange(w) / w, np.arange(h) / h)
    f, ph = rng.uniform(0.5, 2.0, (3, 2)), rng.uniform(0, 6.28, 3)
    img = [0.5 + 0.4 * np.sin(2 * np.pi * (f[c, 0] * u + f[c, 1] * v) + ph[c]) for c in range(3)]
    return (np.stack(img, -1) * 255).round().astype(np.uint8)


def blob(w: int, h: int, centre: tuple[float, float], sigma: float = 1.5) -> np.ndarray:
    """A Gaussian spot centred at a continuous pixel position (pixel-edge convention)."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    g = np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(g[..., None], 3, axis=2)


def centroid(img: torch.Tensor, floor: float = 0.05) -> tuple[float, float]:
    """Intensity centroid of the part of a spot above ``floor`` x its peak."""
    g = img[..., 0].double()
    g = torch.clamp(g - floor * g.max(), min=0)
    h, w = g.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    return float((g * u).sum() / g.sum()), float((g * v).sum() / g.sum())


def write_colmap(root: Path, Ks, w2cs, names, binary: bool, model="PINHOLE", extra=(), sizes=None) -> Path:
    rec = pycolmap.Reconstruction()
    for i, (K, w2c, name) in enumerate(zip(Ks, w2cs, names)):
        w, h = sizes[i] if sizes else (W, H)
        if model == "PINHOLE":
            params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        elif model == "SIMPLE_PINHOLE":
            params = [K[0, 0], K[0, 2], K[1, 2]]
        else:
            params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *extra]
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=w, height=h, params=params,
                                                        camera_id=i + 1))
        im = pycolmap.Image(name=name, camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(w2c[:3, :4]))
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (rec.write_binary if binary else rec.write_text)(str(model_dir))
    return model_dir


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The same cameras written as COLMAP text, COLMAP binary, transforms.json and an RE10K chunk."""
    base = tmp_path_factory.mktemp("synth")
    Ks, w2cs = synthetic_cameras(4)
    names = [f"img_{i:02d}.png" for i in range(4)]
    out = {"K": Ks, "w2c": w2cs}
    for kind in ("colmap_txt", "colmap_bin", "transforms"):
        root = base / kind
        (root / "images").mkdir(parents=True)
        for i, n in enumerate(names):
            Image.fromarray(pattern(i)).save(root / "images" / n)
        out[kind] = root
    write_colmap(out["colmap_txt"], Ks, w2cs, names, binary=False)
    write_colmap(out["colmap_bin"], Ks, w2cs, names, binary=True)
    # transforms.json: OpenGL camera-to-world; per-frame intrinsics override a top-level default;
    # file_path without extension for half the frames (Blender style).
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = []
    for i, (K, w2c) in enumerate(zip(Ks, w2cs)):
        c2w_gl = np.linalg.inv(w2c) @ gl
        fp = f"images/{names[i]}" if i % 2 == 0 else f"./images/{names[i][:-4]}"
        frames.append({"file_path": fp, "transform_matrix": c2w_gl.tolist(), "fl_x": K[0, 0], "fl_y": K[1, 1],
                       "cx": K[0, 2], "cy": K[1, 2]})
    meta = {"camera_angle_x": 1.0, "w": W, "h": H, "frames": frames}
    (out["transforms"] / "transforms.json").write_text(json.dumps(meta))
    # RE10K chunk in the pixelSplat/MVSplat layout.
    re = base / "re10k"
    cams = np.zeros((4, 18), dtype=np.float32)
    cams[:, 0], cams[:, 1] = Ks[:, 0, 0] / W, Ks[:, 1, 1] / H
    cams[:, 2], cams[:, 3] = Ks[:, 0, 2] / W, Ks[:, 1, 2] / H
    cams[:, 6:] = w2cs[:, :3, :4].reshape(4, 12)
    jpegs = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(pattern(i)).save(buf, format="JPEG", quality=95)
        jpegs.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    chunk = [{"key": "synthkey", "url": "", "timestamps": torch.arange(4, dtype=torch.int64),
              "cameras": torch.from_numpy(cams), "images": jpegs}]
    for split in ("train", "test"):
        (re / split).mkdir(parents=True)
        torch.save(chunk, re / split / "000000.torch")
        (re / split / "index.json").write_text(json.dumps({"synthkey": "000000.torch"}))
    out["re10k"] = re
    return out


# ----------------------------------------------------------------------------- images

def test_load_image_modes(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png")
    assert a.shape == (4, 6, 3) and a.dtype == torch.float32
    assert torch.allclose(a[0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(a[0, 5], torch.tensor([1.0, 1, 1]))  # composited over white
    Image.fromarray(np.full((5, 7), 128, np.uint8), "L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (5, 7, 3) and torch.allclose(g, torch.full_like(g, 128 / 255))
    # EXIF orientation 6: stored 8 wide x 4 high, displayed rotated 90 degrees clockwise.
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[0, 0] = 255  # top-left stored pixel ends up at the top-right after the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    r = load_image(tmp_path / "r.png")
    assert r.shape == (8, 4, 3)
    assert r[0, 3, 0] == 1.0 and r[..., 0].sum() == 1.0
    assert load_image(tmp_path / "r.png", exif=False).shape == (4, 8, 3)


def test_load_image_corrupt_and_missing(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(UserError) as e:
        load_image(tmp_path / "bad.jpg")
    assert "bad.jpg" in str(e.value)
    with pytest.raises(UserError) as e:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)


def _scene_with_point() -> tuple[Scene, torch.Tensor]:
    Ks, w2cs = synthetic_cameras(3)
    cams = Cameras(torch.from_numpy(Ks), torch.from_numpy(w2cs), W, H)
    X = torch.tensor([[0.1, -0.05, 0.2]], dtype=torch.float64)
    uv, z = cams.project(X)
    assert (z > 0).all()
    imgs = torch.stack([torch.from_numpy(blob(W, H, tuple(uv[c, 0].tolist()))).float() for c in range(3)])
    return Scene(imgs, cams, ["a", "b", "c"], "test"), X


@pytest.mark.parametrize("mode,size", [("resize", (36, 40)), ("resize_crop", (40, 40)), ("resize_crop", (96, 48))])
def test_resize_scene_point_stays_put(mode, size):
    scene, X = _scene_with_point()
    out = resize_scene(scene, *size, mode=mode)
    assert out.images.shape == (3, size[1], size[0], 3) and (out.width, out.height) == size
    uv0, _ = scene.cameras.project(X)
    uv1, _ = out.cameras.project(X)
    if mode == "resize":  # same relative position in the image
        rel0 = uv0[:, 0] / torch.tensor([W, H])
        rel1 = uv1[:, 0] / torch.tensor(size)
        assert torch.allclose(rel0, rel1, atol=1e-9)
    else:  # scale about the corner, then shift by the crop offset (independent arithmetic)
        s = max(size[0] / W, size[1] / H)
        sw, sh = max(size[0], round(W * s)), max(size[1], round(H * s))
        off = torch.tensor([(sw - size[0]) // 2, (sh - size[1]) // 2], dtype=torch.float64)
        expect = uv0[:, 0] * torch.tensor([sw / W, sh / H]) - off
        assert torch.allclose(uv1[:, 0], expect, atol=1e-9)
    # the pixels moved with the intrinsics: the spot sits where the new camera projects the point
    for c in range(3):
        cu, cv = centroid(out.images[c])
        assert abs(cu - uv1[c, 0, 0]) < 0.15 and abs(cv - uv1[c, 0, 1]) < 0.15, (c, cu, cv, uv1[c, 0])


# ----------------------------------------------------------------------------- readers agree

@pytest.mark.parametrize("kind", ["colmap_txt", "colmap_bin", "transforms", "re10k"])
def test_readers_agree(synth, kind):
    root = synth[kind]
    assert detect_format(root) == {"colmap_txt": "colmap", "colmap_bin": "colmap"}.get(kind, kind)
    scene = load_scene(root)
    assert len(scene) == 4 and (scene.width, scene.height) == (W, H)
    assert scene.images.shape == (4, H, W, 3) and scene.images.dtype == torch.float32
    assert torch.allclose(scene.cameras.K.double(), torch.from_numpy(synth["K"]), atol=1e-5)
    assert torch.allclose(scene.cameras.w2c.double(), torch.from_numpy(synth["w2c"]), atol=1e-5)
    tol = 0.03 if kind == "re10k" else 1e-6  # JPEG in RE10K chunks
    assert (scene.images[1] - torch.from_numpy(pattern(1)).float() / 255).abs().mean() < tol
    sub = load_scene(root, views=[2, 0], progress=False)  # progress is accepted (and ignored) by every format
    assert torch.allclose(sub.cameras.w2c.double(), torch.from_numpy(synth["w2c"][[2, 0]]), atol=1e-5)


def test_colmap_model_dir_and_simple_pinhole(tmp_path):
    Ks, w2cs = synthetic_cameras(3)
    Ks[:, 1, 1] = Ks[:, 0, 0]
    names = [f"{i}.png" for i in range(3)]
    (tmp_path / "images").mkdir()
    for i, n in enumerate(names):
        Image.fromarray(pattern(i)).save(tmp_path / "images" / n)
    model = write_colmap(tmp_path, Ks, w2cs, names, binary=True, model="SIMPLE_PINHOLE")
    s = load_scene(model)  # the sparse/0 folder itself
    assert torch.allclose(s.cameras.K, torch.from_numpy(Ks), atol=1e-9)
    assert not s.extras["undistorted"]


def test_colmap_explicit_images_dir_and_downscaled_copy(tmp_path, synth):
    """Images elsewhere (images_dir) and stored at half size (LLFF images_2 style): K scales with them."""
    model = synth["colmap_txt"] / "sparse" / "0"
    half = tmp_path / "images_2"
    half.mkdir()
    for p in sorted((synth["colmap_txt"] / "images").iterdir()):
        Image.open(p).resize((W // 2, H // 2), Image.BILINEAR).save(half / p.name)
    s = load_scene(model, images_dir=half)
    assert (s.width, s.height) == (W // 2, H // 2)
    K = torch.from_numpy(synth["K"]).clone()
    K[:, :2] *= 0.5  # pixel-edge convention: fx, fy, cx, cy all halve
    assert torch.allclose(s.cameras.K, K, atol=1e-9)
    assert torch.allclose(s.cameras.w2c, torch.from_numpy(synth["w2c"]), atol=1e-9)


def test_resolution_option_reads_resized(synth):
    s = load_scene(synth["colmap_bin"], resolution=(24, 24))
    full = load_scene(synth["colmap_bin"])
    ref = resize_scene(full, 24, 24)
    assert s.images.shape == (4, 24, 24, 3)
    assert torch.allclose(s.cameras.K, ref.cameras.K) and torch.allclose(s.images, ref.images)


def test_blender_style_transforms(tmp_path):
    """NeRF-synthetic layout: transforms_train.json, camera_angle_x only, RGBA images, no extension."""
    Ks, w2cs = synthetic_cameras(2)
    (tmp_path / "train").mkdir()
    for i in range(2):
        rgba = np.zeros((H, W, 4), np.uint8)
        rgba[: H // 2, :, :3] = 50
        rgba[: H // 2, :, 3] = 255  # top half opaque grey, bottom half transparent
        Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / f"r_{i}.png")
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [{"file_path": f"./train/r_{i}", "rotation": 0.0, "transform_matrix": (np.linalg.inv(w2cs[i]) @ gl).tolist()}
              for i in range(2)]
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    assert detect_format(tmp_path) == "transforms"
    s = load_scene(tmp_path)
    f = 0.5 * W / math.tan(0.4)
    assert torch.allclose(s.cameras.K[0], torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64))
    assert torch.allclose(s.cameras.w2c, torch.from_numpy(w2cs), atol=1e-9)
    assert torch.allclose(s.images[:, -1], torch.ones(2, W, 3)) and torch.allclose(s.images[:, 0], torch.full((2, W, 3), 50 / 255))


def test_transforms_intrinsics_precedence(tmp_path):
    from diff3r_cli.scene_io.transforms import frame_intrinsics
    j = tmp_path / "transforms.json"
    meta = {"fl_x": 100.0, "w": 200, "h": 100}
    K, _, _ = frame_intrinsics(meta, {"camera_angle_x": 2 * math.atan(0.5)}, 200, 100, j)
    assert K[0, 0] == pytest.approx(200.0) and K[1, 1] == pytest.approx(200.0)  # the frame's angle wins
    K, _, _ = frame_intrinsics(meta, {"fl_y": 90.0, "cx": 101.0}, 200, 100, j)
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (100.0, 90.0, 101.0, 50.0)
    K, _, _ = frame_intrinsics({"camera_angle_x": 2 * math.atan(1.0), "camera_angle_y": 2 * math.atan(0.25)},
                               {}, 200, 100, j)
    assert K[0, 0] == pytest.approx(100.0) and K[1, 1] == pytest.approx(200.0)
    K, _, _ = frame_intrinsics(meta, {}, 100, 50, j)  # images stored at half the size the file states
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (50.0, 50.0, 50.0, 25.0)
    with pytest.raises(UserError, match="says 200x100"):
        frame_intrinsics(meta, {}, 100, 80, j)


# ----------------------------------------------------------------------------- distortion

def opencv_distort(x: np.ndarray, y: np.ndarray, k1, k2, p1, p2):
    """OpenCV radial-tangential model in float64, written out independently."""
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 * r2
    return (x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


DIST = (-0.8, 0.3, 0.01, -0.008)  # strong barrel distortion: shifts of several pixels


DW, DH = 2 * W, 2 * H


def _distorted_fixture(root: Path, fmt: str):
    """Two views whose images show a spot where a distorted camera sees a known point."""
    Ks, w2cs = synthetic_cameras(2)
    Ks[:, :2] *= 2  # the same cameras on images of twice the size, so the spots stay clear of the border
    normalized = [(0.4, 0.15), (-0.35, -0.1)]  # where each camera sees its point, away from the centre
    names = ["d0.png", "d1.png"]
    (root / "images").mkdir(parents=True)
    expected = []
    for i in range(2):
        x, y = normalized[i]
        xd, yd = opencv_distort(x, y, *DIST)
        K = Ks[i]
        pd = (K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2])
        pu = (K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2])
        assert math.dist(pd, pu) > 1.0  # the distortion is visible
        assert all(8 < p[0] < DW - 8 and 8 < p[1] < DH - 8 for p in (pd, pu))
        Image.fromarray((blob(DW, DH, pd) * 255).round().astype(np.uint8)).save(root / "images" / names[i])
        expected.append(pu)
    if fmt == "colmap":
        write_colmap(root, Ks, w2cs, names, binary=False, model="OPENCV", extra=DIST,
                     sizes=[(DW, DH)] * 2)
    else:
        gl = np.diag([1.0, -1.0, -1.0, 1.0])
        frames = [{"file_path": f"images/{n}", "transform_matrix": (np.linalg.inv(w) @ gl).tolist(),
                   "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
                  for n, K, w in zip(names, Ks, w2cs)]
        meta = dict(zip(("k1", "k2", "p1", "p2"), DIST), w=DW, h=DH, frames=frames)
        (root / "transforms.json").write_text(json.dumps(meta))
    return Ks, w2cs, expected


@pytest.mark.parametrize("fmt", ["colmap", "transforms"])
def test_undistortion_moves_point_to_pinhole_projection(tmp_path, fmt):
    Ks, w2cs, expected = _distorted_fixture(tmp_path, fmt)
    s = load_scene(tmp_path)
    assert s.extras["undistorted"] and s.extras["valid_mask"].shape == (2, DH, DW)
    assert torch.allclose(s.cameras.K, torch.from_numpy(Ks), atol=1e-9)
    assert torch.allclose(s.cameras.w2c, torch.from_numpy(w2cs), atol=1e-9)
    for i in range(2):
        # only the spot's core: the warp's magnification varies across the spot and skews its tails
        cu, cv = centroid(s.images[i], floor=0.6)
        assert abs(cu - expected[i][0]) < 0.15 and abs(cv - expected[i][1]) < 0.15, (i, cu, cv, expected[i])


def test_undistortion_map_matches_formula():
    K = torch.tensor([[40.0, 0, 22.0], [0, 41.0, 15.0], [0, 0, 1]], dtype=torch.float64)
    cam = pycolmap.Camera(model="OPENCV", width=W, height=H, params=[40.0, 41.0, 22.0, 15.0, *DIST])
    src = source_pixels(cam, K, W, H)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    xd, yd = opencv_distort((u - 22.0) / 40.0, (v - 15.0) / 41.0, *DIST)
    assert np.allclose(src[..., 0], 40.0 * xd + 22.0, atol=1e-9)
    assert np.allclose(src[..., 1], 41.0 * yd + 15.0, atol=1e-9)


# ----------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (DATA / "fox" / "transforms.json").is_file(), reason="shared fox data absent")
def test_fox_transforms():
    s = load_scene(DATA / "fox", views=[0, 1, 2])
    assert s.images.shape == (3, 480, 270, 3)
    assert s.extras["undistorted"]
    assert abs(float(s.cameras.K[0, 0, 0]) - 343.88) < 1e-6
    # adjacent fox frames are close: centres within a fraction of the scene scale
    c = s.cameras.centers
    assert float((c[0] - c[1]).norm()) < 0.5 * float(c[0].norm())
    small = resize_scene(s, 135, 200)
    assert small.images.shape == (3, 200, 135, 3) and small.extras["valid_mask"].shape == (3, 200, 135)
    assert small.extras["valid_mask"].float().mean() > 0.95


# ----------------------------------------------------------------------------- bad input

def test_detect_format_and_missing_path(tmp_path):
    with pytest.raises(UserError) as e:
        load_scene(tmp_path / "does_not_exist")
    assert "does_not_exist" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        detect_format(tmp_path / "empty")
    (tmp_path / "s.ply").write_bytes(b"ply\n")
    assert detect_format(tmp_path / "s.ply") == "ply"
    with pytest.raises(UserError):
        load_scene(tmp_path / "s.ply")
    (tmp_path / "f").mkdir()
    Image.fromarray(pattern(0)).save(tmp_path / "f" / "a.jpg")
    assert detect_format(tmp_path / "f") == "folder"


def test_fewer_than_two_views(synth):
    with pytest.raises(UserError, match="at least 2"):
        load_scene(synth["colmap_txt"], views=[1])
    with pytest.raises(UserError, match="out of range"):
        load_scene(synth["transforms"], views=[0, 9])


def test_missing_images_named_by_poses(tmp_path):
    Ks, w2cs = synthetic_cameras(3)
    names = ["a.png", "b.png", "c.png"]
    (tmp_path / "images").mkdir()
    for i, n in enumerate(names[:2]):
        Image.fromarray(pattern(i)).save(tmp_path / "images" / n)
    write_colmap(tmp_path, Ks, w2cs, names, binary=True)
    with pytest.raises(UserError) as e:
        load_scene(tmp_path)
    assert "c.png" in str(e.value)
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [{"file_path": f"images/{n}", "transform_matrix": (np.linalg.inv(w) @ gl).tolist()}
              for n, w in zip(names, w2cs)]
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.9, "frames": frames}))
    with pytest.raises(UserError) as e:
        load_scene(tmp_path / "transforms.json")
    assert "c.png" in str(e.value)


def test_mixed_sizes_need_resolution(tmp_path):
    Ks, w2cs = synthetic_cameras(2)
    names = ["a.png", "b.png"]
    sizes = [(W, H), (2 * W, 2 * H + 2)]
    (tmp_path / "images").mkdir()
    for i, n in enumerate(names):
        Image.fromarray(pattern(i, *sizes[i])).save(tmp_path / "images" / n)
    write_colmap(tmp_path, Ks, w2cs, names, binary=False, sizes=sizes)
    with pytest.raises(UserError, match="different sizes"):
        load_scene(tmp_path)
    s = load_scene(tmp_path, resolution=(W, H))
    assert s.images.shape == (2, H, W, 3)
    assert torch.allclose(s.cameras.K[0], torch.from_numpy(Ks[0]))  # already at the target size


def test_unsupported_camera_model(tmp_path):
    Ks, w2cs = synthetic_cameras(2)
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(pattern(i)).save(tmp_path / "images" / f"{i}.png")
    rec = pycolmap.Reconstruction()
    for i in range(2):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="EQUIRECTANGULAR", width=W, height=H,
                                                        params=[W / 2, H / 2], camera_id=i + 1))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{i}.png", camera_id=i + 1, image_id=i + 1),
                                         pycolmap.Rigid3d(w2cs[i][:3, :4]))
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write_text(str(tmp_path / "sparse" / "0"))
    with pytest.raises(UserError, match="unsupported camera model EQUIRECTANGULAR"):
        load_scene(tmp_path)


def test_bad_transforms_files(tmp_path):
    (tmp_path / "transforms.json").write_text("{ not json")
    with pytest.raises(UserError, match="invalid JSON"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(UserError, match="frames"):
        load_scene(tmp_path)
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(pattern(i)).save(tmp_path / "images" / f"{i}.png")
    frames = [{"file_path": f"images/{i}.png", "transform_matrix": np.eye(4).tolist()} for i in range(2)]
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(UserError, match="focal"):
        load_scene(tmp_path)
