"""The outer optimizer: AdamW (Λ's per-group log-scale in its own group) and a warm-up + cosine schedule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from diff3r_cli.errors import UserError
from diff3r_cli.train.checkpoint import TrainState
from diff3r_cli.train.config import TrainConfig

FINAL_LR_FRACTION = 0.1  # the cosine ends at this fraction of the peak rate
LAM_BIAS = "log_lam_bias"


def lr_lambda(warmup: int, total: int, final_frac: float = FINAL_LR_FRACTION) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then a cosine down to ``final_frac`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    resume: Optional[TrainState] = None, source: Optional[Path] = None,
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW + LambdaLR for ``model``; with ``resume`` (read from ``source``), their saved states loaded.

    ``cfg`` has its defaults resolved (the warm-up).
    """
    # Λ's per-group log-scale is 5 global numbers that must travel several nats: own, larger rate.
    lam_params = [p for n, p in model.named_parameters() if n == LAM_BIAS]
    other = [p for n, p in model.named_parameters() if n != LAM_BIAS and p.requires_grad]
    groups = [{"params": other}, {"params": lam_params, "lr": cfg.optim.lam_lr, "weight_decay": 0.0}]
    if resume is not None and len(resume.optimizer["param_groups"]) == 1:
        # runs started before lam_lr existed: their single group, same order
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule.warmup, cfg.schedule.steps))
    if resume is not None:
        try:
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
        except (ValueError, KeyError) as e:
            raise UserError(f"the checkpoint's optimizer state does not fit this version of the trainer ({e})",
                            source, "start a new run with --init <checkpoint> instead of --resume") from None
    return optimizer, scheduler


__all__ = ["lr_lambda", "build_optimizer"]
