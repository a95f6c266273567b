"""Opening a run: resume or start, the data, the model, the optimizer, the stream, config.json.

Order matters for exact resumes: the seed is set just before the model is built, and the saved
random states are restored after everything that is built from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.errors import UserError
from diff3r_cli.fsio import atomic_write_bytes, atomic_write_json
from diff3r_cli.train.checkpoint import TrainState, find_checkpoint, load_state, restore_rng
from diff3r_cli.train.config import TrainConfig, saved_options
from diff3r_cli.train.data import dataset_factory, resolve_data
from diff3r_cli.train.distributed import Dist, broadcast_module, set_threads, setup_distributed
from diff3r_cli.train.optimizer import build_optimizer
from diff3r_cli.train.stream import DataStream


@dataclass
class Session:
    """The live objects of a run on this process."""

    cfg: TrainConfig      # defaults resolved, resumed settings applied
    dist: Dist
    root: Path            # the training data root
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: DataStream
    step: int             # optimizer steps done (continues a resumed run's count)
    meta: dict            # stored with every checkpoint and the final weights

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


@dataclass
class _Resume:
    state: TrainState
    weights: Path
    path: Path


def _find_resume(cfg: TrainConfig) -> Optional[_Resume]:
    """The checkpoint a --resume run continues from (None for a new run)."""
    if not cfg.resume:
        return None
    resume = cfg.resume
    src = cfg.out if resume is True or str(resume) in ("1", "true", "True") else Path(resume)
    weights, state_path = find_checkpoint(src)
    if state_path is None:
        raise UserError("no training state next to these weights", weights,
                        "resume needs a ckpt-*.pt; use --init to start a new run from weights")
    return _Resume(load_state(state_path), weights, state_path)


def _build_model(cfg: TrainConfig, resume: Optional[_Resume], dist: Dist) -> torch.nn.Module:
    """The resumed weights, the --init weights, or a new predictor; on the device, equal on all ranks."""
    from diff3r_cli.model.io import load_model
    from diff3r_cli.model.predictor import build_predictor

    torch.manual_seed(cfg.seed)
    if resume is not None:
        model = load_model(resume.weights, "cpu").train()
    elif cfg.model.init:
        model = load_model(find_checkpoint(cfg.model.init).weights, "cpu").train()
    else:
        model = build_predictor(cfg.model.size, **(cfg.model.overrides or {}))
    if cfg.model.lam_floor is not None:  # saved with the weights (the predictor's config)
        model.cfg.lam_floor = float(cfg.model.lam_floor)
    if cfg.model.depth_range is not None:
        model.cfg.depth_range = cfg.model.depth_range
    if cfg.model.depth_residual is not None:
        model.cfg.depth_residual = cfg.model.depth_residual
    if cfg.model.freeze_backbone:
        if not hasattr(model, "pretrained_parameters"):
            raise UserError("--freeze-backbone needs a released backbone", cfg.model.init,
                            "start from one with --init mvsplat.ckpt, or drop --freeze-backbone")
        for p in model.pretrained_parameters():
            p.requires_grad_(False)
    model = model.to(dist.device)
    broadcast_module(model, dist)
    return model


def _stream_state(resume: Optional[_Resume], dist: Dist) -> Optional[dict]:
    """This rank's saved position in the data (None for a new run)."""
    if resume is None:
        return None
    streams = resume.state.streams
    if len(streams) != dist.world:
        raise UserError(f"checkpoint was written by {len(streams)} process(es), this run has {dist.world}",
                        resume.path, "resume with the same number of processes")
    return streams[dist.rank]


def trim_log(log: Path, step: int) -> int:
    """Drop the records of log.jsonl past ``step`` (written after the checkpoint a resume starts
    from, by a process that was killed), so the resumed run's curve has each step once.
    Returns how many records were dropped; the file is rewritten atomically only if any were."""
    if not log.exists():
        return 0
    lines = log.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            rec_step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by the kill
        if rec_step is None or rec_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        atomic_write_bytes(log, "".join(kept).encode())
    return len(lines) - len(kept)


def open_session(cfg: TrainConfig) -> Session:
    """Set up a run from a validated config: resumed (with the saved settings) or new."""
    dist = setup_distributed(cfg.runtime.device)
    set_threads(cfg.runtime.threads, dist)
    resume = _find_resume(cfg)
    if resume is not None:
        cfg = cfg.resumed(resume.state.options)
    out = Path(cfg.out)
    if resume is None and (out / "latest.json").exists():
        raise UserError("this run directory already holds a training run", out,
                        "pass --resume to continue it, or choose another --out")
    cfg = cfg.with_defaults_resolved()
    out.mkdir(parents=True, exist_ok=True)
    root = resolve_data(cfg.data, cfg.seed, out, dist)
    model = _build_model(cfg, resume, dist)
    optimizer, scheduler = build_optimizer(model, cfg, resume.state if resume else None,
                                           resume.path if resume else None)
    stream_state = _stream_state(resume, dist)
    if resume is not None:
        restore_rng(resume.state.rng)
    stream = DataStream(dataset_factory(cfg.data, root, cfg.seed, dist, model.cfg.depth_range), cfg.data.batch,
                        stream_state)
    options = saved_options(cfg, root, model.cfg.size, dist.world)
    meta = {"stage": cfg.stage, "data": cfg.data.kind, "resolution": cfg.data.resolution, "options": options,
            "num_parameters": model.num_parameters()}
    if dist.main:
        atomic_write_json(out / "config.json", options)
        if resume is not None:
            trim_log(out / "log.jsonl", resume.state.step)
    return Session(cfg, dist, root, model, [p for p in model.parameters() if p.requires_grad], optimizer, scheduler,
                   stream, resume.state.step if resume else 0, meta)


__all__ = ["Session", "open_session", "trim_log"]
