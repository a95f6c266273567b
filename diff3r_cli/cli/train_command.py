"""`diff3r train`: options -> diff3r_cli.train.train_main; every default is `TrainConfig()`'s (one set)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diff3r_cli.cli.checks import check_output_dir, require_exists
from diff3r_cli.cli.guard import fail, guarded
from diff3r_cli.cli.options import DataKind, Stage
from diff3r_cli.cli.present import print_result
from diff3r_cli.train.config import DEFAULT_PCG_MAX_ITER, DEFAULT_STEPS, TrainConfig

_D = TrainConfig()  # the trainer's defaults, shown by --help and used when an option is omitted

# the longest option declarations, named here so that `train` itself stays readable
_DataOpt = Annotated[DataKind, typer.Option(help="Training data: RE10K-format chunks (re10k), the "
                                                "synthetic generator's output (synthetic), or both mixed "
                                                "(mix: --data-root real, --synthetic-root synthetic).")]
_DepthRangeOpt = Annotated[Optional[str], typer.Option(help="Near/far convention set in the predictor: fitted "
                                                            "(around each view pair's depths) or normalised (the "
                                                            "scene scaled so its 5th-percentile depth is 2, near 1, "
                                                            "far 100; RE10K-style data). Default: the model's own.")]
_SynthRootOpt = Annotated[Optional[Path], typer.Option(help="--data mix: the synthetic dataset root (default: a "
                                                            "small set generated into the run folder).")]
_RealFractionOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="--data mix: share of real examples (each "
                                                                        "example drawn at random).")]
_FreezeOpt = Annotated[bool, typer.Option("--freeze-backbone", help="With a released backbone (--init mvsplat.ckpt): "
                                          "train only our Λ head.")]
_SweepWeightOpt = Annotated[float, typer.Option(help="Weight of the loss of the predicted depth against the "
                                                     "photometric sweep's depth where it is confident "
                                                     "(|log d - log d_sweep|).")]
_RangeJitterOpt = Annotated[float, typer.Option(help="Log-amplitude of a random per-example scene scale and near/far "
                                                     "shift (0: off), so depth must come from matching, not from the "
                                                     "range (e.g. 1.1).")]
_DepthResidualOpt = Annotated[Optional[str], typer.Option(help="Depth refinement set in the predictor: t (free within "
                                                               "near/far) or log (bounded factor around the cost "
                                                               "volume's depth). Default: the model's own.")]
_ViewSamplerOpt = Annotated[Optional[str], typer.Option(help="Context pairs: angle (15-30 deg apart with shared "
                                                             "content, else by frame gap; real sequences) or gap "
                                                             "(by frame gap). Default: angle for re10k, gap for "
                                                             "synthetic.")]


@guarded
def train(
    data: _DataOpt = DataKind(_D.data.kind),
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset root holding train/ and test/ "
                                                           "(RE10K layout); with --data mix, the real one.")] = None,
    synthetic_root: _SynthRootOpt = None,
    real_fraction: _RealFractionOpt = _D.data.real_fraction,
    stage: Annotated[Stage, typer.Option(help="ff: train the feed-forward predictor alone; diff3r: train "
                                              "through the optimization layer (usually with --init).")] = Stage(_D.stage),
    steps: Annotated[Optional[int], typer.Option(min=1, help="Total training steps of the run. Default: "
                                                   f"{DEFAULT_STEPS}; with --resume, the saved run's (given, "
                                                   "it extends or shortens the schedule).")] = None,
    resolution: Annotated[int, typer.Option(min=16, help="Short side of the training images; each scene keeps "
                                                         "its aspect ratio (batches grouped by size).")] = _D.data.resolution,
    batch: Annotated[int, typer.Option(min=1, help="Scenes per step (per process under torchrun).")] = _D.data.batch,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, logs.")] = Path(_D.out),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Initial weights (e.g. a stage-ff checkpoint, or a released "
                                                     "MVSplat .ckpt).")] = None,
    freeze_backbone: _FreezeOpt = False,
    outliers: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability of corrupting a context "
                                                                   "view with outliers (targets stay clean).")] = _D.data.outliers,
    model_size: Annotated[str, typer.Option(help="Predictor size: small or base.")] = _D.model.size,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = _D.optim.lr,
    inner_steps: Annotated[int, typer.Option(help="TTO steps inside the layer (stage diff3r).")] = _D.inner.steps,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _D.seed,
    lam_lr: Annotated[float, typer.Option(help="Learning rate of Λ's per-group log-scale.")] = _D.optim.lam_lr,
    ff_weight: Annotated[float, typer.Option(help="Stage diff3r: weight of the feed-forward loss on θ0 "
                                                   "added to the loss on θ*.")] = _D.loss.ff_weight,
    context_weight: Annotated[float, typer.Option(help="Weight of the loss of θ0 on the context views "
                                                       "themselves (a pixel-aligned predictor should reproduce "
                                                       "its inputs).")] = _D.loss.context_weight,
    depth_weight: Annotated[float, typer.Option(help="Weight of the self-supervised loss of the predicted depth "
                                                     "(each context view rebuilt from the others through it).")]
    = _D.loss.depth_weight,
    lam_floor: Annotated[Optional[float], typer.Option(help="Lower bound on every λ, in units of 1/P, set in the "
                                                            "predictor (conditions the inner problem; see "
                                                            "benchmarks/layer.py). Default: the model's own.")] = None,
    depth_range: _DepthRangeOpt = None,
    sweep_depth_weight: _SweepWeightOpt = _D.loss.sweep_depth_weight,
    range_jitter: _RangeJitterOpt = _D.data.range_jitter,
    depth_residual: _DepthResidualOpt = None,
    pcg_max_iter: Annotated[Optional[int], typer.Option(help="Stage diff3r: PCG iteration cap of the IFT "
                                                              f"backward. Default: {DEFAULT_PCG_MAX_ITER}; with "
                                                              "--resume, the saved run's.")] = None,
    inner_lr: Annotated[Optional[float], typer.Option(help="Stage diff3r, Adam: multiplier of the inner "
                                                           "TTO's learning rates.")] = None,
    inner_hessian: Annotated[str, typer.Option(help="Stage diff3r: Hessian of the IFT backward, gn or exact.")]
    = _D.inner.hessian,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up steps of the cosine schedule.")] = None,
    ckpt_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and on Ctrl-C).")] = _D.schedule.ckpt_every,
    eval_every: Annotated[int, typer.Option(help="Evaluate target-view PSNR on the test split every "
                                                  "N steps (0 = never).")] = _D.eval.every,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per process (1 is fastest on a busy "
                                                        "CPU).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop with a checkpoint after this many seconds "
                                                             "(resume later with --resume).")] = None,
    view_sampler: _ViewSamplerOpt = None,
) -> None:
    """Train the predictor (multi-GPU: torchrun --nproc_per_node K -m diff3r_cli train ...).

    Writes OUT/log.jsonl (metrics, time per step), OUT/ckpt-*.{safetensors,pt}, OUT/model.safetensors; Ctrl-C checkpoints, --resume continues exactly.
    """
    from diff3r_cli.train import train_main

    _check_paths(data_root, synthetic_root, init, out)
    extra = _given(warmup=warmup, threads=threads, time_limit=time_limit, view_sampler=view_sampler,
                   synthetic_root=synthetic_root, lam_floor=lam_floor, inner_lr=inner_lr, depth_range=depth_range,
                   depth_residual=depth_residual)
    result = train_main(data=data.value, data_root=data_root, stage=stage.value, steps=steps, resolution=resolution,
                        batch=batch, out=out, resume=resume, init=init, outliers=outliers, model_size=model_size,
                        lr=lr, inner_steps=inner_steps, seed=seed, lam_lr=lam_lr, ff_weight=ff_weight,
                        context_weight=context_weight, depth_weight=depth_weight,
                        pcg_max_iter=pcg_max_iter, inner_hessian=inner_hessian, ckpt_every=ckpt_every, eval_every=eval_every,
                        real_fraction=real_fraction, range_jitter=range_jitter,
                        sweep_depth_weight=sweep_depth_weight, freeze_backbone=freeze_backbone, **extra)
    print_result(result)
    _fail_if_interrupted(result, out)


def _check_paths(data_root: Optional[Path], synthetic_root: Optional[Path], init: Optional[Path], out: Path) -> None:
    """One-line errors for missing inputs and an unusable run folder, before any work starts."""
    for path, what in ((data_root, "data root"), (synthetic_root, "synthetic root"), (init, "--init checkpoint")):
        if path is not None:
            require_exists(path, what)
    check_output_dir(out)


def _given(**options: object) -> dict:
    """The options the user gave (None: derived from other settings by the trainer)."""
    return {k: v for k, v in options.items() if v is not None}


def _fail_if_interrupted(result: object, out: Path) -> None:
    """Exit 128+signal after an interrupted run: the checkpoint is written, but a script must see
    that the run did not finish."""
    if isinstance(result, dict) and result.get("status") == "interrupted":
        import signal as _signal

        signum = int(result.get("signal") or _signal.SIGINT)
        fail(f"interrupted ({_signal.Signals(signum).name}) after the checkpoint at step {result.get('step')}; "
             f"continue with --resume --out {out}", 128 + signum)


__all__ = ["train"]
