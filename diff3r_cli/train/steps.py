"""One training step's forward and backward (no optimizer step), for each stage.

stage ff:     loss = ℓ(render(θ0, targets), targets)
stage diff3r: θ* = optimization_layer(θ0, Λ, context views, K inner steps)
              loss = ℓ(render(θ*, targets), targets) + α·ℓ(render(θ0, targets), targets)
with ℓ = MSE + w·(1 − SSIM). Gradients reach θ0 and Λ through the IFT backward of the layer.
The step's loss is the mean over the examples that produced one: an example skipped for a
numerical failure of its inner solve does not shrink the others' weight.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.metrics import SSIM_WINDOW, ssim
from diff3r_cli.optim.stats import LayerStats
from diff3r_cli.train.config import TrainConfig


@dataclass
class Batch:
    """A collated batch of B examples, on the training device."""

    context_images: torch.Tensor  # (B,V,H,W,3)
    context_K: torch.Tensor       # (B,V,3,3)
    context_w2c: torch.Tensor     # (B,V,4,4)
    target_images: torch.Tensor   # (B,T,H,W,3), same size as the context views
    target_K: torch.Tensor        # (B,T,3,3)
    target_w2c: torch.Tensor      # (B,T,4,4)
    near: torch.Tensor            # (B,)
    far: torch.Tensor             # (B,)

    @classmethod
    def from_collated(cls, batch: dict, device: torch.device) -> "Batch":
        """From data.re10k.collate's dict (extra keys such as ``key`` are left behind)."""
        return cls(*(batch[k].to(device) for k in ("context_images", "context_K", "context_w2c", "target_images",
                                                    "target_K", "target_w2c", "near", "far")))

    def __len__(self) -> int:
        return self.context_images.shape[0]

    def context_cameras(self, k: int) -> Cameras:
        h, w = self.context_images.shape[2:4]
        return Cameras(self.context_K[k], self.context_w2c[k], w, h)

    def target_cameras(self, k: int) -> Cameras:
        h, w = self.context_images.shape[2:4]  # targets are rendered at the context views' size
        return Cameras(self.target_K[k], self.target_w2c[k], w, h)


@dataclass
class StepResult:
    """What one step reports to the metrics window."""

    loss_sum: float = 0.0                 # sum of the examples' losses
    n: int = 0                            # examples that produced a loss
    mse: list[float] = field(default_factory=list)   # per example: target MSE of θ* (diff3r) or θ0 (ff)
    mse0: list[float] = field(default_factory=list)  # stage diff3r, per example: target MSE of θ0
    skipped: int = 0                      # examples (and non-finite steps) skipped
    pcg_iterations: list[Optional[int]] = field(default_factory=list)  # IFT backward, per example
    fallbacks: int = 0                    # IFT backward fell back to the preconditioner
    pcg_misses: int = 0                   # PCG stopped short of its tolerance
    nonfinite_grads: int = 0              # non-finite gradient entries zeroed by the layer


class Timer:
    """Wall time per named phase of a step (synchronizing CUDA so GPU work lands in its phase)."""

    def __init__(self, device: torch.device):
        self.t: dict[str, float] = {}
        self.device = device

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


def image_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE + w·(1 − SSIM) over a stack of (T,H,W,3) images; returns (loss, mse)."""
    m = ((pred - target) ** 2).mean()
    if ssim_weight > 0 and min(pred.shape[-3:-1]) >= SSIM_WINDOW:
        return m + ssim_weight * (1 - ssim(pred, target).mean()), m
    return m, m


def _render(g: Gaussians, cameras: Cameras, backend: str) -> torch.Tensor:
    from diff3r_cli.render import render
    return render(g, cameras, backend=backend).rgb


def _forward(model: torch.nn.Module, batch: Batch, timer: Timer):
    with timer("network"):
        return model(batch.context_images, batch.context_K, batch.context_w2c, batch.near, batch.far)


def _backward(model: torch.nn.Module, losses: list[torch.Tensor], timer: Timer, result: StepResult) -> StepResult:
    """Backward of the mean loss; fills the result's loss_sum and n."""
    # Keep every parameter in the graph even when all examples were skipped, so the
    # all-reduce sees the same tensors on every rank.
    total = sum(losses) / len(losses) if losses else 0.0 * sum(p.sum() for p in model.parameters())
    with timer("backward"):
        total.backward()
    result.loss_sum = total.item() * len(losses) if losses else 0.0
    result.n = len(losses)
    return result


def ff_step(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, timer: Timer) -> StepResult:
    """Stage ff: the loss of θ0 on the target views."""
    out = _forward(model, batch, timer)
    losses, result = [], StepResult()
    for k in range(len(batch)):
        with timer("render"):
            pred = _render(out.gaussians[k], batch.target_cameras(k), cfg.runtime.render_backend)
        loss, m = image_loss(pred, batch.target_images[k], cfg.loss.ssim_weight)
        losses.append(loss + _context_loss(out.gaussians[k], batch, k, cfg, timer)
                      + _depth_loss(out.depth[k], batch, k, cfg, timer))
        result.mse.append(m.item())
    return _backward(model, losses, timer, result)


