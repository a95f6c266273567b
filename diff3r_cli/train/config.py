"""The training configuration: one typed tree, one set of defaults, one rule for resuming.

Every field has a flat name: the keyword argument of `train_main` and the `diff3r train` option
(``--inner-steps`` = ``inner_steps`` = ``TrainConfig().inner.steps``). `TrainConfig.from_options`
builds the tree from flat names; the defaults below are the only ones (the CLI reads them).

Resume rule (`TrainConfig.resumed`): a resumed run is the same experiment continued.
  KEEP  what defines the data stream, the objective and the schedule's shape (data, resolution,
        batch, seed, views, outliers, real_fraction, stage, loss weights, the inner problem: its
        steps, optimizer, rate multiplier and Hessian; warm-up), the optimizer's hyper-parameters
        (lr, lam_lr, weight decay: they return with its saved state regardless) and init (the
        run's provenance) come from the saved options whatever the command line says;
  FILL  data_root, synthetic_root: the command line's when given (the data may have moved), else
        the saved one; steps and the PCG cap likewise (given: changed from here on; not given: the
        run's own);
  all other fields (cadences, evaluation, device, threads, gradient clip) come from the command
        line.
A saved run without ``view_sampler`` predates the angle sampler and keeps the gap sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from diff3r_cli.errors import UserError

STAGES = ("ff", "diff3r")
DATA_KINDS = ("re10k", "synthetic", "mix")
VIEW_SAMPLERS = ("angle", "gap")
DEFAULT_STEPS = 20000
DEFAULT_PCG_MAX_ITER = 50
AUTO_SYNTH_DIR = "synthetic_data"  # where a run without a synthetic root generates a small set
KEEP = "keep"  # resume: the saved value wins
FILL = "fill"  # resume: the command line's value wins, the saved one fills in when it gives none


def _opt(default: Any, flat: str, resume: Optional[str] = None, legacy: Any = None, factory=None):
    """A config field with its flat name, resume policy and the value of runs saved before it existed."""
    meta = {"flat": flat, "resume": resume, "legacy": legacy}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Where the examples come from and how each is drawn."""

    kind: str = _opt("re10k", "data", KEEP)                    # "re10k" | "synthetic" | "mix" (of the two)
    root: Union[str, Path, None] = _opt(None, "data_root", FILL)       # synthetic without a root: generated
    # mix: root holds the real chunks, synthetic_root the generator's (None: generated into the run)
    synthetic_root: Union[str, Path, None] = _opt(None, "synthetic_root", FILL)
    real_fraction: float = _opt(0.5, "real_fraction", KEEP)   # mix: P(an example is real)
    resolution: int = _opt(256, "resolution", KEEP)           # short side; native aspect, batches by size
    batch: int = _opt(4, "batch", KEEP)                       # examples per step and process
    outliers: float = _opt(0.0, "outliers", KEEP)             # P(context views corrupted); targets clean
    context_views: int = _opt(2, "context_views", KEEP)
    target_views: int = _opt(2, "target_views", KEEP)
    min_gap: Optional[int] = _opt(None, "min_gap", KEEP)      # None: the view sampler's default
    max_gap: Optional[int] = _opt(None, "max_gap", KEEP)
    view_sampler: Optional[str] = _opt(None, "view_sampler", KEEP, legacy="gap")  # None: angle for re10k
    # Per example, a random global scale of the scene and an independent widening/shift of near/far
    # (log-amplitude; 0 = off). Any near/far convention held constant in training lets the network read
    # depth off the range instead of matching (issue 20: halving near halved every depth).
    range_jitter: float = _opt(0.0, "range_jitter", KEEP, legacy=0.0)
    # (for mix: angle on the real part, gap on the synthetic part)


@dataclass
class ModelConfig:
    """The predictor to train."""

    size: str = _opt("small", "model_size")
    overrides: Optional[dict] = _opt(None, "model_overrides")  # PredictorConfig fields (tests: tiny models)
    # weights the run started from (.safetensors, run dir); kept on resume as the run's provenance
    init: Union[str, Path, None] = _opt(None, "init", KEEP)
    lam_floor: Optional[float] = _opt(None, "lam_floor", KEEP)  # set the predictor's λ·P floor (None: keep the model's)
    # set the predictor's near/far convention, "fitted" | "normalised" (None: keep the model's); the
    # training data's near/far follow the model's convention (PredictorConfig.depth_range)
    depth_range: Optional[str] = _opt(None, "depth_range", KEEP)
    # set the predictor's depth refinement, "t" | "log" (None: keep the model's); see PredictorConfig
    depth_residual: Optional[str] = _opt(None, "depth_residual", KEEP)
    # train only what sits outside a released backbone's pretrained tree (its Λ head)
    freeze_backbone: bool = _opt(False, "freeze_backbone", KEEP, legacy=False)


