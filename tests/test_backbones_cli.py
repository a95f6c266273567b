"""End to end on the CPU with random-weights files in the published layouts (MVSplat: a reduced
architecture; DepthSplat: the small release's, at 32x32): reconstruct, refine, eval, train
--init (frozen backbone, resume), inspect; a corrupted file is one error line and exit status 2
everywhere."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from diff3r_cli.cli import app
from diff3r_cli.model.backbones import BackboneConfig, BackbonePredictor
from diff3r_cli.model.backbones.checkpoints import save_published_layout
from diff3r_cli.model.io import load_model

from test_backbones import tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from diff3r_cli.data.export import export_synthetic_transforms
    from diff3r_cli.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("bb")
    ckpt = save_published_layout(tiny_model(), root / "mvsplat.ckpt")
    torch.manual_seed(0)
    save_published_layout(BackbonePredictor(BackboneConfig(family="depthsplat", variant="small", train_near=0.5)),
                          root / "depthsplat.pth")
    scene = export_synthetic_transforms(root / "scene", seed=2_000_001, frames=[0, 2, 4], context=[0, 2],
                                        path_frames=6, resolution=32, spp=1).parent
    generate_dataset(root / "ds", scenes=2, frames=24, resolution=32, split="train", spp=1)
    generate_dataset(root / "ds", scenes=1, frames=24, resolution=32, split="test", spp=1)
    bad = root / "corrupt.ckpt"
    data = ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    return root, ckpt, scene, bad


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("name", ["mvsplat.ckpt", "depthsplat.pth"])
def test_reconstruct_refine_eval_with_released_layout(files, name):
    root, _, scene, _ = files
    ckpt = root / name
    out = root / "out" / f"{ckpt.stem}.ply"
    res = _ok(runner.invoke(app, ["reconstruct", str(scene), "--out", str(out), "--model", str(ckpt)],
                            env={"COLUMNS": "200"}))
    assert out.is_file() and (root / "out" / f"{ckpt.stem}_renders").is_dir()
    assert "for the checkpoint" in res.output                        # the scene scale factor is reported
    _ok(runner.invoke(app, ["refine", str(out), "--steps", "5"]))
    assert (root / "out" / f"{ckpt.stem}.refined.ply").is_file()
    js = root / f"ev_{ckpt.stem}.json"
    _ok(runner.invoke(app, ["eval", "--data-root", str(root / "ds"), "--data", "synthetic", "--model", str(ckpt),
                            "--ff-model", str(ckpt), "--limit", "1", "--tto-steps", "0,2", "--resolution", "32",
                            "--json", str(js)]))
    methods = {(s["method"], s["steps"]) for s in json.loads(js.read_text())["summary"]}
    assert {("ff", 0), ("diff3r", 0), ("ff+TTO", 2), ("diff3r+TTO+unc", 2)} <= methods


@pytest.mark.parametrize("name", ["mvsplat.ckpt", "depthsplat.pth"])
def test_train_init_from_release_frozen_backbone_and_resume(files, name):
    root, _, _, _ = files
    ckpt = root / name
    run = root / f"run_{ckpt.stem}"
    args = ["train", "--data", "synthetic", "--data-root", str(root / "ds"), "--init", str(ckpt), "--stage", "diff3r",
            "--resolution", "32", "--batch", "1", "--out", str(run), "--freeze-backbone", "--threads", "1"]
    _ok(runner.invoke(app, args + ["--steps", "2"]))
    w = load_file(str(run / "model.safetensors"))
    init = load_model(ckpt)
    for k, t in init.net.state_dict().items():                        # the released tree did not move
        assert torch.equal(w[f"net.{k}"], t), k
    assert float(w["lam_head.conv2.weight"].abs().sum()) > 0             # our Λ head did
    m = load_model(run / "model.safetensors")
    assert m.cfg.family == ckpt.stem and m.meta["step"] == 2
    _ok(runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", "3", "--threads", "1"]))
    assert json.loads((run / "latest.json").read_text())["step"] == 3
    assert json.loads((run / "config.json").read_text())["freeze_backbone"] is True


def test_inspect_names_family_variant_and_convention(files):
    root, ckpt, _, _ = files
    res = _ok(runner.invoke(app, ["inspect", str(ckpt), "--json"]))
    info = json.loads(res.output)
    assert info["family"] == "mvsplat" and info["loads"] == "strict" and "near 1 / far 100" in info["convention"]
    assert info["parameters"] == sum(t.numel() for t in tiny_model().net.state_dict().values())
    info = json.loads(_ok(runner.invoke(app, ["inspect", str(root / "depthsplat.pth"), "--json"])).output)
    assert (info["family"], info["variant"], info["parameters"]) == ("depthsplat", "small", 38_346_416)
    assert "near 0.5 / far 100" in info["convention"]


def test_corrupted_file_is_one_line_exit_2(files):
    root, _, scene, bad = files
    for args in (["reconstruct", str(scene), "--out", str(root / "x.ply"), "--model", str(bad)],
                 ["eval", "--data-root", str(root / "ds"), "--data", "synthetic", "--model", str(bad), "--limit", "1"],
                 ["train", "--data", "synthetic", "--data-root", str(root / "ds"), "--init", str(bad), "--stage",
                  "diff3r", "--steps", "1", "--out", str(root / "badrun")],
                 ["inspect", str(bad)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.lstrip().startswith(("read", "load"))]
        err = [ln for ln in lines if ln.startswith("error:")]
        assert len(err) == 1 and "corrupt.ckpt" in err[0] and "download" in err[0], res.output
