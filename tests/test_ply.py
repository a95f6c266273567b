"""Tests for diff3r_cli.ply and diff3r_cli.sidecar.

The .ply file is also decoded independently, with plain plyfile and by property name, the
way a splat viewer does it, so a layout mistake in both writer and reader cannot cancel out.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.fsio import atomic_output
from diff3r_cli.ply import read_ply, write_ply
from diff3r_cli.sidecar import (cameras_from_sidecar, read_sidecar, resolve_images, scene_info, sidecar_path,
                                write_sidecar, write_splat)


def make_gaussians(n: int, degree: int, seed: int = 0, dtype=torch.float32) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=gen, dtype=dtype) * 3,
        log_scales=torch.randn(n, 3, generator=gen, dtype=dtype) - 3,
        quats=torch.randn(n, 4, generator=gen, dtype=dtype),
        opacity_logits=torch.randn(n, generator=gen, dtype=dtype) * 2,
        sh=torch.randn(n, k, 3, generator=gen, dtype=dtype),
    )


def no_strays(folder: Path, keep: set[str]) -> bool:
    return {p.name for p in folder.iterdir()} == keep


def expected_header_names(degree: int) -> list[str]:
    """The reference 3DGS exporter's property order, spelled out independently of ply.py."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += ["f_rest_%d" % i for i in range(3 * ((degree + 1) ** 2 - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def header_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    end = raw.index(b"end_header\n")
    return raw[:end].decode("ascii").splitlines()


# --- round trip --------------------------------------------------------------------------

def unit(q: torch.Tensor) -> torch.Tensor:
    q = q.to(torch.float64)
    return (q / q.norm(dim=1, keepdim=True)).to(torch.float32)


@pytest.mark.parametrize("layout", ["viewer", "compact"])
@pytest.mark.parametrize("degree", [0, 1, 3])
@pytest.mark.parametrize("with_lam", [False, True])
def test_round_trip_exact(tmp_path, degree, with_lam, layout):
    g = make_gaussians(37, degree, seed=degree)
    lam = torch.rand(37, 5, generator=torch.Generator().manual_seed(5)) * 100 if with_lam else None
    p = write_ply(tmp_path / "scene.ply", g, lam, layout=layout)
    g2, lam2 = read_ply(p)
    assert g2.sh_degree == degree and g2.num == 37  # the viewer layout's zero padding is dropped again
    g = Gaussians(g.means, g.log_scales, unit(g.quats), g.opacity_logits, g.sh)  # exported normalised
    for a, b in zip(g.tensors(), g2.tensors()):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b)  # bit-exact, float32 in and out
    if with_lam:
        assert torch.equal(lam, lam2)
    else:
        assert lam2 is None
    assert no_strays(tmp_path, {"scene.ply"})


