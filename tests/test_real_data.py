"""The view sampler for real sequences, and the real corpus (../shared/data/real) as a dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.re10k import RE10KDataset
from diff3r_cli.data.view_sampler import ViewSamplerConfig, sample_views_real, view_angles, view_overlap
from diff3r_cli.geometry import look_rotation

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not (REAL / "test").is_dir(), reason="shared real corpus absent")


def _look_at(centres: torch.Tensor, target: torch.Tensor, fx: float, W: int = 64, H: int = 48) -> Cameras:
    """OpenCV cameras at `centres` looking at `target` (world y down)."""
    w2c = []
    for c in centres:
        R = look_rotation((target - c) / (target - c).norm(), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)).T
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3], m[:3, 3] = R, -R @ c
        w2c.append(m)
    K = torch.tensor([[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(K.expand(len(centres), 3, 3).clone(), torch.stack(w2c), W, H)


def _orbit(n: int, step_deg: float) -> Cameras:
    a = torch.deg2rad(torch.arange(n, dtype=torch.float64) * step_deg)
    centres = torch.stack([4 * torch.sin(a), torch.zeros_like(a), -4 * torch.cos(a)], 1)
    return _look_at(centres, torch.zeros(3, dtype=torch.float64), fx=60.0)


def test_angles_of_an_orbit_are_the_angles_between_its_cameras():
    ang = view_angles(_orbit(12, 5.0))
    i, j = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    assert torch.allclose(ang, 5.0 * (i - j).abs().double(), atol=1e-4)


def test_overlap_of_a_sideways_step_counts_the_grid_columns_still_in_view():
    # parallel axes: no crossing, so the depth is 10x the step; fx = 2.5 W puts the other view's
    # image border a quarter of the width in: 6 of the 8 grid columns stay inside, both ways
    W = 64
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.3  # camera 1 sits 0.3 to the right
    K = torch.tensor([[2.5 * W, 0, W / 2], [0, 2.5 * W, 24], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    cams = Cameras(K.clone(), w2c, W, 48)
    one_way = view_overlap(cams, symmetric=False)  # 0 -> 1 loses columns on the left, 1 -> 0 on the right
    assert one_way[0, 1] == pytest.approx(0.75) and one_way[1, 0] == pytest.approx(0.75)
    assert view_overlap(cams)[0, 0] == pytest.approx(1.0)


def test_sampler_picks_pairs_15_to_30_degrees_apart_on_an_orbit():
    cams = _orbit(40, 5.0)
    cfg = ViewSamplerConfig(num_context=2, num_target=2, mode="angle")
    g = torch.Generator().manual_seed(0)
    gaps = set()
    for _ in range(40):
        ctx, tgt = sample_views_real(cams, cfg, g)
        gaps.add(ctx[1] - ctx[0])
        assert all(ctx[0] < t < ctx[1] for t in tgt)
    assert gaps <= {3, 4, 5, 6} and len(gaps) >= 3  # 15..30 deg = 3..6 frames at 5 deg per frame


def test_sampler_falls_back_to_frame_gaps_for_a_pan_and_to_shared_content_for_a_walk():
    # a sideways pan (wide lens): no pair is 15 deg apart, but 8-12 frames apart still share the view
    x = torch.arange(30, dtype=torch.float64) * 0.01
    pan = Cameras(torch.tensor([[20.0, 0, 32], [0, 20.0, 24], [0, 0, 1]], dtype=torch.float64).expand(30, 3, 3).clone(),
                  torch.eye(4, dtype=torch.float64).repeat(30, 1, 1), 64, 48)
    pan.w2c[:, 0, 3] = -x
    cfg = ViewSamplerConfig(num_context=2, num_target=1, mode="angle", min_gap=8, max_gap=12)
    g = torch.Generator().manual_seed(1)
    assert all(8 <= c[1] - c[0] <= 12 for c, _ in (sample_views_real(pan, cfg, g) for _ in range(20)))
    # a forward walk: 8 frames on, the first view's content has left the frame: closer pairs that share it
    walk = Cameras(pan.K.clone(), torch.eye(4, dtype=torch.float64).repeat(30, 1, 1), 64, 48)
    walk.w2c[:, 2, 3] = -x * 10
    ov = view_overlap(walk)
    for _ in range(20):
        c, _ = sample_views_real(walk, cfg, g)
        assert 2 <= c[1] - c[0] < 8 and ov[c[0], c[1]] >= 0.5


@needs_real
def test_real_test_split_loads_at_native_aspect():
    ds = RE10KDataset(REAL, "test", resolution=64, evaluation_index=REAL / "evaluation_index.json")
    sizes = {}
    for s in ds:
        sizes[s["key"].rsplit("_", 1)[0]] = tuple(s["context_images"].shape[1:3])
        assert s["context_images"].shape[0] == 2 and s["target_images"].shape[0] == 2
    # 12 tuples of 4 scenes, each at its own aspect ratio with the short side 64 (16:9, 4:3, portrait 3:4)
    assert sizes == {"colosseum": (64, 112), "viking": (80, 64), "opensfm_lund": (64, 80), "tum_freiburg_desk": (64, 80)}
    assert sizes["viking"][0] > sizes["viking"][1]      # portrait stays portrait
    assert sizes["colosseum"][1] > sizes["colosseum"][0]


@needs_real
def test_real_train_split_trains_with_the_angle_sampler(tmp_path):
    from diff3r_cli.train import train_main

    r = train_main(data="re10k", data_root=str(REAL), stage="ff", steps=2, resolution=32, batch=2,
                   out=tmp_path / "run", progress=False, log_every=1, threads=1,
                   model_overrides=dict(enc_channels=(8, 8), feat_dim=8, num_planes=8, refine_channels=8,
                                        head_channels=8, attn_layers=0))
    assert r["step"] == 2
    import json
    assert json.loads((tmp_path / "run" / "config.json").read_text())["view_sampler"] == "angle"
