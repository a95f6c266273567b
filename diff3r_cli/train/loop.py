"""The training loop: step, log, evaluate, checkpoint, until done or asked to stop."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.train import steps
from diff3r_cli.train.checkpoint import TrainState, capture_rng, save_checkpoint
from diff3r_cli.train.config import TrainConfig
from diff3r_cli.train.distributed import all_reduce_grads, any_rank, barrier, gather_objects
from diff3r_cli.train.evaluation import evaluate_predictor
from diff3r_cli.train.progress import open_progress
from diff3r_cli.train.session import Session, open_session
from diff3r_cli.train.signals import StopFlag
from diff3r_cli.train.steps import Batch, StepResult, Timer
from diff3r_cli.train.window import MetricsWindow


@dataclass
class _Progress:
    """What this process's part of the run has done so far."""

    t_start: float = field(default_factory=time.perf_counter)
    steps_this_run: int = 0
    skipped_total: int = 0
    last: dict = field(default_factory=dict)  # the latest train log record
    last_eval: Optional[dict] = None
    status: str = "finished"                  # | "interrupted" (signal) | "stopped" (stop_after, time_limit)


def run_training(cfg: TrainConfig, *, return_model: bool = False) -> Optional[dict]:
    """Open the run, train to ``cfg.schedule.steps`` (or a stop), save; the summary on rank 0."""
    s = open_session(cfg)
    cfg = s.cfg
    bar = open_progress(cfg.logging.progress and s.dist.main, cfg.stage, cfg.schedule.steps, s.step)
    flag, prog, window = StopFlag(), _Progress(), MetricsWindow()
    s.model.train()
    if cfg.eval.every and s.step == 0:  # where the untrained network stands
        _evaluate(s, prog)
    try:
        with flag.installed():
            while s.step < cfg.schedule.steps:
                result, timer, grad_norm = _train_one_step(s)
                prog.steps_this_run += 1
                prog.skipped_total += result.skipped
                window.add(result, timer.t)
                stop = any_rank(flag.requested or _limit_reached(cfg, prog), s.dist)  # all ranks stop together
                if s.step % cfg.logging.log_every == 0 or s.step == cfg.schedule.steps or stop:
                    _log_window(s, window, prog, grad_norm, bar)
                if cfg.eval.every and (s.step % cfg.eval.every == 0 or s.step == cfg.schedule.steps):
                    _evaluate(s, prog)
                if (cfg.schedule.ckpt_every and s.step % cfg.schedule.ckpt_every == 0) or s.step == cfg.schedule.steps \
                        or stop:
                    _checkpoint(s)
                if stop:
                    prog.status = "interrupted" if flag.requested else "stopped"
                    break
    finally:
        if bar is not None:
            bar.stop()
    _finish(s, prog.status)
    return _summary(s, prog, flag, return_model)


def _train_one_step(s: Session) -> tuple[StepResult, Timer, float]:
    """Read a batch, forward + backward, average gradients over ranks, clip, step the optimizer."""
    timer = Timer(s.dist.device)
    with timer("data"):
        batch = Batch.from_collated(s.stream.next_batch(), s.dist.device)
    s.optimizer.zero_grad(set_to_none=True)
    result = steps.train_step(s.model, batch, s.cfg, timer)  # via the module: tests wrap it
    with timer("optimizer"):
        all_reduce_grads(s.params, s.dist)
        clip = s.cfg.optim.grad_clip
        gn = torch.nn.utils.clip_grad_norm_(s.params, clip) if clip > 0 else torch.tensor(0.0)
        if torch.isfinite(gn):
            s.optimizer.step()
        else:  # all ranks see the same averaged gradient, so all skip together
            result.skipped += 1
        s.scheduler.step()
    s.step += 1
    return result, timer, float(gn)


def _limit_reached(cfg: TrainConfig, prog: _Progress) -> bool:
    """stop_after steps done in this process, or time_limit seconds passed."""
    sched = cfg.schedule
    if sched.stop_after is not None and prog.steps_this_run >= sched.stop_after:
        return True
    return sched.time_limit is not None and time.perf_counter() - prog.t_start >= sched.time_limit


def _append_log(s: Session, record: dict) -> None:
    """One line of log.jsonl (rank 0 only; append-only)."""
    if s.dist.main:
        with open(s.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def _log_window(s: Session, window: MetricsWindow, prog: _Progress, grad_norm: float, bar) -> None:
    """Reduce the window over ranks, log it, show it."""
    prog.last = window.record(s.step, s.dist, lr=s.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                              skipped_total=prog.skipped_total, epoch=s.stream.epoch,
                              wall_s=time.perf_counter() - prog.t_start)
    _append_log(s, prog.last)
    if bar is not None:
        bar.update(prog.last)


def _evaluate(s: Session, prog: _Progress) -> None:
    """Training-time evaluation on rank 0, logged as {"type": "eval"}."""
    if not s.dist.main:
        return
    cfg = s.cfg
    ev = evaluate_predictor(s.model, Path(cfg.eval.root) if cfg.eval.root else s.root, cfg.data.resolution,
                            cfg.data.context_views, cfg.eval.scenes, s.dist.device, backend=cfg.runtime.render_backend,
                            tto_steps=cfg.eval.tto_steps, tto_optimizer=cfg.inner.optimizer)
    if ev is not None:
        prog.last_eval = ev
        _append_log(s, {"type": "eval", "step": s.step, **ev})


def _checkpoint(s: Session) -> None:
    """Gather every rank's data position; rank 0 writes the checkpoint."""
    streams = gather_objects(s.stream.state_dict(), s.dist)
    if s.dist.main:
        state = TrainState(s.step, s.optimizer.state_dict(), s.scheduler.state_dict(), capture_rng(), streams, s.meta)
        save_checkpoint(s.out, s.model, state)


def _finish(s: Session, status: str) -> None:
    """A finished run's final weights (model.safetensors); all ranks leave together."""
    if s.dist.main and status == "finished":
        from diff3r_cli.model.io import save_model
        save_model(s.out / "model.safetensors", s.model, {**s.meta, "step": s.step})
    barrier(s.dist)


def _summary(s: Session, prog: _Progress, flag: StopFlag, return_model: bool) -> Optional[dict]:
    """What train_main returns: on rank 0 (every rank with return_model)."""
    last = prog.last
    summary = {"status": prog.status, "step": s.step, "out": str(s.out), "loss": last.get("loss"),
               "psnr": last.get("psnr"), "steps_per_s": last.get("steps_per_s"), "skipped_total": prog.skipped_total,
               "parameters": s.model.num_parameters(), "world_size": s.dist.world}
    if prog.status == "interrupted":
        summary["signal"] = flag.signum
    if prog.last_eval:
        ev = prog.last_eval
        summary.update({"eval_psnr": ev["psnr"], "eval_psnr_mean_colour": ev["psnr_mean_colour"]})
    if return_model:
        summary.update({"model": s.model, "rank": s.dist.rank, "last": last})
    elif not s.dist.main:
        return None  # under torchrun only rank 0 reports
    return summary


__all__ = ["run_training"]