def test_round_trip_float64_input_is_float32_rounding(tmp_path):
    g = make_gaussians(9, 2, dtype=torch.float64)
    g2, _ = read_ply(write_ply(tmp_path / "a.ply", g))
    g = Gaussians(g.means, g.log_scales, unit(g.quats), g.opacity_logits, g.sh)
    for a, b in zip(g.tensors(), g2.tensors()):
        assert torch.equal(a.to(torch.float32), b)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_viewer_layout_is_what_every_loader_reads(tmp_path, degree):
    """Default layout vs the loaders' requirements (read in their sources):
    - SIBR (the 3DGS paper's viewer) skips to end_header and reads N fixed structs of 62 floats
      (pos, normal, 48 SH, opacity, 3 scales, 4 rot): the vertex element must be exactly that;
    - name-based loaders (GaussianSplats3D, SuperSplat, plyfile tools) need x..rot_3 + f_dc in
      the vertex element and stop at / skip other elements;
    - rotations come out normalised."""
    n = 13
    g = make_gaussians(n, degree, seed=3)
    lam = torch.rand(n, 5) + 0.5
    p = write_ply(tmp_path / "s.ply", g, lam)
    lines = header_lines(p)
    vi = lines.index(f"element vertex {n}")
    assert lines[2:vi] == ["comment written by diff3r", f"comment diff3r sh_degree {degree}"]
    vprops = []
    for ln in lines[vi + 1:]:
        if not ln.startswith("property"):
            break
        vprops.append(ln.split())
    assert [nm for _, _, nm in vprops] == expected_header_names(3) and all(t == "float" for _, t, _ in vprops)
    assert lines[vi + 1 + 62] == f"element diff3r_extra {n}"  # Λ only after the whole vertex block
    # SIBR-style fixed-struct read of the bytes after the header
    raw = p.read_bytes()
    start = raw.index(b"end_header\n") + len(b"end_header\n")
    rich = np.frombuffer(raw[start:start + n * 62 * 4], dtype="<f4").reshape(n, 62)
    np.testing.assert_array_equal(rich[:, 0:3], g.means.numpy())
    np.testing.assert_array_equal(rich[:, 3:6], 0)
    np.testing.assert_array_equal(rich[:, 6:9], g.sh[:, 0].numpy())
    k = (degree + 1) ** 2
    rest = rich[:, 9:54].reshape(n, 3, 15)  # channel-major, 15 coefficients per channel at degree 3
    np.testing.assert_array_equal(rest[:, :, :k - 1], g.sh[:, 1:].permute(0, 2, 1).numpy())
    np.testing.assert_array_equal(rest[:, :, k - 1:], 0)  # the padding adds no colour
    np.testing.assert_array_equal(rich[:, 54], g.opacity_logits.numpy())
    np.testing.assert_array_equal(rich[:, 55:58], g.log_scales.numpy())
    np.testing.assert_allclose(np.linalg.norm(rich[:, 58:62], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(rich[:, 58:62], unit(g.quats).numpy(), atol=0)
    # plyfile (by name) sees both elements
    ply = PlyData.read(str(p))
    np.testing.assert_array_equal(ply["diff3r_extra"]["lambda_color"], lam[:, 4].numpy())
    assert p.stat().st_size == start + n * (62 + 5) * 4


def test_compact_layout_header_order(tmp_path):
    n, degree = 11, 3
    g = make_gaussians(n, degree)
    lam = torch.rand(n, 5)
    p = write_ply(tmp_path / "s.ply", g, lam, extra={"confidence": torch.arange(n, dtype=torch.float32)},
                  layout="compact")
    lines = header_lines(p)
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    assert f"element vertex {n}" in lines
    props = [ln.split() for ln in lines if ln.startswith("property")]
    assert all(t == "float" for _, t, _ in props)  # float32 everywhere
    names = [nm for _, _, nm in props]
    std = expected_header_names(degree)
    assert len(std) == 62
    assert names[: len(std)] == std  # standard layout first, in exactly this order
    assert names[len(std):] == ["lambda_mean", "lambda_scale", "lambda_rotation", "lambda_opacity",
                                "lambda_color", "confidence"]
    header_len = p.read_bytes().index(b"end_header\n") + len(b"end_header\n")
    assert p.stat().st_size == header_len + n * len(names) * 4


def test_independent_viewer_style_decode(tmp_path):
    """Decode with plyfile by property name as a viewer does, against known physical values."""
    n, degree = 6, 3
    k = (degree + 1) ** 2
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.4, 0.6], [0.5, 0.5, 0.5], [0.9, 0.1, 0.3]])
    sizes = torch.tensor([[0.01, 0.02, 0.03], [0.1, 0.1, 0.1], [1.0, 0.5, 0.25],
                          [0.3, 0.2, 0.1], [2.0, 2.0, 0.001], [0.05, 0.06, 0.07]])
    alphas = torch.tensor([0.1, 0.5, 0.9, 0.99, 0.01, 0.7])
    angle = torch.linspace(0.1, 2.5, n)  # rotation about z by angle
    quats = torch.stack([torch.cos(angle / 2), torch.zeros(n), torch.zeros(n), torch.sin(angle / 2)], 1) * 3.0
    sh = torch.zeros(n, k, 3)
    sh[:, 0] = (rgb - 0.5) / 0.28209479177387814
    # distinct marker values for every higher-order coefficient: 1000*channel + index
    for c in range(3):
        for j in range(1, k):
            sh[:, j, c] = 1000 * c + j
    g = Gaussians(torch.randn(n, 3), sizes.log(), quats, torch.log(alphas / (1 - alphas)), sh)
    p = write_ply(tmp_path / "v.ply", g, torch.full((n, 5), 7.0))

    ply = PlyData.read(str(p))
    v = ply["vertex"]
    dc = np.stack([v["f_dc_0"], v["f_dc_1"], v["f_dc_2"]], 1).astype(np.float64)
    np.testing.assert_allclose(0.5 + 0.28209479177387814 * dc, rgb.numpy(), atol=1e-6)
    scl = np.exp(np.stack([v["scale_0"], v["scale_1"], v["scale_2"]], 1).astype(np.float64))
    np.testing.assert_allclose(scl, sizes.numpy(), rtol=1e-6)
    op = 1.0 / (1.0 + np.exp(-v["opacity"].astype(np.float64)))
    np.testing.assert_allclose(op, alphas.numpy(), rtol=1e-5)
    q = np.stack([v["rot_0"], v["rot_1"], v["rot_2"], v["rot_3"]], 1).astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(2 * np.arctan2(q[:, 3], q[:, 0]), angle.numpy(), atol=1e-6)  # w first
    for c in range(3):  # channel-major f_rest: index c*(K-1) + (j-1)
        for j in range(1, k):
            assert np.all(v[f"f_rest_{c * (k - 1) + j - 1}"] == 1000 * c + j)
    np.testing.assert_array_equal(v["nx"], 0)
    np.testing.assert_array_equal(ply["diff3r_extra"]["lambda_color"], 7.0)


