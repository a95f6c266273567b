"""`diff3r train` engine: exact resume, signal checkpoints, stage diff3r plumbing, bad data."""

import json
import math
import os
import signal

import pytest
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.model.io import load_model

TINY = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_heads=2,
            attn_layers=1)
COMMON = dict(data="synthetic", stage="ff", batch=1, resolution=16, progress=False, log_every=1, min_gap=2, max_gap=4,
              target_views=1, model_overrides=TINY, threads=1, lr=1e-3, warmup=2)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from diff3r_cli.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, scenes=3, frames=6, resolution=16, spp=1, split="train", chunk_size=2)
    generate_dataset(root, scenes=1, frames=6, resolution=16, spp=1, split="test")
    return root


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_resume_is_bit_exact(synth_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train_main_(data_root=synth_root, steps=6, out=a, ckpt_every=100)
    assert ra["status"] == "finished" and ra["step"] == 6
    rb1 = train_main_(data_root=synth_root, steps=6, out=b, stop_after=3)
    assert rb1["status"] == "stopped" and rb1["step"] == 3
    with pytest.raises(UserError, match="--resume"):  # a fresh run never mixes into an old one
        train_main_(data_root=synth_root, steps=6, out=b)
    assert json.loads((b / "latest.json").read_text())["step"] == 3
    # a process killed after the checkpoint left records past it (and a line cut short)
    with open(b / "log.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 4, "loss": 9.0}) + "\n" + '{"type": "tra')
    # a plain --resume (no steps given) continues the run's own 6-step schedule
    rb2 = train_main_(data_root=synth_root, out=b, resume=True)
    assert rb2["status"] == "finished" and rb2["step"] == 6
    wa, wb = _weights(a / "model.safetensors"), _weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # the weights did move away from the initialisation (so the comparison means something)
    init = train_main_(data_root=synth_root, steps=1, out=tmp_path / "c", lr=0.0, return_model=True)["model"]
    moved = sum(float((wa[k] - v.detach()).abs().sum()) for k, v in init.state_dict().items())
    assert moved > 0
    # logs: one line per step, step numbers continue across the resume
    steps_b = [json.loads(line)["step"] for line in (b / "log.jsonl").read_text().splitlines()
               if json.loads(line)["type"] == "train"]
    assert steps_b == [1, 2, 3, 4, 5, 6]
    rec = json.loads((a / "log.jsonl").read_text().splitlines()[-1])
    for key in ("network", "render", "backward", "data"):
        assert key in rec["time_per_step_s"]
    # the final weights load as a predictor
    m = load_model(a / "model.safetensors")
    assert m.meta["step"] == 6 and m.meta["stage"] == "ff"
    assert not list(a.glob("*.tmp")) and not list(b.glob("*.tmp"))


def train_main_(**kw):
    from diff3r_cli.train import train_main
    return train_main(**{**COMMON, **kw})


def test_sigterm_checkpoints_and_stops(synth_root, tmp_path, monkeypatch):
    from diff3r_cli.train import steps

    real = steps.train_step
    calls = {"n": 0}

    def step_and_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: finish this step, checkpoint, return
        return real(*a, **k)

    monkeypatch.setattr(steps, "train_step", step_and_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    r = train_main_(data_root=synth_root, steps=50, out=tmp_path / "r", ckpt_every=100)
    assert r["status"] == "interrupted" and r["step"] == 2 and r["signal"] == signal.SIGTERM
    assert json.loads((tmp_path / "r" / "latest.json").read_text())["step"] == 2
    assert (tmp_path / "r" / "ckpt-0000002.pt").exists()
    assert not (tmp_path / "r" / "model.safetensors").exists()  # not a finished run
    # training's handler is gone after the run: the handlers are exactly those before it
    after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert after == before


def test_stage_diff3r_gradients_reach_lambda(synth_root, tmp_path):
    r = train_main_(data_root=synth_root, stage="diff3r", steps=1, out=tmp_path / "d", inner_steps=2, ff_weight=0.5,
                    pcg_max_iter=5, return_model=True, eval_every=1, eval_scenes=1)
    assert r["status"] == "finished"
    assert r["last"]["skipped"] == 0
    assert r["loss"] is not None and math.isfinite(r["loss"])
    t = r["last"]["time_per_step_s"]
    assert "inner_tto" in t and "pcg_backward" in t and t["pcg_backward"] > 0
    assert "psnr_theta0" in r["last"]
    evals = [json.loads(line) for line in (tmp_path / "d" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 1]
    for e in evals:
        assert e["tto_steps"] == 2 and e["psnr_tto"] > 0 and e["psnr_tto_plain"] > 0
        assert e["psnr_mean_colour"] > 0 and e["views"] >= 1
    # Λ's bias received a gradient through the IFT backward and was updated
    init_bias = torch.log(torch.tensor(r["model"].cfg.lam_init))
    assert not torch.equal(r["model"].log_lam_bias.detach(), init_bias)


def test_init_from_stage_ff_run(synth_root, tmp_path):
    ff = train_main_(data_root=synth_root, steps=1, out=tmp_path / "ff", return_model=True)
    r = train_main_(data_root=synth_root, steps=1, out=tmp_path / "ft", init=str(tmp_path / "ff"), lr=0.0,
                    return_model=True)
    for (k, a), (_, b) in zip(ff["model"].state_dict().items(), r["model"].state_dict().items()):
        assert torch.equal(a, b), k


def test_missing_re10k_data_is_one_line_user_error(tmp_path):
    from diff3r_cli.train import train_main

    with pytest.raises(UserError) as e:
        train_main(data="re10k", data_root=str(tmp_path / "nowhere"), out=tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "nowhere" in msg and "train" in msg and ".torch" in msg
    with pytest.raises(UserError):
        train_main(data="re10k", data_root=str(tmp_path), stage="bogus", out=tmp_path / "o", progress=False)
    with pytest.raises(UserError):
        train_main(data="re10k", resume=True, out=tmp_path / "empty", progress=False)


def test_cli_bad_data_path_no_traceback(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "diff3r_cli", "train", "--data", "re10k", "--data-root", str(tmp_path),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train" in lines[0], p.stderr


def test_outliers_corrupt_context_only(synth_root, tmp_path, monkeypatch):
    from diff3r_cli.train.stream import DataStream

    real = DataStream.next_batch
    seen = []

    def spy(self):
        batch = real(self)
        seen.append(batch)
        return batch

    monkeypatch.setattr(DataStream, "next_batch", spy)
    train_main_(data_root=synth_root, steps=2, out=tmp_path / "o", outliers=1.0)
    corrupted, seen[:] = list(seen), []
    assert len(corrupted) == 2
    # with P = 1 every example gets an occluder in one context view ...
    assert all(bool(b["context_outlier_mask"].any()) for b in corrupted)
    # ... while the targets are the clean frames (same as a run without outliers)
    train_main_(data_root=synth_root, steps=2, out=tmp_path / "c")
    assert len(seen) == 2
    for b, clean in zip(corrupted, seen):
        assert b["key"] == clean["key"] and torch.equal(b["target_images"], clean["target_images"])
        assert not torch.equal(b["context_images"], clean["context_images"])


def _step_batch(n: int, seed: int = 0, size: int = 16) -> dict:
    """n examples of 2 context + 1 target view (random images, cameras 0.3 apart)."""
    gen = torch.Generator().manual_seed(seed)
    K = torch.tensor([[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]])
    w2c = torch.eye(4).repeat(3, 1, 1)
    w2c[1, 0, 3] = -0.3
    w2c[2, 0, 3] = -0.15
    return {"context_images": torch.rand(n, 2, size, size, 3, generator=gen),
            "context_K": K.repeat(n, 2, 1, 1), "context_w2c": w2c[:2].repeat(n, 1, 1, 1),
            "target_images": torch.rand(n, 1, size, size, 3, generator=gen),
            "target_K": K.repeat(n, 1, 1, 1), "target_w2c": w2c[2:].repeat(n, 1, 1, 1),
            "near": torch.full((n,), 1.0), "far": torch.full((n,), 10.0)}


def test_skipped_example_does_not_shrink_the_others_weight(monkeypatch):
    # A numerical failure in one example's inner solve skips it; the step's loss and gradient
    # must then be those of the remaining example alone (mean over examples that produced a
    # loss), not halved by dividing by the batch size.
    from diff3r_cli.errors import NumericalError
    from diff3r_cli.model.predictor import build_predictor
    from diff3r_cli.optim import implicit
    from diff3r_cli.optim.stats import LayerStats, TTOStats
    from diff3r_cli.train import Batch, TrainConfig, train_step
    from diff3r_cli.train.config import InnerConfig, LossConfig
    from diff3r_cli.train.steps import Timer

    calls = {"n": 0}

    def fake_layer(g0, lam, cams, images, steps, optimizer, **kw):
        calls["n"] += 1
        if calls["n"] == 1 and fake_layer.fail_first:
            raise NumericalError("inner solve diverged (test)")
        return g0, LayerStats(TTOStats(steps, 0.0, 0.0))

    monkeypatch.setattr(implicit, "optimization_layer_with_stats", fake_layer)
    torch.manual_seed(0)
    model = build_predictor("small", **TINY)
    cfg = TrainConfig(stage="diff3r", loss=LossConfig(ssim_weight=0.0, ff_weight=0.0),
                      inner=InnerConfig(steps=1, optimizer="adam", pcg_max_iter=5))
    cpu = torch.device("cpu")
    both = Batch.from_collated(_step_batch(2, seed=1), cpu)
    second = Batch.from_collated({k: v[1:] for k, v in _step_batch(2, seed=1).items()}, cpu)
    grads, losses = [], []
    for batch, fail in ((both, True), (second, False)):
        fake_layer.fail_first = fail
        calls["n"] = 0
        model.zero_grad()
        r = train_step(model, batch, cfg, Timer(cpu))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
        assert (r.skipped, r.n) == ((1, 1) if fail else (0, 1))
        losses.append(r.loss_sum / r.n)
    assert abs(losses[0] - losses[1]) < 1e-6
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_resume_rule_keeps_the_runs_settings():
    from diff3r_cli.train import TrainConfig
    from diff3r_cli.train.config import DEFAULT_PCG_MAX_ITER, DEFAULT_STEPS

    cli = TrainConfig.from_options(data="synthetic", stage="ff", batch=8, seed=3, steps=50, inner_steps=9,
                                   inner_optimizer="lm", eval_every=5, data_root=None)
    saved = {"data": "re10k", "data_root": "/data/x", "stage": "diff3r", "steps": 10, "batch": 2, "seed": 0,
             "inner_steps": 4, "inner_optimizer": "adam", "warmup": 7, "lr": 0.5, "inner_lr": 4.0,
             "inner_hessian": "exact", "pcg_max_iter": 150, "init": "runs/ff/model.safetensors"}
    r = cli.resumed(saved)
    # what defines the experiment comes from the saved run ...
    kept = (r.data.kind, r.stage, r.data.batch, r.seed, r.inner.steps, r.schedule.warmup)
    assert kept == ("re10k", "diff3r", 2, 0, 4, 7)
    assert r.data.root == "/data/x"  # filled in: the command line gave none
    assert r.data.view_sampler == "gap"  # saved before the angle sampler existed
    # ... and so do the inner problem and the optimizer's rates (restored with its state anyway)
    assert (r.inner.optimizer, r.optim.lr) == ("adam", 0.5)
    # ... the rest from the command line (steps may extend the run)
    assert (r.schedule.steps, r.eval.every) == (50, 5)
    # steps not given: the run's own (a plain --resume keeps the schedule); a new run: the default
    plain = TrainConfig.from_options(data="synthetic")
    assert plain.resumed(saved).with_defaults_resolved().schedule.steps == 10
    assert plain.with_defaults_resolved().schedule.steps == DEFAULT_STEPS
    # a plain resume keeps the inner solver it trained with (rate, Hessian, PCG cap) and its origin
    kept = plain.resumed(saved).with_defaults_resolved()
    assert (kept.inner.lr, kept.inner.hessian, kept.inner.pcg_max_iter) == (4.0, "exact", 150)
    assert str(kept.model.init) == "runs/ff/model.safetensors"
    assert TrainConfig.from_options(pcg_max_iter=300).resumed(saved).inner.pcg_max_iter == 300
    assert plain.with_defaults_resolved().inner.pcg_max_iter == DEFAULT_PCG_MAX_ITER
    assert cli.resumed({**saved, "data_root": "/data/x"}).data.root == "/data/x"
    moved = TrainConfig.from_options(data_root="/data/moved").resumed(saved)
    assert moved.data.root == "/data/moved"  # the command line's root wins when given
    # flat names round-trip, unknown ones are a programming error
    assert TrainConfig.from_options(**cli.flat()) == cli
    with pytest.raises(TypeError, match="bogus"):
        TrainConfig.from_options(bogus=1)


def _context_mse(model, batch) -> float:
    """MSE of θ0 rendered into example 0's own context views."""
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.render import render

    with torch.no_grad():
        out = model(batch.context_images, batch.context_K, batch.context_w2c, batch.near, batch.far)
        h, w_px = batch.context_images.shape[2:4]
        pred = render(out.gaussians[0], Cameras(batch.context_K[0], batch.context_w2c[0], w_px, h)).rgb
        return float(((pred - batch.context_images[0]) ** 2).mean())


def _ff_loss_with(**loss_kw):
    """(model, batch, plain stage-ff step, the same step with the extra loss weights) on one tiny batch."""
    from diff3r_cli.model.predictor import build_predictor
    from diff3r_cli.train import Batch, TrainConfig, train_step
    from diff3r_cli.train.config import LossConfig
    from diff3r_cli.train.steps import Timer

    torch.manual_seed(0)
    model = build_predictor("small", **TINY)
    cpu = torch.device("cpu")
    batch = Batch.from_collated(_step_batch(1, seed=3), cpu)
    plain = train_step(model, batch, TrainConfig(stage="ff", loss=LossConfig(ssim_weight=0.0)), Timer(cpu))
    model.zero_grad()
    extra = train_step(model, batch, TrainConfig(stage="ff", loss=LossConfig(ssim_weight=0.0, **loss_kw)), Timer(cpu))
    return model, batch, plain, extra


def test_context_weight_adds_the_context_views_loss():
    # stage ff with context_weight w: loss = ℓ(targets) + w·ℓ(context views), written out by hand
    w = 0.7
    model, batch, plain, with_ctx = _ff_loss_with(context_weight=w)
    ctx_mse = _context_mse(model, batch)
    assert ctx_mse > 1e-4
    assert with_ctx.loss_sum == pytest.approx(plain.loss_sum + w * ctx_mse, rel=1e-5)


def test_lam_floor_is_set_in_the_trained_model(synth_root, tmp_path):
    from diff3r_cli.train import train_main

    out = tmp_path / "floor"
    train_main(data_root=str(synth_root), steps=2, out=str(out), lam_floor=10.0, **COMMON)
    model = load_model(out / "model.safetensors")
    assert model.cfg.lam_floor == 10.0
    assert json.loads((out / "config.json").read_text())["lam_floor"] == 10.0


@pytest.mark.parametrize("ff_weight", [0.0, 0.5])
def test_context_weight_applies_in_stage_diff3r(ff_weight):
    # stage diff3r adds w·ℓ(θ0 on the context views) too, with or without the ff loss
    from diff3r_cli.model.predictor import build_predictor
    from diff3r_cli.train import Batch, TrainConfig, train_step
    from diff3r_cli.train.config import InnerConfig, LossConfig
    from diff3r_cli.train.steps import Timer

    torch.manual_seed(0)
    model = build_predictor("small", **TINY)
    cpu = torch.device("cpu")
    batch = Batch.from_collated(_step_batch(1, seed=3), cpu)
    inner = InnerConfig(steps=1)

    def step(w):
        model.zero_grad()
        cfg = TrainConfig(stage="diff3r", inner=inner, loss=LossConfig(ssim_weight=0.0, ff_weight=ff_weight,
                                                                         context_weight=w))
        return train_step(model, batch, cfg, Timer(cpu))

    plain, w = step(0.0), 0.7
    with_ctx = step(w)
    ctx_mse = _context_mse(model, batch)
    assert ctx_mse > 1e-4
    assert with_ctx.loss_sum == pytest.approx(plain.loss_sum + w * ctx_mse, rel=1e-4)


def test_inner_lr_and_hessian_reach_the_layer(monkeypatch):
    from diff3r_cli.model.predictor import build_predictor
    from diff3r_cli.optim import implicit
    from diff3r_cli.train import Batch, TrainConfig, train_step
    from diff3r_cli.train.config import InnerConfig
    from diff3r_cli.train.steps import Timer

    seen = {}
    real = implicit.optimization_layer_with_stats

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(implicit, "optimization_layer_with_stats", spy)
    torch.manual_seed(0)
    model = build_predictor("small", **TINY)
    batch = Batch.from_collated(_step_batch(1, seed=3), torch.device("cpu"))
    cfg = TrainConfig(stage="diff3r", inner=InnerConfig(steps=1, lr=4.0, hessian="exact"))
    train_step(model, batch, cfg, Timer(torch.device("cpu")))
    assert seen["lr"] == 4.0 and seen["hessian"] == "exact"
    cli = TrainConfig.from_options(inner_lr=4.0, inner_hessian="exact")
    assert (cli.inner.lr, cli.inner.hessian) == (4.0, "exact")
    with pytest.raises(UserError, match="inner-hessian"):
        TrainConfig.from_options(inner_hessian="newton").validate()
    with pytest.raises(UserError, match="inner-lr"):
        TrainConfig.from_options(inner_lr=4.0, inner_optimizer="lm").validate()


def test_depth_range_is_set_in_the_trained_model(synth_root, tmp_path):
    from diff3r_cli.train import train_main

    out = tmp_path / "norm"
    train_main(data_root=str(synth_root), steps=1, out=str(out), depth_range="normalised", **COMMON)
    assert load_model(out / "model.safetensors").cfg.depth_range == "normalised"
    assert json.loads((out / "config.json").read_text())["depth_range"] == "normalised"


def test_depth_weight_adds_the_reprojection_loss():
    from diff3r_cli.train.depth_loss import reprojection_loss

    w = 0.3
    model, batch, plain, with_depth = _ff_loss_with(depth_weight=w)
    with torch.no_grad():
        out = model(batch.context_images, batch.context_K, batch.context_w2c, batch.near, batch.far)
        ref = float(reprojection_loss(out.depth[0], batch.context_images[0], batch.context_K[0], batch.context_w2c[0]))
    assert ref > 1e-4
    assert with_depth.loss_sum == pytest.approx(plain.loss_sum + w * ref, rel=1e-5)
