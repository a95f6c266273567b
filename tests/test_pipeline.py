"""End to end: reconstruct -> refine -> render, and eval, on tiny generated scenes with a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from diff3r_cli.cli import app
from diff3r_cli.data.synth import generate_dataset
from diff3r_cli.metrics import psnr
from diff3r_cli.ply import read_ply

from conftest import tiny_model_and_scene

runner = CliRunner()


def rows(stdout: str) -> dict:
    """A printed result table -> {key: value} (numbers as float)."""
    out = {}
    for line in stdout.strip().splitlines():
        k, v = line.strip().split(None, 1)
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model, scene = tiny_model_and_scene(root, seed=2_000_001, frames=[0, 2, 4], path_frames=6, resolution=32)
    generate_dataset(root / "ds", scenes=1, frames=6, resolution=32, split="test", spp=1)
    return root, model, scene


def test_reconstruct_refine_render(tiny):
    root, model, scene = tiny
    out = root / "out" / "s.ply"
    res = runner.invoke(app, ["reconstruct", str(scene), "--out", str(out), "--model", str(model),
                              "--refine-steps", "2"])
    assert res.exit_code == 0, res.output
    g, lam = read_ply(out)
    doc = json.loads(out.with_suffix(".json").read_text())
    n_back = doc["extras"]["backdrop_gaussians"]  # the far backdrop, 4 px cells, a 25 % margin, per view
    assert n_back == 2 * (8 + 2 * 2) ** 2
    # one Gaussian per context pixel, less those the depth stage found in front of another view's surface
    assert 0.5 * 2 * 32 * 32 <= len(g) - n_back <= 2 * 32 * 32
    assert lam is not None and len(lam) == len(g) and g.is_finite()
    assert doc["context_views"] == [0, 2] and doc["extras"]["held_out_views"] == [1]
    renders = root / "out" / "s_renders"
    # context and interpolation renders are named by their index in the input
    names = {p.name for p in renders.iterdir()}
    assert {"context_00.png", "context_02.png", "context_00_gt.png", "interp_01.png", "interp_01_gt.png"} <= names
    assert not any(n.startswith("extrap_") for n in names)  # only with --eval-all
    assert "path.gif" not in names
    from diff3r_cli.video import read_video_info

    info = read_video_info(renders / "path.mp4")  # decoded back by PyAV (FFmpeg)
    assert info == {"codec": "h264", "frames": 24, "width": 32, "height": 32}

    # the reported context PSNR is that of the written renders against the written ground truth
    # (up to the 8-bit rounding of the PNGs)
    from diff3r_cli.scene_io.images import load_image

    pngs = [(load_image(renders / f"context_{k:02d}.png"), load_image(renders / f"context_{k:02d}_gt.png"))
            for k in (0, 2)]
    from_pngs = sum(float(psnr(a, b)) for a, b in pngs) / 2
    assert abs(rows(res.stdout)["psnr_context"] - from_pngs) < 0.1, (res.stdout, from_pngs)

    res = runner.invoke(app, ["refine", str(out), "--steps", "3"])
    assert res.exit_code == 0, res.output
    # TTO lowers the energy and raises the context PSNR it reports
    e0, e1 = (float(x) for x in rows(res.stdout)["energy"].split(" -> "))
    p0, p1 = (float(x) for x in rows(res.stdout)["context_psnr"].removesuffix(" dB").split(" -> "))
    assert e1 < e0 and p1 > p0, res.stdout
    refined = root / "out" / "s.refined.ply"
    g2, lam2 = read_ply(refined)
    assert torch.equal(lam2, lam)  # Λ travels unchanged
    assert not torch.equal(g2.means, g.means)  # but the Gaussians moved
    assert read_ply(out)[0].means.equal(g.means)  # input untouched

    # --images (original files, resampled like reconstruct) gives the same refinement as the saved inputs
    res = runner.invoke(app, ["refine", str(out), "--steps", "3", "--images", str(scene / "images"),
                              "--out", str(root / "out" / "s_img.ply")])
    assert res.exit_code == 0, res.output
    g3, _ = read_ply(root / "out" / "s_img.ply")
    assert all(torch.equal(a, b) for a, b in zip(g3.tensors(), g2.tensors()))

    res = runner.invoke(app, ["render", str(refined), "--path", "orbit", "--frames", "3", "--out", str(root / "r")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (root / "r").iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]

    res = runner.invoke(app, ["render", str(refined), "--frames", "5", "--video", "--out", str(root / "v")])
    assert res.exit_code == 0, res.output
    assert read_video_info(root / "v" / "path.mp4") == {"codec": "h264", "frames": 5, "width": 32, "height": 32}
    res = runner.invoke(app, ["render", str(refined), "--frames", "4", "--gif", "--out", str(root / "g")])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(root / "g" / "path.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)
    assert not (root / "g" / "path.mp4").exists()


def test_reconstruct_eval_all_adds_extrapolation(tiny):
    root, model, scene = tiny
    out = root / "ea" / "s.ply"
    res = runner.invoke(app, ["reconstruct", str(scene), "--out", str(out), "--model", str(model), "--eval-all",
                              "--views", "0,1"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (root / "ea" / "s_renders").iterdir()}
    assert "extrap_02.png" in names and "psnr_extrap" in res.stdout and "psnr_interp" not in res.stdout


def test_eval_table_and_snapshots_match_separate_runs(tiny):
    root, model, _ = tiny
    out = root / "ev.json"
    res = runner.invoke(app, ["eval", "--data-root", str(root / "ds"), "--model", str(model), "--ff-model", str(model),
                              "--tto-steps", "0,1,3", "--json", str(out), "--resolution", "32"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    methods = {(s["method"], s["steps"]) for s in r["summary"]}
    assert {("ff", 0), ("diff3r", 0), ("ff+TTO", 3), ("diff3r+TTO+unc", 3), ("diff3r+TTO", 1)} <= methods
    # same model for both: ff+TTO and plain diff3r+TTO are the same computation
    row = r["scenes"][0]
    assert row["ff+TTO@3"] == row["diff3r+TTO@3"]

    # the snapshot at step 1 of a 3-step Adam run equals a separate 1-step run
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.gaussians import Gaussians
    from diff3r_cli.optim.tto import optimize
    torch.manual_seed(1)
    n = 64
    g0 = Gaussians(torch.randn(n, 3) * 0.3 + torch.tensor([0, 0, 3.0]), torch.full((n, 3), -2.5),
                   torch.randn(n, 4), torch.zeros(n), torch.rand(n, 1, 3))
    cams = Cameras(torch.tensor([[[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]]), torch.eye(4)[None], 32, 32)
    img = torch.rand(1, 32, 32, 3)
    _, hist = optimize(g0, None, cams, img, 3, snapshots={1})
    g1, _ = optimize(g0, None, cams, img, 1)
    assert torch.allclose(hist[1]["theta"], g1.flatten())


def test_split_unseen_between_and_near_vs_far():
    """Cameras on a line looking +z: context at x=0 and x=1. x=0.5 (between) and x=-0.5, 1.6
    (within 3/4 of the baseline) interpolate; x=3 (far) and a camera turned 90° extrapolate."""
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.engines.policy import split_unseen

    xs = [0.0, 1.0, 0.5, -0.5, 1.6, 3.0, 0.4]
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(xs), 1, 1)
    for i, x in enumerate(xs):
        w2c[i, 0, 3] = -x  # centre at (x, 0, 0)
    R = torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)  # looks along +x
    w2c[6, :3, :3] = R
    w2c[6, :3, 3] = -R @ torch.tensor([0.4, 0, 0], dtype=torch.float64)
    K = torch.tensor([[20.0, 0, 8], [0, 20, 8], [0, 0, 1]], dtype=torch.float64).repeat(len(xs), 1, 1)
    interp, extrap = split_unseen(Cameras(K, w2c, 16, 16), [0, 1])
    assert interp == [2, 3, 4] and extrap == [5, 6]
    interp, extrap = split_unseen(Cameras(K, w2c, 16, 16), [0, 1], max_interp=1)
    assert interp == [2] and extrap == [3, 4, 5, 6]


def test_engines_are_quiet_library_calls_with_typed_results(tiny, tmp_path, capsys):
    """reconstruct -> refine -> render called as functions: typed results, progress only through
    the callback (nothing printed), and the events pair up as the displays expect."""
    from diff3r_cli.engines.outputs import RenderFolder
    from diff3r_cli.engines.reconstruct import ReconstructResult, reconstruct_scene
    from diff3r_cli.engines.refine import RefineResult, refine_splat
    from diff3r_cli.engines.render_path import render_splat

    _, model, scene = tiny
    events = []
    r = reconstruct_scene(scene, tmp_path / "s.ply", model=str(model), refine_steps=2, frames=3, video="",
                          progress=events.append)
    assert isinstance(r, ReconstructResult) and isinstance(r.renders, RenderFolder)
    assert (r.context, r.interp, r.extrap) == ([0, 2], [1], [])
    n_back = json.loads((tmp_path / "s.json").read_text())["extras"]["backdrop_gaussians"]
    assert n_back == 2 * (8 + 2 * 2) ** 2                       # 4 px cells, a 25 % margin, per view
    assert 0.5 * 2 * 32 * 32 <= r.gaussians - n_back <= 2 * 32 * 32
    plain = reconstruct_scene(scene, tmp_path / "p.ply", model=str(model), refine_steps=0, render=False, sweep=False)
    assert plain.gaussians == 2 * 32 * 32                       # without the depth stage: exactly one per pixel
    assert (r.width, r.height, r.renders.frames, r.renders.video) == (32, 32, 3, None)
    assert set(r.renders.psnr) == {"context", "interp"} and r.renders.views == {"context": [0, 2], "interp": [1]}
    assert 0 < r.near < r.far and r.total_s >= r.load_s + r.predict_s + r.refine_s
    kinds = [e.kind for e in events]
    assert kinds.count("begin") == kinds.count("end") and "advance" in kinds
    opt = kinds.index("optimize")
    assert kinds[opt + 1:opt + 5] == ["iterate"] * 3 + ["optimized"]
    assert [e.n for e in events if e.kind == "iterate"] == [0, 1, 2]  # E at θ0, then after each step
    labels = [e.label for e in events if e.kind == "begin"]
    assert labels[:2] == ["read images", "load model"] and "render camera path" in labels

    events.clear()
    ref = refine_splat(tmp_path / "s.ply", steps=3, progress=events.append)
    assert isinstance(ref, RefineResult) and ref.ply == tmp_path / "s.refined.ply" and ref.steps_run == 3
    assert ref.energy[1] < ref.energy[0] and ref.context_psnr[1] > ref.context_psnr[0]
    # 3 steps are below depth.consistency.MIN_STEPS: no check of the photos against each other
    assert [e.kind for e in events] == ["optimize"] + ["iterate"] * 4 + ["optimized"]
    assert "dropped_contradicted" not in json.loads(ref.ply.with_suffix(".json").read_text())["extras"]
    folder = render_splat(ref.ply, tmp_path / "r", path="input", video="gif")
    assert folder == RenderFolder(tmp_path / "r", frames=2, video=tmp_path / "r" / "path.gif")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""  # engines never print


def test_predict_gaussians_runs_in_eval_mode_without_grad_and_checks_finiteness():
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.errors import NumericalError
    from diff3r_cli.gaussians import Gaussians
    from diff3r_cli.model.inference import Prediction, predict_gaussians

    class Probe(torch.nn.Module):
        """Records how it was called; returns Gaussians whose means are the near plane (or NaN)."""

        def __init__(self, value: float = 0.0):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.value, self.seen = value, None

        def forward(self, images, K, w2c, near, far):
            self.seen = (self.training, torch.is_grad_enabled(), images.shape, images.dtype, float(near), float(far))
            n = 4
            g = Gaussians(torch.full((n, 3), self.value) * self.w, torch.zeros(n, 3), torch.ones(n, 4), torch.zeros(n),
                          torch.zeros(n, 1, 3))
            return type("Out", (), {"gaussians": [g], "lam": [torch.ones(n, 5) * self.w]})()

    cams = Cameras(torch.eye(3).repeat(2, 1, 1), torch.eye(4).repeat(2, 1, 1), 8, 6)
    imgs = torch.rand(2, 6, 8, 3, dtype=torch.float64)
    m = Probe(0.5).train()
    pred = predict_gaussians(m, imgs, cams, 0.25, 9.0)
    assert isinstance(pred, Prediction)
    g, lam = pred
    assert m.seen == (False, False, (1, 2, 6, 8, 3), torch.float32, 0.25, 9.0)
    assert m.training  # the caller's mode is restored
    assert not g.means.requires_grad and not lam.requires_grad and torch.equal(g.means, torch.full((4, 3), 0.5))
    with pytest.raises(NumericalError, match="non-finite"):
        predict_gaussians(Probe(float("nan")), imgs, cams, 0.25, 9.0)


def test_inference_lam_is_the_learned_part_without_the_training_floor():
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.model.inference import inference_lam, predict_gaussians
    from diff3r_cli.model.predictor import build_predictor

    torch.manual_seed(0)
    tiny = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_layers=0)
    net = build_predictor("small", lam_floor=10.0, **tiny).eval()
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]]).repeat(2, 1, 1)
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = 0.3
    cams = Cameras(K, w2c, 16, 12)
    imgs = torch.rand(2, 12, 16, 3)
    with torch.no_grad():
        out = net(imgs[None], K[None], w2c[None], torch.tensor([1.0]), torch.tensor([20.0]))
    P = 2 * 12 * 16
    floored = predict_gaussians(net, imgs, cams, 1.0, 20.0, keep_floor=True).lam
    learned = predict_gaussians(net, imgs, cams, 1.0, 20.0).lam
    assert torch.allclose(floored, out.lam[0])
    assert torch.allclose(learned + 10.0 / P, out.lam[0], rtol=1e-5)
    assert float((floored - learned).min()) == pytest.approx(10.0 / P, rel=1e-4)
    assert torch.equal(inference_lam(out.lam[0], 0.0, P), out.lam[0])             # no floor: unchanged
    assert float(inference_lam(torch.zeros(3, 5), 10.0, P).min()) == 0.0           # never negative


def test_dropped_gaussians_take_their_lambda_rows_along(tiny, tmp_path, monkeypatch):
    """The anchored refine with --drop-contradicted drops the Gaussians of contradicted pixels: the
    written .ply keeps Λ rows for exactly the Gaussians it holds, from reconstruct --anchor and from
    refine; without it (the default) nothing is dropped."""
    from diff3r_cli.depth import consistency
    from diff3r_cli.engines.reconstruct import reconstruct_scene
    from diff3r_cli.engines.refine import refine_splat
    from diff3r_cli.ply import read_ply

    _, model, scene = tiny
    monkeypatch.setattr(consistency, "MIN_STEPS", 1)
    monkeypatch.setattr(consistency, "PREPASS_STEPS", 2)
    # a known set of contradicted Gaussians, every 7th: the plumbing, not the detector, is under test
    monkeypatch.setattr(consistency, "contradicted",
                        lambda g, *a, **k: torch.arange(len(g), device=g.means.device) % 7 == 0)
    before = reconstruct_scene(scene, tmp_path / "p.ply", model=str(model), refine_steps=0, render=False).gaussians
    kept = reconstruct_scene(scene, tmp_path / "k.ply", model=str(model), refine_steps=2, anchor=True, render=False)
    assert kept.gaussians == before
    assert "dropped_contradicted" not in json.loads((tmp_path / "k.json").read_text())["extras"]
    r = reconstruct_scene(scene, tmp_path / "a.ply", model=str(model), refine_steps=2, anchor=True, render=False,
                          drop=True)
    g, lam = read_ply(tmp_path / "a.ply")
    dropped = json.loads((tmp_path / "a.json").read_text())["extras"]["dropped_contradicted"]
    assert dropped == (before + 6) // 7 and r.gaussians == before - dropped
    assert lam is not None and lam.shape == (g.num, 5)
    ref = refine_splat(tmp_path / "a.ply", steps=2, drop=True)
    g2, lam2 = read_ply(ref.ply)
    assert g2.num == g.num - (g.num + 6) // 7 and lam2.shape == (g2.num, 5)
    assert json.loads(ref.ply.with_suffix(".json").read_text())["extras"]["dropped_contradicted"] == g.num - g2.num

    # an interrupted refine writes its best iterate so far: the Λ rows must follow the dropped ones there too
    from diff3r_cli.engines.refine import BestIterate, RefineInterrupted

    orig = BestIterate.__call__

    def interrupt_at_step_1(self, rec):
        orig(self, rec)
        if rec["step"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(BestIterate, "__call__", interrupt_at_step_1)
    with pytest.raises(RefineInterrupted) as err:
        refine_splat(tmp_path / "a.ply", steps=3, out=tmp_path / "i.ply", drop=True)
    assert err.value.written == tmp_path / "i.ply"
    g3, lam3 = read_ply(tmp_path / "i.ply")
    assert json.loads((tmp_path / "i.json").read_text())["extras"]["partial"] is True
    assert g3.num == g2.num and lam3.shape == (g3.num, 5) and torch.equal(lam3, lam2)


def test_the_anchor_head_reranks_lambda_inside_refine_only(tiny, tmp_path, monkeypatch):
    """The anchored refine's Λ is re-ranked by the bundled anchor head (recorded in the sidecar);
    the .ply keeps the predicted Λ; --anchor-head none gives the predicted Λ to the TTO."""
    from diff3r_cli.depth import consistency
    from diff3r_cli.engines.reconstruct import reconstruct_scene
    from diff3r_cli.engines.refine import refine_splat
    from diff3r_cli.ply import read_ply

    _, model, scene = tiny
    monkeypatch.setattr(consistency, "MIN_STEPS", 1)
    monkeypatch.setattr(consistency, "PREPASS_STEPS", 2)
    reconstruct_scene(scene, tmp_path / "s.ply", model=str(model), refine_steps=0, render=False)
    g0, lam0 = read_ply(tmp_path / "s.ply")
    reconstruct_scene(scene, tmp_path / "a.ply", model=str(model), refine_steps=2, anchor=True, render=False)
    assert json.loads((tmp_path / "a.json").read_text())["extras"]["anchor_head"] == "anchor-head-real"
    assert "anchor_head" not in json.loads((tmp_path / "s.json").read_text())["extras"]
    seen = []
    real_optimize = __import__("diff3r_cli.optim.tto", fromlist=["optimize"]).optimize

    def spy(g, lam, *a, **k):
        if lam is not None:
            seen.append(lam.detach().clone())
        return real_optimize(g, lam, *a, **k)

    monkeypatch.setattr("diff3r_cli.optim.tto.optimize", spy)
    with_head = refine_splat(tmp_path / "s.ply", steps=2, out=tmp_path / "h.ply")
    without = refine_splat(tmp_path / "s.ply", steps=2, out=tmp_path / "n.ply", anchor_head="none")
    extras_h = json.loads(with_head.ply.with_suffix(".json").read_text())["extras"]
    extras_n = json.loads(without.ply.with_suffix(".json").read_text())["extras"]
    assert extras_h["anchor_head"] == "anchor-head-real" and "anchor_head" not in extras_n
    lam_h, lam_n = seen
    assert torch.allclose(lam_n, lam0) and not torch.allclose(lam_h, lam0)
    # a re-ranking: the same geometric mean per group
    assert torch.allclose(lam_h.log().mean(0), lam0.log().mean(0), atol=1e-4)
    for p in (with_head.ply, without.ply):  # the .ply keeps the predicted Λ
        assert torch.allclose(read_ply(p)[1], lam0)
