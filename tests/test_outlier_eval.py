"""The outlier protocol of `diff3r eval --outliers P` (issue 23): corrupted context views, clean
targets, the same corruptions for the same seed."""

from __future__ import annotations

import json

import torch

from diff3r_cli.data.outliers import OutlierConfig, corrupt_context
from diff3r_cli.evaluate.command import _test_dataset, outlier_config
from diff3r_cli.scene_io.re10k import encode_jpeg, write_chunk, write_json_atomic


def _root(tmp_path, scenes: int = 4):
    """A tiny RE10K-layout test split with an evaluation index (context 0,2; target 1)."""
    exs = []
    for k in range(scenes):
        g = torch.Generator().manual_seed(k)
        rows = torch.zeros(3, 18)
        rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = 0.9, 1.2, 0.5, 0.5
        for t in range(3):
            w2c = torch.eye(4)[:3]
            w2c[:, 3] = torch.tensor([0.1 * t, 0.0, 0.0])
            rows[t, 6:] = w2c.reshape(12)
        exs.append({"key": f"s{k}", "url": "", "timestamps": torch.arange(3), "cameras": rows,
                    "images": [encode_jpeg(torch.rand(32, 32, 3, generator=g)) for _ in range(3)]})
    write_chunk(tmp_path / "test" / "000000.torch", exs)
    write_json_atomic(tmp_path / "test" / "index.json", {e["key"]: "000000.torch" for e in exs})
    index = tmp_path / "evaluation_index.json"
    index.write_text(json.dumps({e["key"]: {"context": [0, 2], "target": [1]} for e in exs}))
    return tmp_path, index


def _draw(root, index, seed: int, p: float) -> list[dict]:
    return list(_test_dataset(root, "test", 32, index, seed, p, "dataset"))


def test_outliers_reproducible_by_seed_and_targets_clean(tmp_path):
    root, index = _root(tmp_path)
    clean = _draw(root, index, 0, 0.0)
    a, b, c = _draw(root, index, 7, 1.0), _draw(root, index, 7, 1.0), _draw(root, index, 8, 1.0)
    assert [s["key"] for s in a] == [s["key"] for s in clean]
    for sa, sb in zip(a, b):  # the same seed: the same corruptions
        assert torch.equal(sa["context_images"], sb["context_images"])
        assert torch.equal(sa["context_outlier_mask"], sb["context_outlier_mask"])
    assert any(not torch.equal(sa["context_images"], sc["context_images"]) for sa, sc in zip(a, c))
    for sa, s0 in zip(a, clean):
        assert torch.equal(sa["target_images"], s0["target_images"])  # targets stay clean
        assert sa["context_outlier_mask"].any()  # P = 1: every tuple has occluders
        keep = ~sa["context_outlier_mask"]  # unmasked: untouched but for the tail of an exposure blob (<5 %)
        x, x0 = sa["context_images"][keep], s0["context_images"][keep]
        assert bool(((x - x0).abs() <= 0.051 * x0 + 1e-6).all())


def test_protocol_includes_whole_view_exposure_changes():
    cfg = outlier_config(0.5)
    assert (cfg.p_occluder, cfg.p_exposure, cfg.p_global_exposure) == (0.5, 0.25, 0.25)
    imgs = torch.full((2, 8, 8, 3), 0.5)
    out, mask = corrupt_context(imgs, torch.Generator().manual_seed(0),
                                OutlierConfig(p_occluder=0, p_exposure=0, p_global_exposure=1.0))
    changed = [v for v in range(2) if not torch.equal(out[v], imgs[v])]
    assert len(changed) == 1 and bool(mask[changed[0]].all())
    ratio = out[changed[0]].reshape(-1, 3).mean(0) / 0.5
    assert float(ratio.min()) > 0.5 and float(ratio.max()) < 1.9 and float(ratio.max() - ratio.min()) > 0.0
