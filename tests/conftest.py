"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_backend_leak():
    """A test that sets DIFF3R_RENDER_BACKEND (the CLI's --backend does) must not leave it set:
    every later test would silently render with that backend instead of the default."""
    import os

    before = os.environ.get("DIFF3R_RENDER_BACKEND")
    yield
    after = os.environ.get("DIFF3R_RENDER_BACKEND")
    if after != before:
        if before is None:
            os.environ.pop("DIFF3R_RENDER_BACKEND", None)
        else:
            os.environ["DIFF3R_RENDER_BACKEND"] = before
        pytest.fail(f"the test left DIFF3R_RENDER_BACKEND={after!r} behind")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tests use tiny tensors: on the shared 2-core CI/dev machines intra-op threads mostly wait on
    each other, so every test module runs with one torch thread (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_model_and_scene(root, seed: int, frames: list[int], path_frames: int, resolution: int):
    """A tiny untrained predictor saved under ``root`` and a synthetic transforms.json scene
    (context views 0 and 2) for end-to-end CLI tests: (model path, scene folder)."""
    from diff3r_cli.data.export import export_synthetic_transforms
    from diff3r_cli.model.io import save_model
    from diff3r_cli.model.predictor import Predictor, PredictorConfig

    torch.manual_seed(0)
    cfg = PredictorConfig.preset("small", enc_channels=(8, 8), feat_dim=8, num_planes=8, refine_channels=8,
                                 head_channels=8, attn_layers=0)
    model = save_model(root / "tiny.safetensors", Predictor(cfg), {"resolution": 32})
    scene = export_synthetic_transforms(root / "scene", seed=seed, frames=frames, context=[0, 2],
                                        path_frames=path_frames, resolution=resolution, spp=1).parent
    return model, scene