@dataclass
class OptimConfig:
    """AdamW on the network; Λ's per-group log-scale has its own rate."""

    # KEEP: a resume restores them with the optimizer's state anyway; the record must say so too
    lr: float = _opt(2e-4, "lr", KEEP)
    lam_lr: float = _opt(1e-2, "lam_lr", KEEP)
    weight_decay: float = _opt(0.0, "weight_decay", KEEP)
    grad_clip: float = _opt(1.0, "grad_clip")  # 0: no clipping


@dataclass
class LossConfig:
    """ℓ = MSE + ssim_weight·(1 − SSIM); stage diff3r adds ff_weight·ℓ(θ0); both add
    context_weight·ℓ(θ0 on the context views) and depth_weight·(train.depth_loss of θ0's depth)."""

    ssim_weight: float = _opt(0.05, "ssim_weight", KEEP)
    ff_weight: float = _opt(0.0, "ff_weight", KEEP)
    context_weight: float = _opt(0.0, "context_weight", KEEP, legacy=0.0)  # ℓ(θ0) on the context views too
    # self-supervised photometric loss of the predicted depth (context views rebuilt from each other)
    depth_weight: float = _opt(0.0, "depth_weight", KEEP, legacy=0.0)
    # supervised loss of the predicted depth against the photometric sweep's depth where the sweep
    # accepts it (diff3r_cli.depth; |log d − log d_sweep|): depth taught by matching, not by the range
    sweep_depth_weight: float = _opt(0.0, "sweep_depth_weight", KEEP, legacy=0.0)


@dataclass
class InnerConfig:
    """The inner problem of stage diff3r: TTO forward, IFT backward."""

    steps: int = _opt(5, "inner_steps", KEEP)
    optimizer: str = _opt("adam", "inner_optimizer", KEEP)
    # None: DEFAULT_PCG_MAX_ITER for a new run, the saved run's on resume
    pcg_max_iter: Optional[int] = _opt(None, "pcg_max_iter", FILL)
    # Adam only: a multiplier of the 3DGS learning rates (None: 1). At a floored Λ the flat
    # directions want larger steps: ×4 halves the steps to a given stationarity (benchmarks/layer.py).
    lr: Optional[float] = _opt(None, "inner_lr", KEEP)
    # The IFT backward's Hessian: "gn" (JᵀJ/P + Λ) or "exact" (∇²E; what a converged θ* calls for).
    hessian: str = _opt("gn", "inner_hessian", KEEP, legacy="gn")


@dataclass
class ScheduleConfig:
    """How long the run is and when it pauses to write a checkpoint."""

    # Total optimizer steps of the run. None: DEFAULT_STEPS for a new run, the saved run's on resume
    # (so a plain --resume continues the same cosine schedule instead of stretching it).
    steps: Optional[int] = _opt(None, "steps", FILL)
    warmup: Optional[int] = _opt(None, "warmup", KEEP)           # None: min(200, steps // 20)
    ckpt_every: int = _opt(200, "ckpt_every")
    stop_after: Optional[int] = _opt(None, "stop_after")         # steps this process; schedule unchanged
    time_limit: Optional[float] = _opt(None, "time_limit")       # seconds of wall time, likewise


@dataclass
class EvalConfig:
    """Target-view PSNR on the test split during training (see train.evaluation)."""

    every: int = _opt(0, "eval_every")                           # 0: never
    scenes: int = _opt(8, "eval_scenes")
    root: Union[str, Path, None] = _opt(None, "eval_root")              # None: the training data root
    tto_steps: Optional[int] = _opt(None, "eval_tto_steps")      # None: inner steps in stage diff3r, else 0


@dataclass
class LoggingConfig:
    """How often a log line is written; the progress bar."""

    log_every: int = _opt(10, "log_every")
    progress: bool = _opt(True, "progress")


@dataclass
class RuntimeConfig:
    """Where and how the computation runs (no effect on the numbers, except the render backend)."""

    device: Optional[str] = _opt(None, "device")                 # None/"auto": cuda when available
    threads: Optional[int] = _opt(None, "threads")               # None: split the cores between processes
    render_backend: str = _opt("auto", "render_backend")


