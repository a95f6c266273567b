"""benchmarks/fit_anchor_strength.py: the anchor's overall strength is picked on train grids only,
each data set weighing the same, and stored as log s in the model's calibration table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fit_anchor_strength as fas  # noqa: E402


def _grid(rows: dict[str, dict[str, float]], split: str = "train") -> dict:
    return {"settings": {"split": split, "model": "m"}, "tuples": rows}


def test_each_data_set_weighs_the_same_whatever_its_tuple_count():
    real = _grid({f"r{i}": {"s=0.1": 20.0, "s=1": 20.3} for i in range(4)})
    synth = _grid({"a": {"s=0.1": 30.0, "s=1": 29.5}})
    best, pooled, means = fas.pick_strength({"real": real, "synth": synth})
    # per data set: real +0.3 at s=1, synthetic +0.5 at s=0.1 -> s=0.1; per tuple it would be s=1
    # (4·0.3 = 1.2 against 0.5)
    assert best == 0.1
    assert math.isclose(pooled[0.1], (20.0 + 30.0) / 2) and math.isclose(pooled[1.0], (20.3 + 29.5) / 2)
    assert means["real"] == {0.1: 20.0, 1.0: pytest.approx(20.3)}


def test_only_shared_factors_compete_and_ties_keep_the_stronger_anchor():
    a = _grid({"x": {"s=0.1": 10.0, "s=0.3": 11.0, "s=1": 11.0}})
    b = _grid({"y": {"s=0.3": 5.0, "s=1": 5.0}})
    best, pooled, _ = fas.pick_strength({"a": a, "b": b})
    assert set(pooled) == {0.3, 1.0}
    assert best == 1.0


def test_a_test_split_grid_is_refused():
    with pytest.raises(ValueError, match="train tuples only"):
        fas.pick_strength({"t": _grid({"x": {"s=1": 1.0}}, split="test")})


def test_grids_of_differently_calibrated_models_are_refused():
    a = _grid({"x": {"s=1": 1.0}})
    b = _grid({"y": {"s=1": 2.0}})
    b["settings"]["anchor_log_scales"] = [[-2.3] * 5] * 3
    with pytest.raises(ValueError, match="differently calibrated"):
        fas.pick_strength({"a": a, "b": b})
    a["settings"]["anchor_log_scales"] = [[-2.3] * 5] * 3
    assert fas.pick_strength({"a": a, "b": b})[0] == 1.0


def test_the_model_file_gets_log_s_on_every_entry(tmp_path):
    from diff3r_cli.depth.covisible import ANCHOR_SETS
    from diff3r_cli.model.io import load_model, read_metadata, resolve_model_path, save_model

    net = load_model(resolve_model_path("diff3r-small"), device="cpu")
    path = save_model(tmp_path / "m.safetensors", net)
    fas.store_strength(path, 0.25, {"s": 0.25})
    cfg = load_model(path, device="cpu").cfg
    assert len(cfg.anchor_log_scales) == len(ANCHOR_SETS)
    assert all(v == pytest.approx(math.log(0.25)) for row in cfg.anchor_log_scales for v in row)
    # a second choice composes with the table already there; the weights stay
    fas.store_strength(path, 2.0, {"s": 2.0})
    net2 = load_model(path, device="cpu")
    assert all(v == pytest.approx(math.log(0.5)) for row in net2.cfg.anchor_log_scales for v in row)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert [r["s"] for r in read_metadata(path)["meta"]["anchor_strength"]] == [0.25, 2.0]


def test_inspect_names_the_anchor_calibration_a_model_carries(tmp_path):
    from diff3r_cli.model.io import inspect_weights, load_model, resolve_model_path, save_model

    net = load_model(resolve_model_path("diff3r-small"), device="cpu")
    path = save_model(tmp_path / "m.safetensors", net)
    assert "no calibration" in inspect_weights(path)["anchor"]
    fas.store_strength(path, 0.1, {"s": 0.1})
    assert inspect_weights(path)["anchor"].startswith("Λ × 0.1 (one factor")
    net.cfg.anchor_log_scales = ((0.0,) * 5, (1.0,) * 5, (-1.0,) * 5)
    assert "per Gaussian set and group (0.368 … 2.72)" in inspect_weights(save_model(tmp_path / "t.safetensors", net))["anchor"]