def test_reads_foreign_3dgs_file(tmp_path):
    """A file as another tool might write it: double precision, other order, extra props."""
    n = 4
    rng = np.random.default_rng(0)
    names = (["x", "y", "z", "red", "green", "blue"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(9)] + ["rot_0", "rot_1", "rot_2", "rot_3",
                                                    "scale_0", "scale_1", "scale_2", "opacity"])
    arr = np.empty(n, dtype=[(nm, "f8" if nm not in ("red", "green", "blue") else "u1") for nm in names])
    vals = {nm: (rng.integers(0, 255, n) if nm in ("red", "green", "blue") else rng.normal(size=n)) for nm in names}
    for nm in names:
        arr[nm] = vals[nm]
    p = tmp_path / "foreign.ply"
    PlyData([PlyElement.describe(arr, "vertex")], byte_order=">").write(str(p))
    g, lam, extra = read_ply(p, with_extra=True)
    assert lam is None and g.sh_degree == 1 and set(extra) == {"red", "green", "blue"}
    f32 = lambda nm: torch.tensor(vals[nm], dtype=torch.float32)  # noqa: E731
    assert torch.equal(g.means[:, 1], f32("y"))
    assert torch.equal(g.quats[:, 0], f32("rot_0"))
    assert torch.equal(g.opacity_logits, f32("opacity"))
    assert torch.equal(g.sh[:, 2, 1], f32("f_rest_4"))  # G channel (block 1 of 3), coefficient 2 -> index 3+1


def test_extra_columns_round_trip(tmp_path):
    g = make_gaussians(5, 0)
    p = write_ply(tmp_path / "e.ply", g, extra={"score": np.linspace(0, 1, 5)})
    _, _, extra = read_ply(p, with_extra=True)
    assert set(extra) == {"score"}
    assert torch.equal(extra["score"], torch.linspace(0, 1, 5, dtype=torch.float64).float())


def test_empty_gaussians_round_trip(tmp_path):
    g = make_gaussians(0, 0)
    g2, lam = read_ply(write_ply(tmp_path / "z.ply", g, torch.zeros(0, 5)))
    assert g2.num == 0 and lam.shape == (0, 5)


# --- refusing bad data / bad files --------------------------------------------------------

@pytest.mark.parametrize("field", ["means", "sh", "lam"])
def test_refuses_nonfinite_and_leaves_nothing(tmp_path, field):
    g = make_gaussians(8, 1)
    lam = torch.ones(8, 5)
    if field == "lam":
        lam[3, 2] = float("inf")
    else:
        getattr(g, field).view(-1)[5] = float("nan")
    target = tmp_path / "s.ply"
    target.write_bytes(b"previous good file")
    with pytest.raises(NumericalError, match="non-finite"):
        write_ply(target, g, lam)
    assert target.read_bytes() == b"previous good file"  # not clobbered
    assert no_strays(tmp_path, {"s.ply"})


def test_refuses_bad_uncertainty_shape_and_sign(tmp_path):
    g = make_gaussians(3, 0)
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", g, torch.ones(3, 4))
    with pytest.raises(ValueError):
        write_ply(tmp_path / "a.ply", g, -torch.ones(3, 5))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError) as ei:
        write_ply(blocker / "scene.ply", make_gaussians(2, 0))
    assert "scene.ply" in str(ei.value)
    assert no_strays(tmp_path, {"file.txt"})


def test_atomic_output_cleans_up_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _good_file(tmp_path: Path, degree=1, lam=True) -> Path:
    g = make_gaussians(20, degree)
    return write_ply(tmp_path / "good.ply", g, torch.ones(20, 5) if lam else None)