@dataclass
class TrainConfig:
    """Everything `train_main` needs; `TrainConfig()` holds the defaults of the library and the CLI."""

    stage: str = _opt("diff3r", "stage", KEEP)                   # "ff" | "diff3r"
    seed: int = _opt(0, "seed", KEEP)
    out: Path = _opt(Path("runs/train"), "out")
    resume: Union[str, bool, None] = _opt(None, "resume")       # True: this run dir; or a run dir / ckpt
    data: DataConfig = _opt(None, "", factory=DataConfig)
    model: ModelConfig = _opt(None, "", factory=ModelConfig)
    optim: OptimConfig = _opt(None, "", factory=OptimConfig)
    loss: LossConfig = _opt(None, "", factory=LossConfig)
    inner: InnerConfig = _opt(None, "", factory=InnerConfig)
    schedule: ScheduleConfig = _opt(None, "", factory=ScheduleConfig)
    eval: EvalConfig = _opt(None, "", factory=EvalConfig)
    logging: LoggingConfig = _opt(None, "", factory=LoggingConfig)
    runtime: RuntimeConfig = _opt(None, "", factory=RuntimeConfig)

    @classmethod
    def from_options(cls, **options: Any) -> "TrainConfig":
        """Build from flat names (train_main's keyword arguments); unknown names are a TypeError."""
        known = flat_fields()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
        cfg = cls()
        for name, value in options.items():
            cfg = _with_value(cfg, known[name], value)
        out = cfg.out if isinstance(cfg.out, Path) else Path(cfg.out)
        return replace(cfg, out=out)

    def flat(self) -> dict[str, Any]:
        """Flat name -> value of every field."""
        return {name: _get(self, path) for name, path in flat_fields().items()}

    def resumed(self, saved: dict) -> "TrainConfig":
        """This command line's config continued from a run's saved options (the rule in the module doc)."""
        cfg = self
        for name, path in flat_fields().items():
            f = _field_at(path)
            policy, current = f.metadata["resume"], _get(self, path)
            if policy == KEEP and (name in saved or f.metadata["legacy"] is not None):
                cfg = _with_value(cfg, path, saved.get(name, f.metadata["legacy"]))
            elif policy == FILL and not current and saved.get(name):
                cfg = _with_value(cfg, path, saved[name])
        return cfg

    def validate(self) -> None:
        """UserError for settings a user must change (checked before anything is written)."""
        d = self.data
        if self.stage not in STAGES:
            raise UserError(f"unknown --stage {self.stage!r}", fix=f"use one of {', '.join(STAGES)}")
        if (self.schedule.steps is not None and self.schedule.steps < 1) or d.batch < 1 or d.resolution < 16:
            raise UserError(f"invalid settings (steps={self.schedule.steps}, batch={d.batch}, "
                            f"resolution={d.resolution})", fix="use steps >= 1, batch >= 1, resolution >= 16")
        if not 0.0 <= d.outliers <= 1.0:
            raise UserError(f"--outliers must be a probability in [0, 1], got {d.outliers}", fix="e.g. --outliers 0.5")
        if not 0.0 <= d.real_fraction <= 1.0:
            raise UserError(f"--real-fraction must be a probability in [0, 1], got {d.real_fraction}",
                            fix="e.g. --real-fraction 0.5")
        if d.context_views < 2:
            raise UserError("the predictor needs at least 2 context views", fix="use --context-views 2 or more")
        if self.model.depth_range not in (None, "fitted", "normalised"):
            raise UserError(f"unknown --depth-range {self.model.depth_range!r}", fix="use fitted or normalised")
        if self.model.depth_residual not in (None, "t", "log"):
            raise UserError(f"unknown --depth-residual {self.model.depth_residual!r}", fix="use t or log")
        if not 0.0 <= d.range_jitter <= 3.0:
            raise UserError(f"--range-jitter must be in [0, 3], got {d.range_jitter}", fix="e.g. --range-jitter 1.1")
        if self.inner.hessian not in ("gn", "exact"):
            raise UserError(f"unknown --inner-hessian {self.inner.hessian!r}", fix="use gn or exact")
        if self.inner.lr is not None and not self.inner.lr > 0:
            raise UserError(f"--inner-lr must be positive, got {self.inner.lr}", fix="e.g. --inner-lr 4")
        if self.inner.lr is not None and self.inner.optimizer != "adam":
            raise UserError("--inner-lr sets the inner Adam's rates; LM has none", fix="drop --inner-lr or use adam")

    def with_defaults_resolved(self) -> "TrainConfig":
        """Fill the defaults that depend on other fields (after `resumed`): view sampler, gaps,
        warm-up, evaluation TTO steps."""
        from diff3r_cli.data.re10k import ViewSamplerConfig

        d, sched = self.data, self.schedule
        sampler = d.view_sampler if d.kind == "mix" else default_sampler(d.kind, d.view_sampler)
        if sampler is not None and sampler not in VIEW_SAMPLERS:
            raise UserError(f"unknown view sampler {sampler!r}", fix="use angle or gap")
        defaults = ViewSamplerConfig()
        data = replace(d, view_sampler=sampler, min_gap=defaults.min_gap if d.min_gap is None else d.min_gap,
                       max_gap=defaults.max_gap if d.max_gap is None else d.max_gap)
        if d.kind == "mix" and not d.synthetic_root:
            data = replace(data, synthetic_root=Path(self.out) / AUTO_SYNTH_DIR)
        steps = sched.steps if sched.steps is not None else DEFAULT_STEPS
        warmup = sched.warmup if sched.warmup is not None else min(200, max(1, steps // 20))
        tto = self.eval.tto_steps
        if tto is None:
            tto = self.inner.steps if self.stage == "diff3r" else 0
        pcg = self.inner.pcg_max_iter if self.inner.pcg_max_iter is not None else DEFAULT_PCG_MAX_ITER
        return replace(self, data=data, schedule=replace(sched, steps=steps, warmup=warmup),
                       inner=replace(self.inner, pcg_max_iter=pcg),
                       eval=replace(self.eval, tto_steps=tto))


def default_sampler(kind: str, chosen: Optional[str] = None) -> str:
    """The view sampler of a data kind: the chosen one, else angle for real sequences, gap for synthetic."""
    return chosen or ("angle" if kind == "re10k" else "gap")


def flat_fields() -> dict[str, tuple[str, ...]]:
    """Flat name -> attribute path in the tree, e.g. "inner_steps" -> ("inner", "steps")."""
    table: dict[str, tuple[str, ...]] = {}
    for f in fields(TrainConfig):
        section = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(section):
            table.update({g.metadata["flat"]: (f.name, g.name) for g in fields(section)})
        else:
            table[f.metadata["flat"]] = (f.name,)
    return table


def _field_at(path: tuple[str, ...]):
    cls = TrainConfig
    for name in path[:-1]:
        cls = {f.name: f for f in fields(cls)}[name].default_factory
    return {f.name: f for f in fields(cls)}[path[-1]]


def _get(cfg: TrainConfig, path: tuple[str, ...]) -> Any:
    obj: Any = cfg
    for name in path:
        obj = getattr(obj, name)
    return obj


def _with_value(cfg: TrainConfig, path: tuple[str, ...], value: Any) -> TrainConfig:
    if len(path) == 1:
        return replace(cfg, **{path[0]: value})
    section = getattr(cfg, path[0])
    return replace(cfg, **{path[0]: replace(section, **{path[1]: value})})


def saved_options(cfg: TrainConfig, data_root: Path, model_size: str, world_size: int) -> dict:
    """The flat record of a run (config.json, and "options" in every checkpoint's meta).

    ``cfg`` has its defaults resolved; the key order is the on-disk format of existing runs.
    """
    d, o, sched = cfg.data, cfg.optim, cfg.schedule
    return dict(data=d.kind, data_root=str(data_root), stage=cfg.stage, steps=sched.steps,
                resolution=d.resolution, batch=d.batch, outliers=d.outliers, lr=o.lr, lam_lr=o.lam_lr,
                inner_steps=cfg.inner.steps, inner_optimizer=cfg.inner.optimizer, model_size=model_size,
                seed=cfg.seed, context_views=d.context_views, target_views=d.target_views, min_gap=d.min_gap,
                max_gap=d.max_gap, view_sampler=d.view_sampler, ssim_weight=cfg.loss.ssim_weight,
                ff_weight=cfg.loss.ff_weight, grad_clip=o.grad_clip, warmup=sched.warmup, world_size=world_size,
                init=str(cfg.model.init) if cfg.model.init else None,
                synthetic_root=str(d.synthetic_root) if d.synthetic_root else None, real_fraction=d.real_fraction,
                context_weight=cfg.loss.context_weight, lam_floor=cfg.model.lam_floor, inner_lr=cfg.inner.lr,
                inner_hessian=cfg.inner.hessian, depth_range=cfg.model.depth_range,
                depth_weight=cfg.loss.depth_weight, pcg_max_iter=cfg.inner.pcg_max_iter,
                range_jitter=d.range_jitter, depth_residual=cfg.model.depth_residual,
                sweep_depth_weight=cfg.loss.sweep_depth_weight, freeze_backbone=cfg.model.freeze_backbone)


__all__ = ["DEFAULT_STEPS", "DEFAULT_PCG_MAX_ITER", "TrainConfig", "DataConfig", "ModelConfig", "OptimConfig", "LossConfig", "InnerConfig", "ScheduleConfig",
           "EvalConfig", "LoggingConfig", "RuntimeConfig", "STAGES", "DATA_KINDS", "KEEP", "FILL", "flat_fields",
           "saved_options", "default_sampler", "AUTO_SYNTH_DIR"]
