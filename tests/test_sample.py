"""The bundled real sample (sample_data/viking): a bare folder of photos that README command 1 reconstructs."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from typer.testing import CliRunner

from diff3r_cli.cli import app
from diff3r_cli.model.io import save_model
from diff3r_cli.model.predictor import Predictor, PredictorConfig
from diff3r_cli.ply import read_ply
from diff3r_cli.scene_io import detect_format
from diff3r_cli.sidecar import read_sidecar

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "viking"


def test_sample_is_a_small_bare_folder_with_its_licence():
    images = sorted((SAMPLE / "images").glob("*.jpg"))
    assert len(images) == 8
    for p in images:
        with Image.open(p) as im:
            assert max(im.size) <= 512 and im.size[0] < im.size[1]  # portrait, as photographed
    assert detect_format(SAMPLE / "images") == "folder"  # no poses: SfM has to do it
    assert "Apache License" in (SAMPLE / "LICENSE").read_text()
    assert "rshilliday/sfm" in (SAMPLE / "ATTRIBUTION.md").read_text()


def test_readme_command_1_reconstructs_the_sample(tmp_path):
    torch.manual_seed(0)
    cfg = PredictorConfig.preset("small", enc_channels=(8, 8), feat_dim=8, num_planes=8, refine_channels=8,
                                 head_channels=8, attn_layers=0)
    model = save_model(tmp_path / "tiny.safetensors", Predictor(cfg), {"resolution": 32})
    out = tmp_path / "scene.ply"
    # the README's command with a tiny model and a small working size, so CI stays fast
    res = CliRunner().invoke(app, ["reconstruct", str(SAMPLE / "images"), "--out", str(out), "--model", str(model),
                                   "--resolution", "96", "--no-render"])
    assert res.exit_code == 0, res.output
    g, _ = read_ply(out)
    doc = read_sidecar(out)
    # 3 context views at 96x128 (3:4 kept), one Gaussian per pixel less the depth stage's floaters
    assert 0.5 * 3 * 96 * 128 <= len(g) <= 3 * 96 * 128
    extras = doc.get("extras", {})
    assert 0.0 <= extras["depth_sweep_accepted"] <= 1.0 and extras["refine_steps"] == 15
    assert extras["format"] == "folder" and extras["depth_range_from"].startswith("sparse points")
