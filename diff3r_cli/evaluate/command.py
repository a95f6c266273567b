"""`diff3r eval`: every method on the fixed test views of an RE10K-format root.

Methods compared on the same held-out scenes, views and TTO budget (see `plan_runs`):
  ff              the stage-ff model's prediction θ0 (no TTO)
  ff+TTO          plain TTO (Λ = 0) from the ff model's θ0
  diff3r          the stage-diff3r model's θ0 (no TTO)
  diff3r+TTO+unc  TTO anchored by the predicted Λ (the method)
  diff3r+TTO      plain TTO (Λ = 0) from the diff3r model's θ0 (ablation)
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, resolve_head
from diff3r_cli.errors import UserError
from diff3r_cli.evaluate.report import progress_bar, running_means, summarize
from diff3r_cli.evaluate.views import Run, evaluate_views

DEPTH_RANGE_MODES = ("auto", "dataset")


def plan_runs(steps_list: list[int], with_ff: bool) -> list[Run]:
    """(method, model key, use uncertainty, TTO steps) for every compared configuration."""
    runs: list[Run] = []
    for s in steps_list:
        if with_ff:
            runs.append(("ff" if s == 0 else "ff+TTO", "ff", False, s))
        if s == 0:
            runs.append(("diff3r", "diff3r", False, 0))
        else:
            runs.append(("diff3r+TTO+unc", "diff3r", True, s))
            runs.append(("diff3r+TTO", "diff3r", False, s))
    return runs


def evaluate_main(data_root: Path, data: str = "re10k", model: Optional[str] = None, ff_model: Optional[str] = None,
                  tto_steps: list[int] | tuple[int, ...] = (0, 50, 200), outliers: float = 0.0,
                  limit: Optional[int] = None, device: str = "auto", resolution: Optional[int] = None,
                  optimizer: str = "adam", split: str = "test", json_out: Optional[Path] = None,
                  progress: bool = True, seed: int = 0, depth_range: str = "auto",
                  compensation: str = "auto", sweep: bool = True, backdrop: bool = True,
                  confidence: str = "unc", drop: bool = False, anchor_head: Optional[str] = DEFAULT_HEAD) -> dict:
    """Evaluate on the fixed test views of an RE10K-format root (evaluation_index.json); prints nothing
    but the progress bar (present the result with `report.print_summary`).

    resolution: the short side; every scene keeps its native aspect ratio (sides cropped to a
    multiple of 16, intrinsics exact). depth_range "auto": an example without stored depth maps
    (real data) gets near/far from its context views' features triangulated with the known poses,
    as `reconstruct` does; "dataset": the dataset's near/far (1..100, the RE10K convention).
    sweep: θ0's depth corrected by the photometric sweep between the context views, as in `reconstruct`;
    backdrop: with it the far blurred backdrop behind the scene (diff3r_cli.depth.backdrop).
    outliers: the probability P that a tuple's context views are corrupted (``outlier_config``:
    occluders in one view with probability P, a local exposure blob and a whole view at another
    exposure/white balance each with P/2; targets stay clean), drawn from ``seed`` and the
    scene key, so the same seed gives the same corruptions. compensation: per-view exposure
    transforms in every TTO run ("auto": where the context views differ in exposure); context
    PSNR then uses each view's transform, target views the identity. confidence: which TTO runs weight
    the context pixels by how far the other context views confirm them ("unc" | "all" | "off"), drop:
    and start without the Gaussians of contradicted pixels (``depth.consistency.confident_start``), for
    budgets of at least ``depth.consistency.MIN_STEPS``; anchor_head: with the confidence, the Λ
    re-ranking of the anchored runs (``depth.anchor_head``; None or "none": Λ as predicted).
    Library callers of ``evaluate_views`` / ``score_runs`` get "off" and no head unless they ask.
    Returns {"summary": [{method, steps, psnr, ssim, context_psnr, scenes, compensated}],
    "scenes": [per-scene rows], ...}.
    """
    from diff3r_cli.model.io import resolve_model_path
    from diff3r_cli.engines.policy import DEFAULT_FF_MODEL, DEFAULT_MODEL, pick_device

    root = Path(data_root)
    index = root / "evaluation_index.json"
    if not index.is_file():
        raise UserError("no evaluation_index.json (key -> context/target frames) in the data root", root,
                        "generate the test split with `diff3r data synth --split test` or give the index file")
    if depth_range not in DEPTH_RANGE_MODES:
        raise UserError(f"unknown depth range mode {depth_range!r}", None, "use auto or dataset")
    dev = pick_device(device)
    model = model or DEFAULT_MODEL
    if ff_model is None and resolve_model_path(DEFAULT_FF_MODEL).is_file():
        ff_model = DEFAULT_FF_MODEL
    models = _load_models({"diff3r": model, "ff": ff_model}, dev)
    if confidence != "off":
        resolve_head(anchor_head, dev)  # a missing or foreign head file fails here, not after the first scene
    res = resolution or _model_resolution(models["diff3r"]) or 64
    steps_list = sorted({int(s) for s in tto_steps})
    runs = plan_runs(steps_list, "ff" in models)
    ds = _test_dataset(root, split, int(res), index, seed, outliers, depth_range)
    t_start = time.perf_counter()
    with progress_bar(limit) if progress else nullcontext(None) as advance:
        rows, failures = _evaluate_scenes(ds, models, runs, dev, optimizer, depth_range, limit, advance,
                                          compensation, sweep, backdrop, confidence, drop, anchor_head)
    if not rows:
        raise UserError("no evaluation scenes found", index, "check that the index keys match the chunks")
    result = {"data_root": str(root), "resolution": res, "outliers": bool(outliers),
              "outlier_probability": float(outliers), "seed": int(seed), "compensation": compensation,
              "confidence": confidence, "drop_contradicted": bool(drop and confidence != "off"),
              "anchor_head": None if confidence == "off" or anchor_head is None or str(anchor_head).lower() == "none"
              else str(anchor_head),
              "optimizer": optimizer, "sweep": sweep, "backdrop": bool(sweep and backdrop),
              "models": {k: str(resolve_model_path(v)) for k, v in (("diff3r", model), ("ff", ff_model)) if v},
              "tto_steps": steps_list, "num_scenes": len(rows), "numerical_failures": failures,
              "seconds": round(time.perf_counter() - t_start, 1), "summary": summarize(rows, runs), "scenes": rows}
    if json_out is not None:
        from diff3r_cli.fsio import atomic_write_json
        atomic_write_json(Path(json_out), result, indent=1)
    return result


def _load_models(names: dict[str, Optional[str]], device: torch.device) -> dict:
    """Model key -> loaded predictor, for every key given a bundled name or checkpoint path."""
    from diff3r_cli.model.io import load_model, resolve_model_path

    return {key: load_model(resolve_model_path(name), device=device) for key, name in names.items() if name}


def _model_resolution(model) -> Optional[int]:
    """The training resolution recorded in a model's metadata, if any."""
    meta = getattr(model, "meta", {}) or {}
    r = meta.get("resolution")
    return int(r) if isinstance(r, (int, float)) else None


