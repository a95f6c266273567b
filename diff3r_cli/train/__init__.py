"""`diff3r train`: train the predictor, stage "ff" (plain feed-forward) or "diff3r" (through TTO).

Where things live:
  main.py         train_main: flat options -> TrainConfig -> the loop
  config.py       TrainConfig (typed tree, the one set of defaults, the resume rule), saved_options
  session.py      opening a run: resume or start, data, model, optimizer, stream, config.json
  loop.py         the loop: step, log, evaluate, checkpoint
  steps.py        Batch, ff_step / diff3r_step -> StepResult, image_loss, Timer
  window.py       MetricsWindow: the steps since the last log line -> one log record
  evaluation.py   training-time evaluation (through diff3r_cli.evaluate.views, as `diff3r eval`)
  checkpoint.py   TrainState; find / save / load checkpoints
  distributed.py  Dist, torchrun setup, all-reduce / gather / broadcast
  data.py         the data root (generated for a bare synthetic run), the per-rank dataset
  stream.py       DataStream: endless, resumable, same-size batches
  optimizer.py    AdamW groups, warm-up + cosine schedule
  signals.py      StopFlag: SIGINT/SIGTERM -> checkpoint and stop
  progress.py     the rich progress bar
  anchor_fit.py   after training: the TTO anchor's calibration (Λ multiplier per Gaussian set and
                  group) fitted through the layer (benchmarks/fit_anchor.py runs it)

Run directory (``out``):
  config.json                 the options of the run
  log.jsonl                   one JSON object per logged step / evaluation (append-only)
  ckpt-<step>.safetensors     predictor weights (+ config/meta; loadable by model.io.load_model)
  ckpt-<step>.pt              optimizer, scheduler, RNG and data-stream state
  latest.json                 which checkpoint is complete (written last, atomically)
  model.safetensors           final weights

Determinism: data order is a function of (seed, epoch, position) and the position is part
of the checkpoint, so ``resume`` continues the run exactly (bit for bit on CPU).
"""

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so that reading the defaults (``train.config``, which
# needs no torch) does not import torch: the CLI builds its options from them before the
# OpenMP settings that must precede torch's import are in place.
_EXPORTS = {
    "train_main": "main", "TrainConfig": "config", "TrainState": "checkpoint", "find_checkpoint": "checkpoint",
    "load_state": "checkpoint", "save_checkpoint": "checkpoint", "Dist": "distributed",
    "setup_distributed": "distributed", "evaluate_predictor": "evaluation", "StopFlag": "signals",
    "Batch": "steps", "StepResult": "steps", "image_loss": "steps", "train_step": "steps", "DataStream": "stream",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diff3r_cli.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"diff3r_cli.train.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = list(_EXPORTS)