def corrupt_variants(tmp_path: Path) -> dict[str, Path]:
    good = _good_file(tmp_path).read_bytes()
    head_end = good.index(b"end_header\n") + len(b"end_header\n")
    out = {}

    def put(name, data):
        p = tmp_path / f"{name}.ply"
        p.write_bytes(data)
        out[name] = p

    put("empty", b"")
    put("garbage", b"\x00\x01\x02 this is not a ply file at all" * 10)
    put("truncated_data", good[: head_end + 100])
    put("truncated_header", good[: head_end // 2])
    put("png_renamed", b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    put("bad_count", good.replace(b"element vertex 20", b"element vertex 2x"))
    mesh = np.array([(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(mesh, "vertex")]).write(str(tmp_path / "mesh_only.ply"))
    out["mesh_only"] = tmp_path / "mesh_only.ply"
    rest5 = np.zeros(2, dtype=[(nm, "f4") for nm in expected_header_names(0) + ["f_rest_0", "f_rest_1"]])
    PlyData([PlyElement.describe(rest5, "vertex")]).write(str(tmp_path / "bad_rest.ply"))
    out["bad_rest"] = tmp_path / "bad_rest.ply"
    part = np.zeros(2, dtype=[(nm, "f4") for nm in expected_header_names(0) + ["lambda_mean"]])
    PlyData([PlyElement.describe(part, "vertex")]).write(str(tmp_path / "partial_lambda.ply"))
    out["partial_lambda"] = tmp_path / "partial_lambda.ply"
    return out


def test_corrupt_files_raise_user_error_naming_file(tmp_path):
    variants = corrupt_variants(tmp_path)
    for name, p in variants.items():
        with pytest.raises(UserError) as ei:
            read_ply(p)
        msg = ei.value.one_line()
        assert str(p) in msg, (name, msg)
        assert "\n" not in msg


def test_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_ply(tmp_path / "nope.ply")
    with pytest.raises(UserError, match="directory"):
        read_ply(tmp_path)


# --- sidecar --------------------------------------------------------------------------------

def test_sidecar_round_trip(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    paths = [img_dir / f"{i}.png" for i in range(3)]
    K = torch.tensor([[[100.0, 0, 32], [0, 101.0, 24], [0, 0, 1]]], dtype=torch.float64).repeat(3, 1, 1)
    w2c = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    w2c[:, 0, 3] = torch.tensor([0.1, 1 / 3, -2.5])
    cams = Cameras(K, w2c, 64, 48)
    out_dir = tmp_path / "out"
    ply = out_dir / "scene.ply"
    sp = write_sidecar(ply, {"images": paths, "cameras": cams, "context_views": [0, 2],
                             "resolution": (48, 64), "model": "diff3r-test", "extras": {"note": "hi"}})
    assert sp == out_dir / "scene.json" == sidecar_path(ply)
    raw = json.loads(sp.read_text())
    assert raw["images"][0] == "../imgs/0.png"  # relative to the sidecar
    doc = read_sidecar(ply)
    assert [Path(p) for p in doc["images"]] == [p.resolve() for p in paths]
    assert doc["context_views"] == [0, 2] and doc["resolution"] == [48, 64]
    assert doc["model"] == "diff3r-test" and doc["extras"] == {"note": "hi"}
    cams2 = cameras_from_sidecar(doc)
    assert torch.equal(cams2.K, K) and torch.equal(cams2.w2c, w2c)  # float64 exact via JSON repr
    assert (cams2.width, cams2.height) == (64, 48)
    assert no_strays(out_dir, {"scene.json"})


def test_sidecar_errors(tmp_path):
    ply = tmp_path / "s.ply"
    with pytest.raises(UserError, match="no sidecar"):
        read_sidecar(ply)
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(UserError) as ei:
        read_sidecar(ply)
    assert "s.json" in str(ei.value)
    (tmp_path / "s.json").write_text('{"diff3r_sidecar": 1, "cameras": {"K": [1, 2]}}')
    with pytest.raises(UserError, match="cameras"):
        cameras_from_sidecar(read_sidecar(ply))
    with pytest.raises(ValueError):
        write_sidecar(ply, {"extras": {"x": math.nan}})


def test_write_splat_and_resolve_images(tmp_path):
    from diff3r_cli.scene_io.scene import Scene

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        (imgs / f"{i}.png").write_bytes(b"x")
    K = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    cams = Cameras(K, torch.eye(4, dtype=torch.float64).repeat(2, 1, 1), 8, 6)
    scene = Scene(torch.zeros(2, 6, 8, 3), cams, [str(imgs / "0.png"), str(imgs / "1.png")], "folder")
    info = scene_info(scene, model="m")
    assert info["context_views"] == [0, 1] and info["resolution"] == [6, 8]
    g = make_gaussians(4, 0)
    ply, js = write_splat(tmp_path / "out" / "scene.ply", g, torch.ones(4, 5), info)
    assert js == tmp_path / "out" / "scene.json" and read_ply(ply)[0].num == 4
    doc = read_sidecar(ply)
    assert resolve_images(doc) == [(imgs / "0.png").resolve(), (imgs / "1.png").resolve()]
    moved = tmp_path / "moved"
    (imgs).rename(moved)
    with pytest.raises(UserError, match="--images"):
        resolve_images(doc)
    assert resolve_images(doc, moved) == [moved / "0.png", moved / "1.png"]