def _context_loss(g0: Gaussians, batch: Batch, k: int, cfg: TrainConfig, timer: Timer) -> torch.Tensor | float:
    """context_weight · ℓ(θ0) on the context views themselves (0 when the weight is 0).

    A pixel-aligned predictor should reproduce its own inputs; with targets alone, Gaussians of
    one context view placed at a wrong depth can cover another view's without any loss seeing it.
    """
    w = cfg.loss.context_weight
    if w <= 0:
        return 0.0
    with timer("render"):
        pred = _render(g0, batch.context_cameras(k), cfg.runtime.render_backend)
    return w * image_loss(pred, batch.context_images[k], cfg.loss.ssim_weight)[0]


def _depth_loss(depth: torch.Tensor, batch: Batch, k: int, cfg: TrainConfig, timer: Timer) -> torch.Tensor | float:
    """depth_weight · the self-supervised reprojection loss of example k's predicted depth, plus
    sweep_depth_weight · its distance to the photometric sweep's depth (each 0 when off)."""
    w, ws = cfg.loss.depth_weight, cfg.loss.sweep_depth_weight
    loss: torch.Tensor | float = 0.0
    if w > 0:
        from diff3r_cli.train.depth_loss import reprojection_loss

        with timer("depth_loss"):
            loss = w * reprojection_loss(depth, batch.context_images[k], batch.context_K[k], batch.context_w2c[k])
    if ws > 0:
        from diff3r_cli.train.depth_loss import sweep_target_loss

        with timer("depth_loss"):
            loss = loss + ws * sweep_target_loss(depth, batch.context_images[k], batch.context_cameras(k))
    return loss


def diff3r_step(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, timer: Timer) -> StepResult:
    """Stage diff3r: the loss of θ* after the optimization layer (+ ff_weight · the loss of θ0)."""
    out = _forward(model, batch, timer)
    losses, result, traces = [], StepResult(), []
    for k in range(len(batch)):
        try:
            with timer("inner_tto"):
                g_star, trace = _inner_solve(out.gaussians[k], out.lam[k], batch, k, cfg)
        except NumericalError:
            result.skipped += 1
            continue
        traces.append(trace)
        losses.append(_diff3r_loss(out.gaussians[k], g_star, batch, k, cfg, timer, result)
                      + _depth_loss(out.depth[k], batch, k, cfg, timer))
    _backward(model, losses, timer, result)
    _read_traces(traces, timer, result)  # the layer reports its backward once backward has run
    return result


def _inner_solve(g0: Gaussians, lam: torch.Tensor, batch: Batch, k: int, cfg: TrainConfig) -> tuple[Gaussians, LayerStats]:
    """θ* of example k through the optimization layer, and its stats (backward filled later)."""
    from diff3r_cli.optim import implicit  # looked up per call: tests replace the layer

    return implicit.optimization_layer_with_stats(
        g0, lam, batch.context_cameras(k), batch.context_images[k], cfg.inner.steps, cfg.inner.optimizer,
        backend=cfg.runtime.render_backend, pcg_max_iter=cfg.inner.pcg_max_iter, hessian=cfg.inner.hessian,
        **({"lr": cfg.inner.lr} if cfg.inner.lr is not None else {}))  # Adam only (validated)


def _diff3r_loss(g0: Gaussians, g_star: Gaussians, batch: Batch, k: int, cfg: TrainConfig, timer: Timer,
                 result: StepResult) -> torch.Tensor:
    """Loss of θ* (+ α · loss of θ0) for example k; records both MSEs."""
    cams, tgt = batch.target_cameras(k), batch.target_images[k]
    backend, sw = cfg.runtime.render_backend, cfg.loss.ssim_weight
    with timer("render"):
        pred = _render(g_star, cams, backend)
    loss, m = image_loss(pred, tgt, sw)
    result.mse.append(m.item())
    alpha = cfg.loss.ff_weight
    if alpha > 0:
        with timer("render"):
            pred0 = _render(g0, cams, backend)
        loss0, m0 = image_loss(pred0, tgt, sw)
        result.mse0.append(m0.item())
        return loss + alpha * loss0 + _context_loss(g0, batch, k, cfg, timer)
    with torch.no_grad(), timer("render"):  # still log θ0's PSNR, to see what the inner TTO adds
        pred0 = _render(g0.detach(), cams, backend)
    result.mse0.append(float(((pred0 - tgt) ** 2).mean()))
    return loss + _context_loss(g0, batch, k, cfg, timer)


def _read_traces(traces: list[LayerStats], timer: Timer, result: StepResult) -> None:
    """The IFT backward's reports (PCG iterations, fallbacks, misses, time) into the result and timer."""
    if not traces:
        return
    backs = [s.backward for s in traces if s.backward is not None]  # filled by loss.backward()
    timer.t["pcg_backward"] = sum(b.time_s for b in backs)
    result.pcg_iterations = [s.backward.solve.pcg_iterations if s.backward else None for s in traces]
    result.fallbacks = sum(bool(b.solve.fallback) for b in backs)
    result.pcg_misses = sum(bool(b.solve.pcg_miss) for b in backs)
    result.nonfinite_grads = sum(int(b.nonfinite_grad) for b in backs)


def train_step(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, timer: Timer) -> StepResult:
    """Forward + backward of the configured stage for one batch (no optimizer step)."""
    return (ff_step if cfg.stage == "ff" else diff3r_step)(model, batch, cfg, timer)


__all__ = ["Batch", "StepResult", "Timer", "image_loss", "ff_step", "diff3r_step", "train_step"]