def _test_dataset(root: Path, split: str, resolution: int, index: Path, seed: int, outliers: float,
                  depth_range: str):
    """The fixed-view dataset; int resolution = short side, each scene at its native aspect ratio."""
    from diff3r_cli.data.re10k import RE10KDataset

    out_cfg = outlier_config(outliers) if outliers else None
    return RE10KDataset(root, split=split, resolution=resolution, evaluation_index=index, seed=seed,
                        outliers=out_cfg, full_context=depth_range == "auto")


def outlier_config(p: float):
    """The evaluation's outlier protocol at probability p (see evaluate_main)."""
    from diff3r_cli.data.outliers import OutlierConfig

    p = 1.0 if p is True else float(p)
    return OutlierConfig(p_occluder=p, p_exposure=0.5 * p, p_global_exposure=0.5 * p)


def _evaluate_scenes(ds, models: dict, runs: list[Run], device: torch.device, optimizer: str, depth_range: str,
                     limit: Optional[int], advance, compensation: str = "off",
                     sweep: bool = False, backdrop: bool = True, confidence: str = "off",
                     drop: bool = False, anchor_head: Optional[str] = None) -> tuple[list[dict], int]:
    """One row per scene (key, views, size, depth range, every configuration's means) and the failures."""
    rows: list[dict] = []
    failures = 0
    last_steps = max((s for *_, s in runs), default=0)
    for n, sample in enumerate(ds):
        if limit is not None and n >= limit:
            break
        H, W = sample["context_images"].shape[1:3]
        # each model gets near/far by the convention it was trained with (PredictorConfig.depth_range)
        found: dict[str, tuple[float, float, str]] = {}
        for m in models.values():
            conv = getattr(m.cfg, "depth_range", "fitted")
            if conv not in found:  # triangulates at most once per convention
                found[conv] = depth_range_for(sample, depth_range, conv)
        ranges = {n: found[getattr(m.cfg, "depth_range", "fitted")] for n, m in models.items()}
        near, far, src = next(iter(ranges.values()))
        row = {"key": sample["key"], "context": sample["context_indices"].tolist(),
               "target": sample["target_indices"].tolist(), "size": [W, H],
               "depth_range": [round(near, 4), round(far, 4), src]}
        if len(found) > 1:
            row["depth_ranges"] = {n: [round(a, 4), round(b, 4), c] for n, (a, b, c) in ranges.items()}
        used: dict = {}
        metrics, nfail = evaluate_views(models, runs, sample["context_images"], sample["context_K"],
                                        sample["context_w2c"], sample["target_images"], sample["target_K"],
                                        sample["target_w2c"], near, far, device, optimizer,
                                        ranges={n: r[:2] for n, r in ranges.items()}, compensation=compensation,
                                        sweep=sweep, ranges_used=used, backdrop=backdrop, confidence=confidence,
                                        drop=drop, anchor_head=anchor_head)
        moved = {n: [round(a, 4), round(b, 4)] for n, (a, b) in used.items()
                 if abs(a / ranges[n][0] - 1) > 1e-6 or abs(b / ranges[n][1] - 1) > 1e-6}
        if moved:  # the depth stage re-set the range from the matched depths (diff3r_cli.depth.stage)
            row["depth_range_used"] = moved
        row.update(metrics)
        failures += nfail
        rows.append(row)
        if advance is not None:
            advance(running_means(rows, runs, last_steps))
    return rows, failures


