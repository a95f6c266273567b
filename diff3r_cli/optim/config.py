"""Typed settings of the test-time optimisation (``TTOConfig``) and of the layer's IFT
backward (``BackwardConfig``), and how keyword options of ``optimize`` /
``optimization_layer`` map onto them.

Every setting has one default, here. ``optimize(..., steps, optimizer, **options)`` still
takes the options by name (``lr=0.5``, ``pcg_rtol=1e-4``, ...): :func:`tto_config` and
:func:`layer_configs` turn them into these records; an option that the chosen optimiser
does not have is a ``TypeError``, as an unexpected keyword argument is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Collection, Mapping, Optional, Union

OPTIMIZERS = ("adam", "lm")
JVP_MODES = ("auto", "forward", "fd", "reverse")
HESSIANS = ("gn", "exact")
FALLBACKS = ("jacobi", "zeros")
PRECONDITIONERS = ("jacobi", "none")
EXACT_HVPS = ("fd", "autograd")

ADAM_EPS = 1e-15
# A PCG result is used when its relative residual is at most this multiple of the requested
# pcg_rtol (a solve that stopped at max_iter close to the tolerance is still a good v);
# anything worse takes the fallback. Either way a residual above pcg_rtol counts as a miss.
ACCEPT_FACTOR = 10.0


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r} (use one of {', '.join(choices)})")


@dataclass(frozen=True)
class AdamConfig:
    """Adam settings. lr: None (3DGS defaults), a float multiplier of all of them, or a dict
    {group: lr} (see ``tto.ADAM_LR``). rtol_stop: stop after ``patience`` consecutive steps
    that lower E by less than this relative amount (0 = off). eps: Adam's ε. snapshots:
    steps whose iterate history[k]["theta"] keeps."""

    lr: Union[None, float, Mapping[str, float]] = None
    rtol_stop: float = 0.0
    patience: int = 3
    eps: float = ADAM_EPS
    snapshots: Optional[Collection[int]] = None


@dataclass(frozen=True)
class LMConfig:
    """Levenberg-Marquardt settings: stop when an accepted step lowers E by less than
    ``rtol_stop`` relative or ‖∇E‖ ≤ ``gtol``; initial damping ``mu0``; each step's PCG solve
    to ``pcg_rtol`` in at most ``pcg_max_iter`` iterations; ``num_probes`` ±1 probes for the
    Jacobi diagonal (drawn from ``seed``); ``jvp`` mode of the Gauss-Newton products."""

    rtol_stop: float = 1e-6
    mu0: float = 1e-2
    pcg_rtol: float = 1e-2
    pcg_max_iter: int = 50
    num_probes: int = 4
    jvp: str = "auto"
    seed: int = 0
    gtol: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("jvp mode", self.jvp, JVP_MODES)


@dataclass(frozen=True)
class TTOConfig:
    """How to minimise E(θ; θ0, Λ): the optimiser ("adam" | "lm"), the render backend, and
    each optimiser's settings (only the chosen one's are used)."""

    optimizer: str = "adam"
    backend: str = "auto"
    adam: AdamConfig = field(default_factory=AdamConfig)
    lm: LMConfig = field(default_factory=LMConfig)

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class BackwardConfig:
    """The IFT backward's linear solve (H + damping·I) v = ∇ℓ at θ*.

    hessian: "gn" (JᵀJ/P + Λ) or "exact" (full ∇²E, Hessian-vector products by ``exact_hvp``
    "fd" or "autograd"); jvp: Jv mode of the GN products; PCG to ``pcg_rtol`` in at most
    ``pcg_max_iter`` iterations with the ``preconditioner`` ("jacobi": ±1-probe estimate from
    ``num_probes`` probes drawn from ``seed``; "none"); a solve is used when its residual is at
    most ``accept_rtol`` (default ``ACCEPT_FACTOR``·pcg_rtol), else v falls back to M⁻¹∇ℓ
    (``fallback="jacobi"``) or 0 (``"zeros"``).
    """

    hessian: str = "gn"
    jvp: str = "auto"
    pcg_rtol: float = 1e-3
    pcg_max_iter: int = 100
    num_probes: int = 4
    damping: float = 0.0
    fallback: str = "jacobi"
    seed: int = 0
    preconditioner: str = "jacobi"
    exact_hvp: str = "fd"
    accept_rtol: Optional[float] = None

    def __post_init__(self) -> None:
        _check_choice("hessian", self.hessian, HESSIANS)
        _check_choice("jvp mode", self.jvp, JVP_MODES)
        _check_choice("fallback", self.fallback, FALLBACKS)
        _check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        _check_choice("exact-Hessian mode", self.exact_hvp, EXACT_HVPS)

    @property
    def accept(self) -> float:
        """The largest relative residual whose solution is used."""
        return ACCEPT_FACTOR * self.pcg_rtol if self.accept_rtol is None else self.accept_rtol


# Keyword option -> field of the optimiser's config ("adam_eps" is AdamConfig.eps).
_ADAM_OPTIONS = {"lr": "lr", "rtol_stop": "rtol_stop", "patience": "patience", "adam_eps": "eps",
                 "snapshots": "snapshots"}
_LM_OPTIONS = {f.name: f.name for f in fields(LMConfig)}
BACKWARD_OPTIONS = frozenset(f.name for f in fields(BackwardConfig))


def tto_config(optimizer: Optional[str] = None, config: Optional[TTOConfig] = None, **options) -> TTOConfig:
    """``config`` (default ``TTOConfig()``) with the optimizer and keyword options applied.

    ``backend`` sets the render backend; the other options set fields of the chosen
    optimiser's config (Adam: lr, rtol_stop, patience, adam_eps, snapshots; LM: rtol_stop,
    mu0, pcg_rtol, pcg_max_iter, num_probes, jvp, seed, gtol). None means "the default".
    """
    cfg = config if config is not None else TTOConfig()
    options = {k: v for k, v in options.items() if v is not None}
    if optimizer is not None:
        cfg = replace(cfg, optimizer=optimizer)
    if "backend" in options:
        cfg = replace(cfg, backend=options.pop("backend"))
    names = _ADAM_OPTIONS if cfg.optimizer == "adam" else _LM_OPTIONS
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unexpected options for {cfg.optimizer}: {unknown}")
    if not options:
        return cfg
    sub = getattr(cfg, cfg.optimizer)
    return replace(cfg, **{cfg.optimizer: replace(sub, **{names[k]: v for k, v in options.items()})})


def layer_configs(optimizer: Optional[str] = None, config: Optional[TTOConfig] = None,
                  backward: Optional[BackwardConfig] = None, **options) -> tuple[TTOConfig, BackwardConfig]:
    """Configs of ``optimization_layer``: options named like a BackwardConfig field (hessian,
    pcg_rtol, pcg_max_iter, jvp, num_probes, damping, fallback, seed, preconditioner,
    exact_hvp, accept_rtol) set the backward solve — also where LM has a field of the same
    name, whose forward value then comes from ``config`` — and the rest go to :func:`tto_config`."""
    bwd = {k: options.pop(k) for k in list(options) if k in BACKWARD_OPTIONS}
    backward = backward if backward is not None else BackwardConfig()
    if bwd:
        backward = replace(backward, **bwd)
    return tto_config(optimizer, config, **options), backward


__all__ = ["TTOConfig", "AdamConfig", "LMConfig", "BackwardConfig", "tto_config", "layer_configs", "OPTIMIZERS",
           "JVP_MODES", "HESSIANS", "FALLBACKS", "ADAM_EPS", "ACCEPT_FACTOR"]
