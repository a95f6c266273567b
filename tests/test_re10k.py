"""RE10K chunk format: reading, writing, camera decoding, scene loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.scene_io.re10k import (BadChunkError, cameras_to_rows, decode_jpeg, encode_jpeg, example_to_cameras,
                                       load_re10k_scene, read_chunk, read_evaluation_index, write_chunk,
                                       write_json_atomic)


def _example(key: str, T: int = 3, W: int = 40, H: int = 30, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(H, W, 3, generator=g) for _ in range(T)]
    rows = torch.zeros(T, 18)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = 0.9, 1.2, 0.5, 0.45
    for t in range(T):
        w2c = torch.eye(4)[:3]
        w2c[:, 3] = torch.tensor([0.1 * t, -0.2, 0.3])
        rows[t, 6:] = w2c.reshape(12)
    return {"key": key, "url": f"https://example.com/{key}", "timestamps": torch.arange(T, dtype=torch.int64),
            "cameras": rows, "images": [encode_jpeg(im) for im in imgs],
            "depths": [torch.full((H, W), 2.0 + t, dtype=torch.float16) for t in range(T)]}


def _dataset(root, n_chunks: int = 2, per_chunk: int = 2) -> list[str]:
    keys = []
    for split in ("train", "test"):
        index = {}
        for c in range(n_chunks):
            exs = [_example(f"{split}{c}_{i}", seed=c * 10 + i) for i in range(per_chunk)]
            write_chunk(root / split / f"{c:06d}.torch", exs)
            index.update({e["key"]: f"{c:06d}.torch" for e in exs})
            keys += [e["key"] for e in exs]
        write_json_atomic(root / split / "index.json", index)
    return keys


def test_chunk_roundtrip_and_atomic(tmp_path):
    exs = [_example("a"), _example("b", T=2)]
    path = tmp_path / "sub" / "000000.torch"
    write_chunk(path, exs)
    assert os.listdir(path.parent) == ["000000.torch"]  # no temp file left behind
    back = read_chunk(path)
    assert [e["key"] for e in back] == ["a", "b"]
    assert torch.equal(back[0]["cameras"], exs[0]["cameras"])
    assert torch.equal(back[1]["images"][1], exs[1]["images"][1])
    assert back[0]["timestamps"].dtype == torch.int64


def test_write_chunk_rejects_bad_examples(tmp_path):
    bad = _example("a")
    del bad["cameras"]
    with pytest.raises(BadChunkError):
        write_chunk(tmp_path / "x.torch", [bad])
    assert not (tmp_path / "x.torch").exists()


def test_read_chunk_errors(tmp_path):
    good = tmp_path / "good.torch"
    write_chunk(good, [_example("a")])
    trunc = tmp_path / "trunc.torch"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadChunkError, match="cannot be loaded"):
        read_chunk(trunc)
    wrong = tmp_path / "wrong.torch"
    torch.save([{"key": "a", "pictures": []}], wrong)
    with pytest.raises(BadChunkError, match="lacks key"):
        read_chunk(wrong)
    notlist = tmp_path / "dict.torch"
    torch.save({"key": "a"}, notlist)
    with pytest.raises(BadChunkError, match="not a list"):
        read_chunk(notlist)
    shape = tmp_path / "shape.torch"
    ex = _example("a")
    ex["cameras"] = ex["cameras"][:, :12]
    torch.save([ex], shape)
    with pytest.raises(BadChunkError, match=r"\(T,18\)"):
        read_chunk(shape)


def test_jpeg_roundtrip():
    g = torch.Generator().manual_seed(1)
    # Smooth image: JPEG is near-lossless on it.
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(24, 32), mode="bilinear")[0]
    img = img.permute(1, 2, 0)
    back = decode_jpeg(encode_jpeg(img, quality=95))
    assert back.shape == (24, 32, 3) and back.dtype == torch.float32
    assert (back - img).abs().mean() < 0.01
    assert decode_jpeg(encode_jpeg(img).numpy().tobytes()).shape == (24, 32, 3)


def test_example_to_cameras_unnormalises_and_projects():
    ex = _example("a", T=3, W=40, H=30)
    cams = example_to_cameras(ex, 40, 30)
    assert cams.width == 40 and cams.height == 30
    assert torch.allclose(cams.K[0], torch.tensor([[36.0, 0, 20], [0, 36.0, 13.5], [0, 0, 1]], dtype=cams.K.dtype))
    # Independent projection by hand: camera 2 has translation (0.2, -0.2, 0.3), identity rotation.
    X = torch.tensor([[0.5, 0.1, 2.0]], dtype=torch.float64)
    uv, z = cams.project(X)
    pc = X[0] + torch.tensor([0.2, -0.2, 0.3], dtype=torch.float64)
    assert torch.allclose(uv[2, 0], torch.stack([36 * pc[0] / pc[2] + 20, 36 * pc[1] / pc[2] + 13.5]))
    assert torch.allclose(z[2, 0], pc[2])
    # Scaling the image scales the pixel intrinsics (normalised ones are size-free).
    cams2 = example_to_cameras(ex, 80, 60, frames=[1])
    assert len(cams2) == 1 and torch.allclose(cams2.K[0, :2], 2 * cams.K[1, :2])
    # cameras_to_rows inverts it.
    rows = cameras_to_rows(cams.K, cams.w2c, 40, 30)
    assert torch.allclose(rows, ex["cameras"], atol=1e-6)


def test_load_scene_from_root_split_and_chunk(tmp_path):
    keys = _dataset(tmp_path)
    sc = load_re10k_scene(tmp_path)
    assert sc.format == "re10k" and sc.extras["key"] == keys[0]
    assert sc.images.shape == (3, 30, 40, 3) and sc.images.dtype == torch.float32
    assert sc.images.min() >= 0 and sc.images.max() <= 1
    assert sc.cameras.K.shape == (3, 3, 3) and sc.width == 40 and sc.height == 30
    assert sc.extras["depths"].shape == (3, 30, 40)
    sc2 = load_re10k_scene(tmp_path / "test", key="test1_1", frames=[2, 0])
    assert sc2.extras["key"] == "test1_1" and sc2.extras["frames"] == [2, 0]
    assert torch.allclose(sc2.cameras.w2c[0, 0, 3], torch.tensor(0.2, dtype=torch.float64))
    assert torch.allclose(sc2.extras["depths"][:, 0, 0], torch.tensor([4.0, 2.0]))
    sc3 = load_re10k_scene(tmp_path / "train" / "000001.torch")
    assert sc3.extras["key"] == "train1_0"
    sc4 = load_re10k_scene(tmp_path, key="test0_1")  # found through the test split's index
    assert sc4.extras["key"] == "test0_1"


def test_load_scene_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_re10k_scene(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no \.torch chunks.*train,test"):
        load_re10k_scene(tmp_path / "empty")
    _dataset(tmp_path / "ds", n_chunks=1, per_chunk=1)
    with pytest.raises(UserError, match="no example with key 'zzz'"):
        load_re10k_scene(tmp_path / "ds", key="zzz")
    with pytest.raises(UserError, match="out of range"):
        load_re10k_scene(tmp_path / "ds", frames=[0, 7])
    junk = tmp_path / "junk.torch"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError) as ei:
        load_re10k_scene(junk)
    assert "junk.torch" in str(ei.value) and "cannot be loaded" in str(ei.value)


def test_evaluation_index(tmp_path):
    p = tmp_path / "ev.json"
    p.write_text(json.dumps({"a": {"context": [0, 5], "target": [1, 2]}, "b": None}))
    ev = read_evaluation_index(p)
    assert ev["a"]["context"] == [0, 5] and ev["b"] is None
    p.write_text(json.dumps({"a": {"context": 3}}))
    with pytest.raises(UserError, match="entry 'a'"):
        read_evaluation_index(p)
    p.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_evaluation_index(p)
