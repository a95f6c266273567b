"""The metrics window: what the steps since the last log line add up to, as one log record."""

from __future__ import annotations

import time

import numpy as np

from diff3r_cli.metrics import psnr_from_mse
from diff3r_cli.train.distributed import Dist, all_reduce_sum
from diff3r_cli.train.steps import StepResult


class MetricsWindow:
    """Sums over the steps since the last `record` (this rank's; `record` reduces over ranks)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = 0.0
        self.n = 0
        self.mse: list[float] = []
        self.mse0: list[float] = []
        self.skipped = 0
        self.steps = 0
        self.pcg: list[int] = []
        self.fallbacks = 0
        self.pcg_misses = 0
        self.nonfinite_grads = 0
        self.time: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def add(self, r: StepResult, phase_times: dict[str, float]) -> None:
        """One step's result and its time per phase."""
        self.loss += r.loss_sum
        self.n += r.n
        self.mse += r.mse
        self.mse0 += r.mse0
        self.skipped += r.skipped
        self.steps += 1
        self.pcg += [x for x in r.pcg_iterations if x is not None]
        self.fallbacks += r.fallbacks
        self.pcg_misses += r.pcg_misses
        self.nonfinite_grads += r.nonfinite_grads
        for name, seconds in phase_times.items():
            self.time[name] = self.time.get(name, 0.0) + seconds

    def record(self, step: int, dist: Dist, *, lr: float, grad_norm: float, skipped_total: int, epoch: int,
               wall_s: float) -> dict:
        """The {"type": "train"} log record of the window (collective: every rank must call it); resets."""
        loss_sum, n, sk, mse_sum, mse_n = all_reduce_sum(
            [self.loss, self.n, self.skipped, float(sum(self.mse)), float(len(self.mse))], dist)
        dt = time.perf_counter() - self.t0
        # PSNR of the window's mean MSE over all ranks' target views
        rec = {"type": "train", "step": step, "loss": loss_sum / max(n, 1),
               "psnr": psnr_from_mse(mse_sum / mse_n) if mse_n else None, "lr": lr, "grad_norm": grad_norm,
               "steps_per_s": self.steps / dt, "skipped": int(sk), "skipped_total": skipped_total,
               "time_per_step_s": {k: v / self.steps for k, v in self.time.items()}, "epoch": epoch,
               "wall_s": wall_s}
        if self.mse0:
            rec["psnr_theta0"] = psnr_from_mse(float(np.mean(self.mse0)))
        if self.pcg:
            rec["pcg_iterations"] = float(np.mean(self.pcg))
            rec["pcg_fallbacks"] = self.fallbacks
            rec["pcg_misses"] = self.pcg_misses
            rec["nonfinite_grad_entries"] = self.nonfinite_grads
        self.reset()
        return rec


__all__ = ["MetricsWindow"]
