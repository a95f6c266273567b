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

from diff3r_cli.train.checkpoint import TrainState, find_checkpoint, load_state, save_checkpoint
from diff3r_cli.train.config import TrainConfig
from diff3r_cli.train.distributed import Dist, setup_distributed
from diff3r_cli.train.evaluation import evaluate_predictor
from diff3r_cli.train.main import train_main
from diff3r_cli.train.signals import StopFlag
from diff3r_cli.train.steps import Batch, StepResult, image_loss, train_step
from diff3r_cli.train.stream import DataStream

__all__ = ["train_main", "TrainConfig", "TrainState", "find_checkpoint", "load_state", "save_checkpoint", "Dist",
           "setup_distributed", "evaluate_predictor", "StopFlag", "Batch", "StepResult", "image_loss", "train_step",
           "DataStream"]
