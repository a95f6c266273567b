"""Every tensor the pipeline makes after loading lives on its inputs' device.

The first run of benchmarks/gpu_check.sh on a GPU (H200) found `reconstruct --device cuda` crashing
in the depth sweep: two score buffers were made without a device (CPU) and compared with CUDA
tensors. CI has no GPU, so this test makes the same class of bug fail on the CPU: it runs the
engines with the *meta* device as torch's default. A tensor made without a device then lands on
meta, and mixing it with the inputs' (CPU) tensors raises just as a CPU tensor among CUDA ones
does on a GPU. Reading files (scene, model, .ply, sidecar) and the SfM/triangulated depth range
run on the CPU by design, so those steps get the CPU as their default.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ROOM = ROOT / "sample_data" / "room"


def _on_cpu(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.device("cpu"):
            return fn(*args, **kwargs)
    return wrapper


@pytest.fixture
def meta_default(monkeypatch):
    """Loading steps on the CPU, everything else with the meta device as the default."""
    import diff3r_cli.engines.policy as policy
    import diff3r_cli.engines.splat_inputs as splat_inputs
    import diff3r_cli.model.io as model_io
    import diff3r_cli.ply as ply
    import diff3r_cli.scene_io as scene_io

    for mod, name in ((scene_io, "load_scene"), (model_io, "load_model"), (policy, "estimate_depth_range"),
                      (ply, "read_ply"), (splat_inputs, "context_cameras"), (splat_inputs, "context_images")):
        monkeypatch.setattr(mod, name, _on_cpu(getattr(mod, name)))
    with torch.device("meta"):
        yield


def test_meta_default_catches_a_tensor_made_without_a_device(meta_default):
    """The harness itself: a buffer made without a device cannot meet an input tensor."""
    x = torch.ones(3, device="cpu")
    with pytest.raises((RuntimeError, NotImplementedError)):
        _ = x > torch.zeros(3)


@pytest.mark.slow
def test_reconstruct_and_refine_keep_every_tensor_on_the_inputs_device(meta_default, tmp_path, monkeypatch):
    from diff3r_cli.depth import consistency
    from diff3r_cli.engines.reconstruct import reconstruct_scene
    from diff3r_cli.engines.refine import refine_splat

    out = tmp_path / "scene.ply"
    # the default pipeline: depth sweep + despeckle, backdrop, compensation, TTO, renders
    res = reconstruct_scene(ROOM, out, resolution=48, device="cpu", refine_steps=2, frames=3, video="")
    assert out.is_file() and res.renders is not None
    # the anchored refine with the pixel confidence (pre-pass, weights, dropping), at a tiny budget
    monkeypatch.setattr(consistency, "MIN_STEPS", 1)
    monkeypatch.setattr(consistency, "PREPASS_STEPS", 1)
    for drop in (False, True):
        r = refine_splat(out, steps=2, out=tmp_path / f"refined_{drop}.ply", device="cpu", drop=drop)
        assert r.ply.is_file()


def test_mp4_without_pyav_is_a_one_line_error(monkeypatch, tmp_path):
    """The GPU image lacked PyAV: `reconstruct` ended in 'internal error: ModuleNotFoundError'."""
    import sys

    import numpy as np

    from diff3r_cli.errors import UserError
    from diff3r_cli.video import write_mp4

    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(UserError, match="PyAV") as e:
        write_mp4(tmp_path / "path.mp4", [np.zeros((8, 8, 3), np.uint8)])
    assert "--gif" in str(e.value) and "path.mp4" in str(e.value)
    assert not (tmp_path / "path.mp4").exists()
