"""Learning the TTO anchor's calibration through the optimisation layer.

The network's Λ rows are nearly constant within a group (its 95th percentile is 1.05-1.25x its 5th
on the real test split), so what decides how TTO treats a Gaussian is which set it is in: seen by
another context view, seen by its own view only, or the backdrop (``depth/covisible.py``). This
module learns, per set and parameter group, a log multiplier of Λ (a (3,5) table,
``PredictorConfig.anchor_log_scales``) with the paper's training signal: the target views' MSE after
TTO, differentiated through the layer by the implicit function theorem (``optim/implicit.py``).

The prediction θ0 does not depend on the table, so each example is predicted once
(:func:`prepare_example`); a step is one layer forward (TTO) and backward (PCG) per example. The
state (table, Adam moments, step, per-step log) is written atomically after every step, so an
interrupted fit resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.covisible import ANCHOR_SETS, anchor_sets, calibrated
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.gaussians import GROUPS, Gaussians
from diff3r_cli.optim.stats import LayerStats


@dataclass
class AnchorExample:
    """One training tuple with its prediction: θ0, the uncalibrated anchor Λ0 (N,5), each Gaussian's
    set (N,), the context views that TTO fits and the target views that score it."""

    key: str
    g0: Gaussians
    lam0: torch.Tensor
    sets: torch.Tensor
    context_images: torch.Tensor
    context: Cameras
    target_images: torch.Tensor
    target: Cameras


def train_tuples(root, seeds: int, outliers: float, resolution: int):
    """(seed, corrupted, sample) for one train tuple per scene of the real corpus at ``root`` per seed
    (2 context + 4 target views, as the trainer samples them); with ``outliers`` > 0 every second
    seed's tuples get the evaluation's corruption protocol."""
    from diff3r_cli.data.re10k import RE10KDataset
    from diff3r_cli.evaluate.command import outlier_config

    for seed in range(seeds):
        corrupt = outliers > 0 and seed % 2 == 1
        ds = RE10KDataset(root, split="train", resolution=resolution, seed=seed, full_context=True,
                          outliers=outlier_config(outliers) if corrupt else None, warn=False)
        for s in ds:
            yield seed, corrupt, s


def cached_train_tuples(work, prefix: str, root, seeds: int, outliers: float, resolution: int,
                        prepare: Callable[[int, bool, dict], object]) -> list:
    """:func:`train_tuples` turned into records by ``prepare(seed, corrupted, sample)``, each cached in
    ``work/<prefix><seed>_<key>.pt`` (written atomically: an interrupted fit leaves no half record) and
    read back from there when it exists (a resumed fit)."""
    from diff3r_cli.fsio import atomic_output

    out = []
    for seed, corrupt, s in train_tuples(root, seeds, outliers, resolution):
        f = Path(work) / f"{prefix}{seed}_{s['key']}.pt"
        if f.exists():
            out.append(torch.load(f, weights_only=False))
            continue
        rec = prepare(seed, corrupt, s)
        with atomic_output(f, "wb") as fh:
            torch.save(rec, fh)
        out.append(rec)
    return out


def prepare_example(model: torch.nn.Module, sample: dict, near: float, far: float,
                    device: Optional[torch.device] = None) -> AnchorExample:
    """Predict θ0 and the anchor without the model's calibration (as ``predict_matched`` does for
    ``reconstruct`` and ``eval``) for an RE10KDataset sample."""
    from diff3r_cli.depth import predict_matched

    cams = Cameras.of_sample(sample)
    m = predict_matched(model, sample["context_images"], cams, near, far, device, calibrate=False)
    if m.covisible is None:
        raise ValueError("the anchor calibration needs pixel-aligned Gaussians (a predictor that does not crop)")
    return AnchorExample(str(sample.get("key", "")), m.gaussians.detach(), m.lam.detach(),
                         anchor_sets(m.covisible, m.backdrop), sample["context_images"], cams,
                         sample["target_images"], Cameras.of_sample(sample, "target"))


def target_loss(log_scales: torch.Tensor, ex: AnchorExample, steps: int = 200, **layer_options
                ) -> tuple[torch.Tensor, float, LayerStats]:
    """(MSE of the target views after ``steps`` of TTO anchored by the calibrated Λ, their mean PSNR,
    the layer's statistics); the loss is differentiable in ``log_scales`` through the layer's IFT
    backward, whose solve (PCG, or its Jacobi fallback) is in ``stats.backward`` once it has run."""
    from diff3r_cli.optim.implicit import optimization_layer_with_stats
    from diff3r_cli.render import render

    lam = calibrated(ex.lam0, ex.sets, log_scales)
    g_star, stats = optimization_layer_with_stats(ex.g0, lam, ex.context, ex.context_images, steps, "adam",
                                                  **layer_options)
    x = render(g_star, ex.target).rgb
    loss = ((x - ex.target_images.to(x)) ** 2).mean()
    with torch.no_grad():
        mse = ((x.clamp(0, 1) - ex.target_images.to(x)) ** 2).mean((1, 2, 3))
        psnr = float((-10 * torch.log10(mse.clamp_min(1e-12))).mean())
    return loss, psnr, stats


def _load_state(path: Optional[Path]) -> dict:
    if path is not None and path.exists():
        return json.loads(path.read_text())
    return {"log_scales": [[0.0] * len(GROUPS) for _ in ANCHOR_SETS], "step": 0, "adam": None, "log": []}


def fit_anchor(examples: Sequence[AnchorExample], epochs: int, lr: float = 0.3, steps: int | Sequence[int] = 200,
               state_path: Optional[Path] = None, bound: float = 6.0,
               progress: Optional[Callable[[dict], None]] = None, **layer_options) -> dict:
    """Fit the (3,5) log multipliers by Adam on one example per step, ``epochs`` passes in order.

    Returns the state: {"log_scales", "step", "adam", "log": one record per step (example key, TTO
    budget, its target PSNR before the step, the gradient, the IFT solve's relative residual and
    fallback)}. With ``state_path`` the fit resumes from it and
    rewrites it after every step. ``steps``: the TTO budget inside the layer, or several used in turn
    (one per fit step) so that the table serves short and long refines alike. ``bound`` clamps each
    log multiplier (e^6 ≈ 400×). Layer options:
    see ``optim.implicit.optimization_layer`` (defaults here: 40 PCG iterations to 1e-2).
    """
    layer_options = {"pcg_max_iter": 40, "pcg_rtol": 1e-2, **layer_options}
    state = _load_state(state_path)
    a = torch.tensor(state["log_scales"], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a], lr=lr)
    if state["adam"]:
        opt.load_state_dict({"state": {0: {k: torch.tensor(v, dtype=torch.float64 if k != "step" else torch.float32)
                                           for k, v in state["adam"].items()}},
                             "param_groups": opt.state_dict()["param_groups"]})
    total = len(examples) * int(epochs)
    budgets = [int(steps)] if isinstance(steps, int) else [int(b) for b in steps]
    while state["step"] < total:
        ex = examples[state["step"] % len(examples)]
        budget = budgets[state["step"] % len(budgets)]
        loss, psnr, stats = target_loss(a, ex, budget, **layer_options)
        opt.zero_grad()
        loss.backward()
        solve = stats.backward.solve
        grad = a.grad.detach().clone()
        opt.step()
        with torch.no_grad():
            a.clamp_(-bound, bound)
        state["step"] += 1
        state["log_scales"] = a.detach().tolist()
        state["adam"] = {k: v.tolist() for k, v in opt.state_dict()["state"][0].items()}
        # the solve's outcome: with Λ this small the PCG often stops short and v is the Jacobi fallback
        rec = {"step": state["step"], "key": ex.key, "tto_steps": budget, "psnr": psnr, "grad": grad.tolist(),
               "pcg_residual": solve.pcg_residual, "fallback": solve.fallback}
        state["log"].append(rec)
        if state_path is not None:
            atomic_write_json(state_path, state, indent=None)
        if progress is not None:
            progress({**rec, "log_scales": state["log_scales"]})
    return state


__all__ = ["AnchorExample", "prepare_example", "target_loss", "fit_anchor"]
