"""`diff3r train`: train the predictor, stage "ff" (plain feed-forward) or "diff3r" (through TTO).

stage ff:     loss = ℓ(render(θ0, targets), targets)
stage diff3r: θ* = optimization_layer(θ0, Λ, context views, K inner steps)
              loss = ℓ(render(θ*, targets), targets) + α·ℓ(render(θ0, targets), targets)
with ℓ = MSE + w·(1 − SSIM). Gradients reach θ0 and Λ through the IFT backward of the layer.

Run directory (``out``):
  config.json                 the options of the run
  log.jsonl                   one JSON object per logged step / evaluation (append-only)
  ckpt-<step>.safetensors     predictor weights (+ config/meta; loadable by model.io.load_model)
  ckpt-<step>.pt              optimizer, scheduler, RNG and data-stream state
  latest.json                 which checkpoint is complete (written last, atomically)
  model.safetensors           final weights

Determinism: data order is a function of (seed, epoch, position) and the position is part
of the checkpoint, so ``resume`` continues the run exactly (bit for bit on CPU).

Multi-process: launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the
processes form a gloo (CPU) or NCCL (CUDA) group; each rank reads its own shard of the
data, gradients are averaged with one all-reduce per step, rank 0 logs and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.metrics import psnr_from_mse, ssim
from diff3r_cli.fsio import atomic_save, atomic_write_json

STAGES = ("ff", "diff3r")
DATA_KINDS = ("re10k", "synthetic")
DEFAULT_SYNTH_ROOT = Path("runs") / "data" / "synth"


# ----------------------------------------------------------------------------- small utilities

def image_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE + w·(1 − SSIM) over a stack of (T,H,W,3) images; returns (loss, mse)."""
    m = ((pred - target) ** 2).mean()
    if ssim_weight > 0 and min(pred.shape[-3:-1]) >= 11:
        return m + ssim_weight * (1 - ssim(pred, target).mean()), m
    return m, m


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | None) -> Dist:
    """Detect torchrun's environment; init gloo (CPU) or NCCL (CUDA). Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is visible", fix="use --device cpu")
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


def _all_reduce_grads(params: list[torch.nn.Parameter], dist: Dist) -> None:
    """Average gradients over ranks with one flat all-reduce (missing grads count as zero)."""
    if not dist.enabled:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= dist.world
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def _all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- data

def _resolve_data(data: str, data_root: str | None, resolution: int, seed: int, out: Path, dist: Dist) -> Path:
    """Where the RE10K-format chunks are; for ``synthetic`` without a root, generate a small set."""
    from diff3r_cli.scene_io.re10k import LAYOUT_HINT

    if data not in DATA_KINDS:
        raise UserError(f"unknown --data {data!r}", fix=f"use one of {', '.join(DATA_KINDS)}")
    if data == "re10k":
        root = Path(data_root) if data_root else Path("data") / "re10k"
        if not (root / "train").is_dir() or not any((root / "train").glob("*.torch")):
            raise UserError("RE10K training data not found", root,
                            f"{LAYOUT_HINT}; pass --data-root <dir> or use --data synthetic")
        return root
    if data_root:
        root = Path(data_root)
        if not (root / "train").is_dir() or not any((root / "train").glob("*.torch")):
            raise UserError("synthetic training data not found", root,
                            f"{LAYOUT_HINT}; generate it with `diff3r synth` or omit --data-root to have "
                            "a small set generated into the run directory")
        return root
    root = out / "synthetic_data"
    if dist.main and not (root / "train" / "index.json").exists():
        from diff3r_cli.data.synth import generate_dataset
        generate_dataset(root, scenes=64, frames=24, resolution=max(resolution, 64), seed=seed, split="train", spp=2)
        generate_dataset(root, scenes=8, frames=24, resolution=max(resolution, 64), seed=seed, split="test", spp=2)
    if dist.enabled:
        torch.distributed.barrier()
    return root


class DataStream:
    """An endless, resumable stream of batches from RE10KDataset, grouped by image size.

    Examples keep their native aspect ratio, so consecutive samples may differ in size; a batch
    is the first ``batch`` samples of one size (a bucket), never a stretched or padded mix.
    With one size throughout (synthetic data) this is plain consecutive batching.

    State = (epoch, position in the epoch) of the oldest sample still waiting in a bucket (else
    of the next sample) plus the positions after it already consumed. The dataset's order and view
    sampling are pure functions of (seed, epoch, key), so re-creating it, skipping to that
    position and dropping the consumed ones reproduces the stream exactly.
    """

    def __init__(self, make_dataset, batch: int, state: dict | None = None):
        self.make_dataset = make_dataset
        self.batch = batch
        self.epoch = int(state["epoch"]) if state else 0
        self.pos = int(state["pos"]) if state else 0
        self._skip = {tuple(x) for x in (state or {}).get("consumed", [])}
        self._buckets: dict[tuple, list[tuple[int, int, dict]]] = {}
        self._consumed: set[tuple[int, int]] = set()
        self._it: Iterator[tuple[int, int, dict]] | None = None

    def state_dict(self) -> dict:
        pending = [(e, p) for items in self._buckets.values() for e, p, _ in items]
        if not pending:
            return {"epoch": self.epoch, "pos": self.pos}
        first = min(pending)
        return {"epoch": first[0], "pos": first[1], "consumed": sorted([e, p] for e, p in self._consumed if (e, p) > first)}

    def _samples(self) -> Iterator[tuple[int, int, dict]]:
        skip = self.pos
        while True:
            ds = self.make_dataset()
            ds.set_epoch(self.epoch)
            got = 0
            for sample in ds:
                got += 1
                if skip > 0:
                    skip -= 1
                    continue
                where = (self.epoch, self.pos)
                self.pos += 1
                if where in self._skip:  # consumed before the checkpoint this run resumed from
                    self._skip.discard(where)
                    continue
                yield where[0], where[1], sample
            if got == 0:
                raise UserError("the training data yields no usable examples for this process", ds.root,
                                "check the data (every example skipped?) or use fewer processes")
            self.epoch += 1
            self.pos = 0
            skip = 0

    def next_batch(self) -> dict:
        from diff3r_cli.data.re10k import collate

        if self._it is None:
            self._it = self._samples()
        while True:
            for key, items in self._buckets.items():
                if len(items) >= self.batch:
                    take, self._buckets[key] = items[:self.batch], items[self.batch:]
                    self._consumed.update((e, p) for e, p, _ in take)
                    pending = [(e, p) for its in self._buckets.values() for e, p, _ in its]
                    first = min(pending) if pending else None
                    # only consumed positions after the oldest waiting sample matter for resuming
                    self._consumed = {c for c in self._consumed if first is not None and c > first}
                    return collate([smp for _, _, smp in take])
            e, p, smp = next(self._it)
            key = tuple(smp["context_images"].shape[1:3]) + tuple(smp["target_images"].shape[1:3])
            self._buckets.setdefault(key, []).append((e, p, smp))


# ----------------------------------------------------------------------------- checkpoints

def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """A run dir (-> its latest checkpoint), a ckpt-*.pt or a .safetensors -> (weights, state or None)."""
    p = Path(path)
    if p.is_dir():
        latest = p / "latest.json"
        if not latest.exists():
            raise UserError("no checkpoint in this run directory", p, "train first, or point at a .safetensors file")
        try:
            name = json.loads(latest.read_text())["checkpoint"]
        except (ValueError, KeyError) as e:
            raise UserError(f"unreadable latest.json ({e})", latest, "point at a ckpt-*.pt file instead") from None
        p = p / name
    if p.suffix == ".pt":
        w = p.with_suffix(".safetensors")
        if not p.is_file() or not w.is_file():
            raise UserError("checkpoint incomplete (need both .pt and .safetensors)", p, "resume from another checkpoint")
        return w, p
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise UserError("checkpoint weights not found", p, "pass an existing .safetensors file or run directory")
        st = p.with_suffix(".pt")
        return p, (st if st.is_file() else None)
    raise UserError("not a checkpoint", p, "pass a run directory, a ckpt-*.pt or a .safetensors file")


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, streams: list[dict], meta: dict,
                    keep: int = 2) -> Path:
    """Write ckpt-<step>.{safetensors,pt} atomically, then point latest.json at them."""
    from diff3r_cli.model.io import save_model

    name = f"ckpt-{step:07d}"
    save_model(out / f"{name}.safetensors", model, {**meta, "step": step})
    atomic_save(out / f"{name}.pt", lambda f: torch.save({
        "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": _rng_state(), "streams": streams, "meta": meta,
    }, f))
    atomic_write_json(out / "latest.json", {"checkpoint": f"{name}.pt", "step": step})
    olds = sorted(out.glob("ckpt-*.pt"))
    for old in olds[:-keep]:
        for suffix in (".pt", ".safetensors"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return out / f"{name}.pt"


# ----------------------------------------------------------------------------- signals

class _StopFlag:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, exit (a second SIGINT aborts)."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    @contextmanager
    def installed(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        try:
            yield self
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------- one step

class _Timer:
    def __init__(self, device: torch.device):
        self.t: dict[str, float] = {}
        self.device = device

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


def _lr_lambda(warmup: int, total: int, final_frac: float = 0.1):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _render(g, K, w2c, w, h, backend):
    from diff3r_cli.render import render
    return render(g, Cameras(K, w2c, w, h), backend=backend).rgb


def train_step(model, batch: dict, opts: dict, dist: Dist, timer: _Timer) -> dict:
    """Forward + backward for one batch (no optimizer step). Returns scalars for the log."""
    dev = dist.device
    ctx = batch["context_images"].to(dev)
    b, v, h, w, _ = ctx.shape
    ctx_K, ctx_w2c = batch["context_K"].to(dev), batch["context_w2c"].to(dev)
    tgt, tgt_K, tgt_w2c = batch["target_images"].to(dev), batch["target_K"].to(dev), batch["target_w2c"].to(dev)
    with timer("network"):
        out = model(ctx, ctx_K, ctx_w2c, batch["near"].to(dev), batch["far"].to(dev))
    sw = opts["ssim_weight"]
    losses, mses, mses0, skipped, pcg_iters = [], [], [], 0, []
    backend = opts["render_backend"]
    layer_stats = []
    for k in range(b):
        g0, lam = out.gaussians[k], out.lam[k]
        if opts["stage"] == "ff":
            with timer("render"):
                pred = _render(g0, tgt_K[k], tgt_w2c[k], w, h, backend)
            loss, m = image_loss(pred, tgt[k], sw)
            losses.append(loss)
            mses.append(m.item())
            continue
        from diff3r_cli.optim.implicit import optimization_layer
        stats: dict = {}
        try:
            with timer("inner_tto"):
                g_star = optimization_layer(g0, lam, Cameras(ctx_K[k], ctx_w2c[k], w, h), ctx[k],
                                            opts["inner_steps"], opts["inner_optimizer"], stats=stats,
                                            backend=backend, pcg_max_iter=opts["pcg_max_iter"])
        except NumericalError:
            skipped += 1
            continue
        layer_stats.append(stats)
        with timer("render"):
            pred = _render(g_star, tgt_K[k], tgt_w2c[k], w, h, backend)
        loss, m = image_loss(pred, tgt[k], sw)
        mses.append(m.item())
        alpha = opts["ff_weight"]
        if alpha > 0:
            with timer("render"):
                pred0 = _render(g0, tgt_K[k], tgt_w2c[k], w, h, backend)
            loss0, m0 = image_loss(pred0, tgt[k], sw)
            loss = loss + alpha * loss0
            mses0.append(m0.item())
        else:  # still log θ0's PSNR, to see what the inner TTO adds
            with torch.no_grad(), timer("render"):
                pred0 = _render(g0.detach(), tgt_K[k], tgt_w2c[k], w, h, backend)
            mses0.append(float(((pred0 - tgt[k]) ** 2).mean()))
        losses.append(loss)
    # Keep every parameter in the graph even when all examples were skipped, so the
    # all-reduce below sees the same tensors on every rank.
    # Mean over the examples that produced a loss: an example skipped for a numerical failure
    # must not shrink the others' weight (dividing by b would).
    total = sum(losses) / len(losses) if losses else 0.0 * sum(p.sum() for p in model.parameters())
    with timer("backward"):
        total.backward()
    pcg_time = sum(s.get("backward_time_s", 0.0) for s in layer_stats)
    if layer_stats:
        timer.t["pcg_backward"] = pcg_time
        pcg_iters = [s.get("backward_pcg_iterations") for s in layer_stats]
    return {"loss_sum": total.item() * len(losses) if losses else 0.0, "n": len(losses), "mse": mses,
            "mse0": mses0, "skipped": skipped, "pcg_iterations": pcg_iters,
            "fallbacks": sum(bool(s.get("backward_fallback")) for s in layer_stats),
            "pcg_misses": sum(bool(s.get("backward_pcg_miss")) for s in layer_stats),
            "nonfinite_grads": sum(int(s.get("backward_nonfinite_grad") or 0) for s in layer_stats)}


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_predictor(model, root: Path, resolution: int, num_context: int, max_scenes: int, dist: Dist,
                       backend: str = "auto", tto_steps: int = 0, tto_optimizer: str = "adam") -> dict | None:
    """Target-view PSNR of θ0 on the test split (fixed views) and the mean-colour baseline.

    The baseline paints each target view with the mean colour of that scene's context views.
    With tto_steps > 0 also the PSNR after TTO on the context views, with the predicted Λ
    (psnr_tto) and with Λ = 0 (plain TTO, psnr_tto_plain). Returns None without a test split.
    """
    from diff3r_cli.data.re10k import RE10KDataset

    ev = root / "evaluation_index.json"
    if not (root / "test").is_dir() or not ev.exists():
        return None
    was_training = model.training
    model.eval()
    ds = RE10KDataset(root, "test", resolution=resolution, evaluation_index=ev, warn=False)
    ps, ps_base, ss, ps_tto, ps_plain = [], [], [], [], []
    try:
        for i, s in enumerate(ds):
            if i >= max_scenes:
                break
            if s["context_images"].shape[0] != num_context:
                continue
            dev = dist.device
            H, W = s["context_images"].shape[1:3]  # native aspect: the size differs per scene
            out = model(s["context_images"][None].to(dev), s["context_K"][None].to(dev),
                        s["context_w2c"][None].to(dev), s["near"][None].to(dev), s["far"][None].to(dev))
            pred = _render(out.gaussians[0], s["target_K"].to(dev), s["target_w2c"].to(dev), W, H,
                           backend).clamp(0, 1)
            tgt = s["target_images"].to(dev)
            base = s["context_images"].to(dev).mean(dim=(0, 1, 2)).expand_as(tgt)
            ps.extend(psnr_from_mse(float(((pred[t] - tgt[t]) ** 2).mean())) for t in range(len(tgt)))
            ps_base.extend(psnr_from_mse(float(((base[t] - tgt[t]) ** 2).mean())) for t in range(len(tgt)))
            if min(H, W) >= 11:
                ss.extend(ssim(pred, tgt).tolist())
            if tto_steps > 0:
                from diff3r_cli.optim.tto import optimize
                cams = Cameras(s["context_K"].to(dev), s["context_w2c"].to(dev), W, H)
                for lam, acc in ((out.lam[0], ps_tto), (None, ps_plain)):
                    try:
                        g_star, _ = optimize(out.gaussians[0], lam, cams, s["context_images"].to(dev), tto_steps,
                                             tto_optimizer, backend=backend)
                    except NumericalError:
                        continue
                    pr = _render(g_star, s["target_K"].to(dev), s["target_w2c"].to(dev), W, H,
                                 backend).clamp(0, 1)
                    acc.extend(psnr_from_mse(float(((pr[t] - tgt[t]) ** 2).mean())) for t in range(len(tgt)))
    finally:
        model.train(was_training)
    if not ps:
        return None
    res = {"psnr": float(np.mean(ps)), "psnr_mean_colour": float(np.mean(ps_base)),
           "ssim": float(np.mean(ss)) if ss else None, "views": len(ps)}
    if tto_steps > 0:
        res.update({"tto_steps": tto_steps, "psnr_tto": float(np.mean(ps_tto)) if ps_tto else None,
                    "psnr_tto_plain": float(np.mean(ps_plain)) if ps_plain else None})
    return res


# ----------------------------------------------------------------------------- main entry

def train_main(data: str = "synthetic", data_root: str | None = None, stage: str = "ff", steps: int = 1000,
               resolution: int = 64, batch: int = 1, out: str | Path = "runs/train", resume: str | bool | None = None,
               init: str | None = None, outliers: float = 0.0, lr: float = 2e-4, lam_lr: float = 1e-2,
               inner_steps: int = 5, inner_optimizer: str = "adam", ckpt_every: int = 200, log_every: int = 10,
               eval_every: int = 0, eval_scenes: int = 8, eval_root: str | None = None,
               eval_tto_steps: int | None = None, model_size: str = "small", seed: int = 0, context_views: int = 2,
               target_views: int = 2, min_gap: int | None = None, max_gap: int | None = None,
               view_sampler: str | None = None, ssim_weight: float = 0.05, ff_weight: float = 0.0, grad_clip: float = 1.0, warmup: int | None = None,
               weight_decay: float = 0.0, pcg_max_iter: int = 50, render_backend: str = "auto",
               device: str | None = None, threads: int | None = None, progress: bool = True,
               stop_after: int | None = None, time_limit: float | None = None, model_overrides: dict | None = None,
               return_model: bool = False, **unknown) -> dict | None:
    """Train the predictor. Returns a summary dict (status, step, last metrics, run dir) on rank 0.

    data: "re10k" | "synthetic" (RE10K-format chunks under data_root; synthetic without a
    root generates a small set into the run dir). stage: "ff" | "diff3r". steps: total
    optimizer steps of the run. resume: True (this run dir) or a run dir / ckpt-*.pt;
    continues exactly. init: weights (.safetensors / run dir) to start from, e.g. a stage-ff
    run for stage diff3r. outliers: probability that an example's context views get
    occluders / exposure changes (targets stay clean). stop_after: stop (with a checkpoint)
    once this many steps are done, without changing the schedule; time_limit: the same in
    seconds of wall time. lam_lr: learning rate of Λ's per-group log-scale (the rest of the
    network uses lr). model_overrides: PredictorConfig fields (tests use tiny models).
    return_model: also return the trained module (key "model") for callers in Python.
    eval_every/eval_scenes/eval_root: every N steps, target-view PSNR of θ0 on the first
    eval_scenes test scenes (fixed views from evaluation_index.json) of eval_root (default:
    the training root), with the mean-colour baseline, logged as {"type": "eval"};
    eval_tto_steps (default: inner_steps in stage diff3r, 0 in stage ff) adds the PSNR after
    TTO with the predicted Λ and with Λ = 0. resolution: the short side (native aspect, batches
    grouped by size). view_sampler: "angle" (by viewing angle and shared content, for real
    sequences; the default for re10k data) or "gap" (by frame gap; the default for synthetic).
    """
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(sorted(unknown))}", fix="see `diff3r train --help`")
    if stage not in STAGES:
        raise UserError(f"unknown --stage {stage!r}", fix=f"use one of {', '.join(STAGES)}")
    if steps < 1 or batch < 1 or resolution < 16:
        raise UserError(f"invalid settings (steps={steps}, batch={batch}, resolution={resolution})",
                        fix="use steps >= 1, batch >= 1, resolution >= 16")
    if not 0.0 <= outliers <= 1.0:
        raise UserError(f"--outliers must be a probability in [0, 1], got {outliers}", fix="e.g. --outliers 0.5")
    if context_views < 2:
        raise UserError("the predictor needs at least 2 context views", fix="use --context-views 2 or more")
    out = Path(out)
    dist = setup_distributed(device)
    if threads:
        torch.set_num_threads(int(threads))
    elif dist.enabled and dist.device.type == "cpu":
        # K CPU processes each using every core thrash badly: split the cores between them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig
    from diff3r_cli.model.io import load_model, save_model
    from diff3r_cli.model.predictor import build_predictor

    # ---- resume / init
    resume_state = None
    if resume:
        src = out if resume is True or str(resume) in ("1", "true", "True") else Path(resume)
        weights, state_path = find_checkpoint(src)
        if state_path is None:
            raise UserError("no training state next to these weights", weights,
                            "resume needs a ckpt-*.pt; use --init to start a new run from weights")
        resume_state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = resume_state["meta"].get("options", {})
        # A resumed run keeps its own data, model and schedule-defining settings (whatever
        # the command line says); only the total number of steps may be extended.
        data = saved.get("data", data)
        data_root = data_root or saved.get("data_root")
        stage = saved.get("stage", stage)
        resolution = saved.get("resolution", resolution)
        batch = saved.get("batch", batch)
        seed = saved.get("seed", seed)
        outliers = saved.get("outliers", outliers)
        context_views = saved.get("context_views", context_views)
        target_views = saved.get("target_views", target_views)
        min_gap = saved.get("min_gap", min_gap)
        max_gap = saved.get("max_gap", max_gap)
        view_sampler = saved.get("view_sampler", "gap")  # runs from before the angle sampler used gaps
        inner_steps = saved.get("inner_steps", inner_steps)
        ssim_weight = saved.get("ssim_weight", ssim_weight)
        ff_weight = saved.get("ff_weight", ff_weight)
        warmup = saved.get("warmup", warmup)

    if resume_state is None and (out / "latest.json").exists():
        raise UserError("this run directory already holds a training run", out,
                        "pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    root = _resolve_data(data, data_root, resolution, seed, out, dist)

    torch.manual_seed(seed)
    if resume_state is not None:
        model = load_model(weights, "cpu").train()
    elif init:
        weights_init, _ = find_checkpoint(init)
        model = load_model(weights_init, "cpu").train()
    else:
        model = build_predictor(model_size, **(model_overrides or {}))
    model = model.to(dist.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if dist.enabled:  # every rank starts from rank 0's weights (as DDP does)
        for p in params:
            torch.distributed.broadcast(p.data, 0)
        for bf in model.buffers():
            torch.distributed.broadcast(bf.data, 0)

    # Λ's per-group log-scale is 5 global numbers that must travel several nats: own, larger rate.
    lam_params = [p for n, p in model.named_parameters() if n == "log_lam_bias"]
    other = [p for n, p in model.named_parameters() if n != "log_lam_bias" and p.requires_grad]
    groups = [{"params": other}, {"params": lam_params, "lr": lam_lr, "weight_decay": 0.0}]
    if resume_state is not None and len(resume_state["optimizer"]["param_groups"]) == 1:
        groups = [{"params": params}]  # runs started before lam_lr existed: their single group, same order
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    warm = warmup if warmup is not None else min(200, max(1, steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warm, steps))

    if view_sampler is None:
        view_sampler = "angle" if data == "re10k" else "gap"
    if view_sampler not in ("angle", "gap"):
        raise UserError(f"unknown view sampler {view_sampler!r}", fix="use angle or gap")
    sampler = ViewSamplerConfig(num_context=context_views, num_target=target_views, mode=view_sampler)
    if min_gap is not None:
        sampler.min_gap = min_gap
    if max_gap is not None:
        sampler.max_gap = max_gap
    outlier_cfg = None
    if outliers > 0:
        from diff3r_cli.data.outliers import OutlierConfig
        outlier_cfg = OutlierConfig(p_occluder=outliers, p_exposure=outliers * 0.6)

    def make_dataset():
        return RE10KDataset(root, "train", resolution=resolution, sampler=sampler, seed=seed, rank=dist.rank,
                            world_size=dist.world, outliers=outlier_cfg, warn=dist.main)

    step = 0
    stream_state = None
    if resume_state is not None:
        try:
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
        except (ValueError, KeyError) as e:
            raise UserError(f"the checkpoint's optimizer state does not fit this version of the trainer ({e})",
                            state_path, "start a new run with --init <checkpoint> instead of --resume") from None
        step = int(resume_state["step"])
        streams = resume_state["streams"]
        if len(streams) != dist.world:
            raise UserError(f"checkpoint was written by {len(streams)} process(es), this run has {dist.world}",
                            state_path, "resume with the same number of processes")
        stream_state = streams[dist.rank]
        _set_rng_state(resume_state["rng"])
    stream = DataStream(make_dataset, batch, stream_state)

    options = dict(data=data, data_root=str(root), stage=stage, steps=steps, resolution=resolution, batch=batch,
                   outliers=outliers, lr=lr, lam_lr=lam_lr, inner_steps=inner_steps, inner_optimizer=inner_optimizer,
                   model_size=model.cfg.size, seed=seed, context_views=context_views, target_views=target_views,
                   min_gap=sampler.min_gap, max_gap=sampler.max_gap, view_sampler=view_sampler,
                   ssim_weight=ssim_weight, ff_weight=ff_weight, grad_clip=grad_clip, warmup=warm,
                   world_size=dist.world, init=str(init) if init else None)
    opts = dict(stage=stage, ssim_weight=ssim_weight, ff_weight=ff_weight, inner_steps=inner_steps,
                inner_optimizer=inner_optimizer, render_backend=render_backend, pcg_max_iter=pcg_max_iter)
    meta = {"stage": stage, "data": data, "resolution": resolution, "options": options,
            "num_parameters": model.num_parameters()}
    log_path = out / "log.jsonl"
    if dist.main:
        atomic_write_json(out / "config.json", options)

    def log(rec: dict) -> None:
        if dist.main:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint() -> None:
        all_streams = [stream.state_dict()]
        if dist.enabled:
            gathered: list = [None] * dist.world
            torch.distributed.all_gather_object(gathered, stream.state_dict())
            all_streams = gathered
        if dist.main:
            save_checkpoint(out, step, model, optimizer, scheduler, all_streams, meta)

    bar = None
    if progress and dist.main:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        bar = Progress(TextColumn("[bold]train {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}  PSNR {task.fields[psnr]:.2f}  "
                                  "{task.fields[rate]:.2f} it/s"), TimeRemainingColumn())
        task = bar.add_task("train", total=steps, completed=step, stage=stage, loss=float("nan"), psnr=float("nan"),
                            rate=0.0)
        bar.start()

    flag = _StopFlag()
    status = "finished"
    last: dict = {}
    t_start = time.perf_counter()
    window: dict[str, Any] = {"loss": 0.0, "n": 0, "mse": [], "mse0": [], "skipped": 0, "time": {}, "steps": 0,
                              "t0": time.perf_counter(), "pcg": [], "fallbacks": 0}
    total_skipped = 0
    last_eval: dict | None = None
    model.train()
    steps_this_run = 0
    if eval_tto_steps is None:
        eval_tto_steps = inner_steps if stage == "diff3r" else 0
    eval_args = dict(backend=render_backend, tto_steps=eval_tto_steps, tto_optimizer=inner_optimizer)
    if eval_every and step == 0 and dist.main:  # where the untrained network stands
        ev0 = evaluate_predictor(model, Path(eval_root) if eval_root else root, resolution, context_views, eval_scenes,
                                 dist, **eval_args)
        if ev0 is not None:
            last_eval = ev0
            log({"type": "eval", "step": 0, **ev0})
    try:
        with flag.installed():
            while step < steps:
                timer = _Timer(dist.device)
                with timer("data"):
                    batch_data = stream.next_batch()
                optimizer.zero_grad(set_to_none=True)
                r = train_step(model, batch_data, opts, dist, timer)
                with timer("optimizer"):
                    _all_reduce_grads(params, dist)
                    gn = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
                    if torch.isfinite(gn):
                        optimizer.step()
                    else:  # all ranks see the same averaged gradient, so all skip together
                        r["skipped"] += 1
                    scheduler.step()
                step += 1
                steps_this_run += 1
                total_skipped += r["skipped"]
                window["loss"] += r["loss_sum"]
                window["n"] += r["n"]
                window["mse"] += r["mse"]
                window["mse0"] += r["mse0"]
                window["skipped"] += r["skipped"]
                window["steps"] += 1
                window["pcg"] += [x for x in r["pcg_iterations"] if x is not None]
                window["fallbacks"] += r["fallbacks"]
                window["pcg_misses"] = window.get("pcg_misses", 0) + r["pcg_misses"]
                window["nonfinite_grads"] = window.get("nonfinite_grads", 0) + r["nonfinite_grads"]
                for k2, v2 in timer.t.items():
                    window["time"][k2] = window["time"].get(k2, 0.0) + v2

                stop = flag.requested
                if stop_after is not None and steps_this_run >= stop_after:
                    stop = True
                if time_limit is not None and time.perf_counter() - t_start >= time_limit:
                    stop = True
                if dist.enabled:  # every rank must stop at the same step
                    stop = bool(_all_reduce_sum([float(stop)], dist)[0] > 0)

                if step % log_every == 0 or step == steps or stop:
                    loss_sum, n, sk, mse_sum, mse_n = _all_reduce_sum(
                        [window["loss"], window["n"], window["skipped"], float(sum(window["mse"])),
                         float(len(window["mse"]))], dist)
                    dt = time.perf_counter() - window["t0"]
                    # PSNR of the window's mean MSE over all ranks' target views
                    last = {"type": "train", "step": step, "loss": loss_sum / max(n, 1),
                            "psnr": psnr_from_mse(mse_sum / mse_n) if mse_n else None,
                            "lr": scheduler.get_last_lr()[0], "grad_norm": float(gn),
                            "steps_per_s": window["steps"] / dt, "skipped": int(sk), "skipped_total": total_skipped,
                            "time_per_step_s": {k2: v2 / window["steps"] for k2, v2 in window["time"].items()},
                            "epoch": stream.epoch, "wall_s": time.perf_counter() - t_start}
                    if window["mse0"]:
                        last["psnr_theta0"] = psnr_from_mse(float(np.mean(window["mse0"])))
                    if window["pcg"]:
                        last["pcg_iterations"] = float(np.mean(window["pcg"]))
                        last["pcg_fallbacks"] = window["fallbacks"]
                        last["pcg_misses"] = window.get("pcg_misses", 0)
                        last["nonfinite_grad_entries"] = window.get("nonfinite_grads", 0)
                    log(last)
                    if bar is not None:
                        bar.update(task, completed=step, loss=last["loss"], psnr=last["psnr"] or float("nan"),
                                   rate=last["steps_per_s"])
                    window = {"loss": 0.0, "n": 0, "mse": [], "mse0": [], "skipped": 0, "time": {}, "steps": 0,
                              "t0": time.perf_counter(), "pcg": [], "fallbacks": 0}
                if eval_every and (step % eval_every == 0 or step == steps) and dist.main:
                    ev = evaluate_predictor(model, Path(eval_root) if eval_root else root, resolution, context_views,
                                            eval_scenes, dist, **eval_args)
                    if ev is not None:
                        last_eval = ev
                        log({"type": "eval", "step": step, **ev})
                if (ckpt_every and step % ckpt_every == 0) or step == steps or stop:
                    checkpoint()
                if stop:
                    status = "interrupted" if flag.requested else "stopped"
                    break
    finally:
        if bar is not None:
            bar.stop()
    if dist.main and status == "finished":
        save_model(out / "model.safetensors", model, {**meta, "step": step})
    if dist.enabled:
        torch.distributed.barrier()
    summary = {"status": status, "step": step, "out": str(out), "loss": last.get("loss"), "psnr": last.get("psnr"),
               "steps_per_s": last.get("steps_per_s"), "skipped_total": total_skipped,
               "parameters": model.num_parameters(), "world_size": dist.world}
    if status == "interrupted":
        summary["signal"] = flag.signum
    if last_eval:
        summary.update({"eval_psnr": last_eval["psnr"], "eval_psnr_mean_colour": last_eval["psnr_mean_colour"]})
    if return_model:
        summary.update({"model": model, "rank": dist.rank, "last": last})
    elif not dist.main:
        return None  # under torchrun only rank 0 reports
    return summary


__all__ = ["train_main", "train_step", "evaluate_predictor", "image_loss", "DataStream", "find_checkpoint",
           "save_checkpoint", "setup_distributed"]
