"""Native aspect ratio through the data path: sizes, exact intrinsics (against the ray caster),
size-grouped batches that resume exactly, and `eval` on non-square scenes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diff3r_cli.data.re10k import RE10KDataset
from diff3r_cli.data.synth import random_scene, render_frame
from diff3r_cli.metrics import psnr
from diff3r_cli.scene_io.images import native_size
from diff3r_cli.scene_io.re10k import cameras_to_rows, encode_jpeg, write_chunk
from diff3r_cli.train import DataStream

W0, H0, FRAMES = 200, 128, 6  # 25:16, and 200 * 64/128 = 100 is not a multiple of 16 (crop 2 px each side)


def test_native_size_keeps_aspect_and_snaps_to_the_multiple():
    assert native_size(376, 502, 128) == (128, 160)      # viking (portrait 3:4): 170.9 -> 160
    assert native_size(512, 288, 128) == (224, 128)      # 16:9: 227.6 -> 224
    assert native_size(256, 256, 64) == (64, 64)
    assert native_size(270, 480, 256) == (256, 448)      # fox portrait: 455 -> 448
    assert native_size(32, 32, 8) == (8, 8)              # below the multiple: kept, not 0
    with pytest.raises(ValueError):
        native_size(0, 10, 8)


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory):
    """An RE10K root with one non-square synthetic scene (train and test) and an evaluation index."""
    root = tmp_path_factory.mktemp("wide")
    sc = random_scene(11, frames=FRAMES, width=W0, height=H0)
    frames = [render_frame(sc, f, spp=4)[0] for f in range(FRAMES)]
    ex = {"key": "wide", "url": "synth://wide", "timestamps": torch.arange(FRAMES),
          "cameras": cameras_to_rows(sc.K, sc.w2c, W0, H0), "images": [encode_jpeg(f, 95) for f in frames]}
    for split in ("train", "test"):
        write_chunk(root / split / "000000.torch", [ex])
        (root / split / "index.json").write_text(json.dumps({"wide": "000000.torch"}))
    (root / "evaluation_index.json").write_text(json.dumps({"wide": {"context": [0, 4], "target": [2]}}))
    return root, sc


def test_dataset_keeps_aspect_with_exact_intrinsics(wide_root):
    root, sc = wide_root
    ds = RE10KDataset(root, "test", resolution=64, evaluation_index=root / "evaluation_index.json")
    (s,) = list(ds)
    assert s["context_images"].shape == (2, 64, 96, 3) and s["target_images"].shape == (1, 64, 96, 3)
    # by hand: scale 64/128 = 0.5 (200x128 -> 100x64), then 2 px off the left for the centred 96 crop
    K = sc.K[0].clone()
    K[:2] *= 0.5
    K[0, 2] -= 2.0
    assert torch.allclose(s["context_K"][0].double(), K.double(), atol=1e-5)
    # independent reference: ray-cast the scene directly with those intrinsics at 96x64
    ref_scene = dataclasses.replace(sc, K=K[None].expand(FRAMES, 3, 3).clone(), width=96, height=64)
    ref = render_frame(ref_scene, 2, spp=16)[0]
    got = s["target_images"][0]
    assert float(psnr(got, ref)) > 27.0
    # a stretched (non-aspect-preserving) resize of the same frame is visibly worse
    full = render_frame(sc, 2, spp=4)[0].permute(2, 0, 1)[None]
    stretched = torch.nn.functional.interpolate(full, size=(64, 96), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    assert float(psnr(stretched, ref)) < float(psnr(got, ref)) - 3.0


class _FakeDataset:
    """Stands in for RE10KDataset: a fixed per-epoch sequence of samples of two sizes."""

    root = "fake"

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        sizes = [(4, 6), (6, 4), (4, 6), (4, 6), (6, 4), (6, 4), (4, 6)]
        for i, (h, w) in enumerate(sizes):
            img = torch.full((2, h, w, 3), float(self.epoch * 100 + i))
            yield {"context_images": img, "target_images": img[:1].clone(), "key": f"e{self.epoch}i{i}"}


def test_batches_group_by_size_and_resume_exactly():
    stream = DataStream(_FakeDataset, batch=2)
    seen = []
    for _ in range(4):
        b = stream.next_batch()
        assert b["context_images"].shape[0] == 2  # collate would fail on mixed sizes
        seen.append(b["key"])
    state = stream.state_dict()
    rest = [stream.next_batch()["key"] for _ in range(6)]
    resumed = DataStream(_FakeDataset, batch=2, state=json.loads(json.dumps(state)))  # survives JSON
    assert [resumed.next_batch()["key"] for _ in range(6)] == rest
    # every sample is used once per epoch except those still waiting in a bucket
    flat = [k for keys in seen + rest for k in keys]
    assert len(flat) == len(set(flat))
    assert seen[0] == ["e0i0", "e0i2"] and seen[1] == ["e0i1", "e0i4"]


def test_eval_runs_at_native_aspect(wide_root, tmp_path):
    from diff3r_cli.evaluate import evaluate_main
    from diff3r_cli.model.io import save_model
    from diff3r_cli.model.predictor import Predictor, PredictorConfig

    root, _ = wide_root
    torch.manual_seed(0)
    cfg = PredictorConfig.preset("small", enc_channels=(8, 8), feat_dim=8, num_planes=8, refine_channels=8,
                                 head_channels=8, attn_layers=0)
    model = save_model(tmp_path / "tiny.safetensors", Predictor(cfg), {"resolution": 32})
    r = evaluate_main(root, model=str(model), ff_model=str(model), tto_steps=[0, 2], resolution=32,
                      progress=False)
    (row,) = r["scenes"]
    assert row["size"] == [48, 32]
    assert row["depth_range"][2].startswith(("triangulated", "dataset"))
    methods = {(x["method"], x["steps"]) for x in r["summary"]}
    assert methods == {("ff", 0), ("diff3r", 0), ("ff+TTO", 2), ("diff3r+TTO+unc", 2), ("diff3r+TTO", 2)}
    assert all(x["context_psnr"] > 0 for x in r["summary"])
