"""Training-time evaluation: target-view PSNR of the predictor on the test split, through the one
evaluation path of `diff3r eval` (diff3r_cli.evaluate.views)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from diff3r_cli.evaluate.views import EvalViews, Run, psnr_per_view, score_runs

MODEL = "model"


def _runs(tto_steps: int) -> list[Run]:
    """θ0; with TTO steps also TTO anchored by the predicted Λ and plain TTO (Λ = 0)."""
    runs: list[Run] = [("theta0", MODEL, False, 0)]
    if tto_steps > 0:
        runs += [("tto", MODEL, True, tto_steps), ("tto_plain", MODEL, False, tto_steps)]
    return runs


def evaluate_predictor(model: torch.nn.Module, root: Path, resolution: int, num_context: int, max_scenes: int,
                       device: torch.device, backend: str = "auto", tto_steps: int = 0,
                       tto_optimizer: str = "adam") -> Optional[dict]:
    """Target-view PSNR of θ0 on the first ``max_scenes`` test scenes (fixed views), and the mean-colour baseline.

    The baseline paints each target view with the mean colour of that scene's context views.
    With tto_steps > 0 also the PSNR after TTO on the context views, with the predicted Λ
    (psnr_tto) and with Λ = 0 (plain TTO, psnr_tto_plain). Means are over target views.
    Returns None without a test split.
    """
    from diff3r_cli.data.re10k import RE10KDataset

    ev = root / "evaluation_index.json"
    if not (root / "test").is_dir() or not ev.exists():
        return None
    runs = _runs(tto_steps)
    per_view: dict[str, list[float]] = {"theta0": [], "tto": [], "tto_plain": [], "mean_colour": [], "ssim": []}
    was_training = model.training
    model.eval()
    try:
        ds = RE10KDataset(root, "test", resolution=resolution, evaluation_index=ev, warn=False,
                          depth_range=getattr(getattr(model, "cfg", None), "depth_range", "fitted"))
        for i, sample in enumerate(ds):
            if i >= max_scenes:
                break
            if sample["context_images"].shape[0] != num_context:
                continue
            views = EvalViews.from_sample(sample)  # native aspect: the size differs per scene
            scores, _ = score_runs({MODEL: model}, runs, views, device, tto_optimizer, backend, context=False)
            for method, _, _, s in runs:
                if scores[f"{method}@{s}"] is not None:  # None: that TTO failed numerically
                    per_view[method] += scores[f"{method}@{s}"].psnr
            per_view["ssim"] += scores["theta0@0"].ssim
            per_view["mean_colour"] += _mean_colour_psnr(views)
    finally:
        model.train(was_training)
    return _summary(per_view, tto_steps)


def _mean_colour_psnr(views: EvalViews) -> list[float]:
    """PSNR of each target view painted with the context views' mean colour."""
    tgt = views.target_images.float().cpu()
    base = views.context_images.float().cpu().mean(dim=(0, 1, 2)).expand_as(tgt)
    return psnr_per_view(base, tgt)


def _summary(per_view: dict[str, list[float]], tto_steps: int) -> Optional[dict]:
    ps = per_view["theta0"]
    if not ps:
        return None
    res = {"psnr": float(np.mean(ps)), "psnr_mean_colour": float(np.mean(per_view["mean_colour"])),
           "ssim": float(np.mean(per_view["ssim"])) if per_view["ssim"] else None, "views": len(ps)}
    if tto_steps > 0:
        res.update({"tto_steps": tto_steps,
                    "psnr_tto": float(np.mean(per_view["tto"])) if per_view["tto"] else None,
                    "psnr_tto_plain": float(np.mean(per_view["tto_plain"])) if per_view["tto_plain"] else None})
    return res


__all__ = ["evaluate_predictor"]
