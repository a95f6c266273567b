"""`train_main`: the entry of `diff3r train` and of library callers."""

from __future__ import annotations

from typing import Any, Optional

from diff3r_cli.train.config import TrainConfig
from diff3r_cli.train.loop import run_training


def train_main(*, return_model: bool = False, **options: Any) -> Optional[dict]:
    """Train the predictor. Returns a summary dict (status, step, last metrics, run dir) on rank 0.

    ``options`` are TrainConfig's flat names, defaults in `TrainConfig` (the CLI's too). The main
    ones: data: "re10k" | "synthetic" (RE10K-format chunks under data_root; synthetic without a
    root generates a small set into the run dir). stage: "ff" | "diff3r". steps: total optimizer
    steps of the run. resume: True (this run dir) or a run dir / ckpt-*.pt; continues exactly,
    keeping the run's own settings (see train.config). init: weights (.safetensors / run dir) to
    start from, e.g. a stage-ff run for stage diff3r. outliers: probability that an example's
    context views get occluders / exposure changes (targets stay clean). stop_after: stop (with a
    checkpoint) once this many steps are done, without changing the schedule; time_limit: the same
    in seconds of wall time. lam_lr: learning rate of Λ's per-group log-scale. model_overrides:
    PredictorConfig fields (tests use tiny models). eval_every/eval_scenes/eval_root: every N
    steps, target-view PSNR of θ0 on the first eval_scenes test scenes of eval_root (default: the
    training root), with the mean-colour baseline, logged as {"type": "eval"}; eval_tto_steps
    (default: inner_steps in stage diff3r, 0 in stage ff) adds the PSNR after TTO with the
    predicted Λ and with Λ = 0. resolution: the short side (native aspect, batches grouped by
    size). view_sampler: "angle" (real sequences; the default for re10k) or "gap" (synthetic).
    return_model: also return the trained module (key "model") for callers in Python.
    """
    cfg = TrainConfig.from_options(**options)
    cfg.validate()
    return run_training(cfg, return_model=return_model)


__all__ = ["train_main"]