def depth_range_for(sample: dict, mode: str, convention: str = "fitted") -> tuple[float, float, str]:
    """near, far, source for one dataset sample (see evaluate_main's depth_range), for a model of
    the given near/far convention (PredictorConfig.depth_range)."""
    near, far, src = float(sample["near"]), float(sample["far"]), sample.get("depth_range_from", "default")
    if convention == "normalised" and mode == "auto":
        p5 = float(sample.get("depth_p5", float("nan")))
        if src == "depth maps" and p5 == p5:
            from diff3r_cli.engines.policy import normalised_range
            return (*normalised_range(p5), "dataset depth maps (normalised)")
        # no depth maps: RE10K-style data is scale-normalised already, which is what such a model saw
        return near, far, "dataset default (scale-normalised data)"
    if mode == "auto" and src == "default":
        from diff3r_cli.engines.policy import range_from_points
        from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

        # at the stored size where the dataset gives it: a 128-px crop holds few features
        key = "_full" if "context_images_full" in sample else ""
        imgs = sample[f"context_images{key}"]
        H, W = imgs.shape[1:3]
        cams = Cameras(sample[f"context_K{key}"].double(), sample["context_w2c"].double(), W, H)
        tri = triangulate_known_cameras(imgs, cams)
        rng = range_from_points(cams, tri["points3d"]) if tri["num_points"] >= 10 else None
        if rng is not None:
            return rng[0], rng[1], f"triangulated matches ({tri['num_points']} points at {W}x{H})"
    return near, far, "dataset depth maps" if src == "depth maps" else "dataset default"


__all__ = ["evaluate_main", "plan_runs", "depth_range_for", "outlier_config"]
