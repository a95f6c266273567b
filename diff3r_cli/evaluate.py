"""`diff3r eval`: target-view PSNR/SSIM of feed-forward prediction and test-time optimization.

Methods compared on the same held-out scenes, views and TTO budget:
  ff              the stage-ff model's prediction θ0 (no TTO)
  ff+TTO          plain TTO (Λ = 0) from the ff model's θ0
  diff3r          the stage-diff3r model's θ0 (no TTO)
  diff3r+TTO+unc  TTO anchored by the predicted Λ (the method)
  diff3r+TTO      plain TTO (Λ = 0) from the diff3r model's θ0 (ablation)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError, UserError

METHODS = ("ff", "ff+TTO", "diff3r", "diff3r+TTO+unc", "diff3r+TTO")


def _metrics(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    from diff3r_cli.metrics import psnr, ssim

    p = [float(psnr(pred[i], gt[i])) for i in range(len(gt))]
    s = [float(ssim(pred[i], gt[i])) for i in range(len(gt))]
    return sum(p) / len(p), sum(s) / len(s)


def _model_resolution(model) -> Optional[int]:
    meta = getattr(model, "meta", {}) or {}
    r = meta.get("resolution")
    return int(r) if isinstance(r, (int, float)) else None


def plan_runs(steps_list: list[int], with_ff: bool) -> list[tuple[str, str, bool, int]]:
    """(method, model key, use uncertainty, TTO steps) for every compared configuration."""
    runs: list[tuple[str, str, bool, int]] = []
    for s in steps_list:
        if with_ff:
            runs.append(("ff" if s == 0 else "ff+TTO", "ff", False, s))
        if s == 0:
            runs.append(("diff3r", "diff3r", False, 0))
        else:
            runs.append(("diff3r+TTO+unc", "diff3r", True, s))
            runs.append(("diff3r+TTO", "diff3r", False, s))
    return runs


def evaluate_views(models: dict, runs: list[tuple[str, str, bool, int]], ctx_images: torch.Tensor,
                   ctx_K: torch.Tensor, ctx_w2c: torch.Tensor, tgt_images: torch.Tensor, tgt_K: torch.Tensor,
                   tgt_w2c: torch.Tensor, near: float, far: float, device: torch.device,
                   optimizer: str = "adam", renders: Optional[dict] = None) -> tuple[dict, int]:
    """Predict from the context views with each model, run each TTO configuration, score the targets.

    Returns ({"<method>@<steps>": {"psnr", "ssim", "context_psnr"} or None on a numerical failure},
    failures). context_psnr: the context views re-rendered from that configuration's Gaussians (how
    well the inputs are explained; high with low target PSNR = overfitting). renders: when a dict is
    given, the target renders (T,H,W,3) are stored in it under "<method>@<steps>".
    """
    from diff3r_cli.optim.tto import optimize
    from diff3r_cli.engines.outputs import render_views

    dev = device
    ci = ctx_images.to(dev)
    cK, cw = ctx_K.to(dev), ctx_w2c.to(dev)
    H, W = ci.shape[1:3]
    ctx_cams = Cameras(cK, cw, W, H)
    preds = {}
    for name, net in models.items():
        with torch.no_grad():
            o = net(ci[None], cK[None], cw[None], torch.tensor([near], device=dev), torch.tensor([far], device=dev))
        preds[name] = (o.gaussians[0].detach(), o.lam[0].detach())
    out: dict = {}
    failures = 0
    # one TTO run per (model, uncertainty) up to the largest budget; Adam keeps the iterates at
    # the smaller budgets (identical to separate runs, since Adam's path does not depend on K)
    groups: dict[tuple[str, bool], list[tuple[str, int]]] = {}
    for method, mname, unc, s in runs:
        groups.setdefault((mname, unc), []).append((method, s))
    for (mname, unc), items in groups.items():
        g0, lam = preds[mname]
        budgets = sorted({s for _, s in items})
        states: dict[int, object] = {0: g0}
        positive = [s for s in budgets if s > 0]
        if positive:
            try:
                if optimizer == "adam":
                    g, hist = optimize(g0, lam if unc else None, ctx_cams, ci, positive[-1], optimizer="adam",
                                       snapshots=set(positive))
                    for s in positive:
                        states[s] = g0.unflatten(hist[s]["theta"]) if s < len(hist) else g
                    states[positive[-1]] = g
                else:
                    for s in positive:
                        states[s], _ = optimize(g0, lam if unc else None, ctx_cams, ci, s, optimizer=optimizer)
            except NumericalError:
                failures += 1
                for method, s in items:
                    if s > 0:
                        out[f"{method}@{s}"] = None
        for method, s in items:
            if f"{method}@{s}" in out:
                continue
            pred = render_views(states[s], Cameras(tgt_K, tgt_w2c, W, H))
            p, q = _metrics(pred, tgt_images.float().cpu())
            ctx_psnr = _context_psnr(states[s], ctx_cams, ci)
            out[f"{method}@{s}"] = {"psnr": p, "ssim": q, "context_psnr": ctx_psnr}
            if renders is not None:
                renders[f"{method}@{s}"] = pred
    return out, failures


def _context_psnr(g, ctx_cams: Cameras, ctx_images: torch.Tensor) -> float:
    """Mean PSNR of the context views re-rendered from Gaussians g."""
    from diff3r_cli.metrics import psnr
    from diff3r_cli.engines.outputs import render_views

    pred = render_views(g, ctx_cams)
    gt = ctx_images.float().cpu()
    return sum(float(psnr(pred[i], gt[i])) for i in range(len(gt))) / len(gt)


def summarize(rows: list[dict], runs: list[tuple[str, str, bool, int]]) -> list[dict]:
    """Mean PSNR/SSIM per configuration over the rows that have it."""
    summary = []
    for method, _, _, s in runs:
        vals = [r[f"{method}@{s}"] for r in rows if r.get(f"{method}@{s}")]
        if vals:
            row = {"method": method, "steps": s, "psnr": sum(v["psnr"] for v in vals) / len(vals),
                   "ssim": sum(v["ssim"] for v in vals) / len(vals), "scenes": len(vals)}
            cps = [v["context_psnr"] for v in vals if v.get("context_psnr") is not None]
            if cps:
                row["context_psnr"] = sum(cps) / len(cps)
            summary.append(row)
    return summary


def evaluate_main(data_root: Path, data: str = "re10k", model: str = "diff3r-small", ff_model: Optional[str] = "ff-small",
                  tto_steps: list[int] | tuple[int, ...] = (0, 50, 200), outliers: float = 0.0,
                  limit: Optional[int] = None, device: str = "auto", resolution: Optional[int] = None,
                  optimizer: str = "adam", split: str = "test", json_out: Optional[Path] = None,
                  progress: bool = True, seed: int = 0, depth_range: str = "auto") -> dict:
    """Evaluate on the fixed test views of an RE10K-format root (evaluation_index.json).

    resolution: the short side; every scene keeps its native aspect ratio (sides cropped to a
    multiple of 16, intrinsics exact). depth_range "auto": an example without stored depth maps
    (real data) gets near/far from its context views' features triangulated with the known poses,
    as `reconstruct` does; "dataset": the dataset's near/far (1..100, the RE10K convention).
    Returns {"summary": [{method, steps, psnr, ssim, context_psnr, scenes}], "scenes": [per-scene rows], ...}.
    """
    from diff3r_cli.data.re10k import RE10KDataset
    from diff3r_cli.model.io import load_model, resolve_model_path
    from diff3r_cli.engines.policy import pick_device

    root = Path(data_root)
    index = root / "evaluation_index.json"
    if not index.is_file():
        raise UserError("no evaluation_index.json (key -> context/target frames) in the data root", root,
                        "generate the test split with `diff3r data synth --split test` or give the index file")
    dev = pick_device(device)
    model = model or "diff3r-small"
    if ff_model is None and resolve_model_path("ff-small").is_file():
        ff_model = "ff-small"
    models = {"diff3r": load_model(resolve_model_path(model), device=dev)}
    if ff_model:
        models["ff"] = load_model(resolve_model_path(ff_model), device=dev)
    res = resolution or _model_resolution(models["diff3r"]) or 64
    out_cfg = None
    if outliers:
        from diff3r_cli.data.outliers import OutlierConfig
        p = 1.0 if outliers is True else float(outliers)
        out_cfg = OutlierConfig(p_occluder=p, p_exposure=0.5 * p)
    if depth_range not in ("auto", "dataset"):
        raise UserError(f"unknown depth range mode {depth_range!r}", None, "use auto or dataset")
    # int resolution = short side: each scene at its native aspect ratio
    ds = RE10KDataset(root, split=split, resolution=int(res), evaluation_index=index, seed=seed, outliers=out_cfg,
                      full_context=depth_range == "auto")
    steps_list = sorted({int(s) for s in tto_steps})
    runs = plan_runs(steps_list, "ff" in models)

    bar = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        bar = Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.completed} scenes"),
                       TextColumn("{task.fields[last]}"), TimeElapsedColumn())
        bar.start()
        task = bar.add_task("eval", total=limit, last="")
    rows: list[dict] = []
    failures = 0
    t_start = time.perf_counter()
    try:
        for n, sample in enumerate(ds):
            if limit is not None and n >= limit:
                break
            H, W = sample["context_images"].shape[1:3]
            near, far, src = _depth_range(sample, depth_range)
            row = {"key": sample["key"], "context": sample["context_indices"].tolist(),
                   "target": sample["target_indices"].tolist(), "size": [W, H],
                   "depth_range": [round(near, 4), round(far, 4), src]}
            metrics, nfail = evaluate_views(models, runs, sample["context_images"], sample["context_K"],
                                            sample["context_w2c"], sample["target_images"], sample["target_K"],
                                            sample["target_w2c"], near, far, dev, optimizer)
            row.update(metrics)
            failures += nfail
            rows.append(row)
            if bar is not None:
                # the running mean over the scenes so far (the same numbers the final table
                # averages), not the last scene's PSNR
                mean = {r["method"]: r["psnr"] for r in summarize(rows, runs) if r["steps"] == steps_list[-1]}
                last = "mean so far: " + ", ".join(f"{m}@{steps_list[-1]}={v:.2f}" for m, v in mean.items())
                bar.update(task, advance=1, last=last[:100])
    finally:
        if bar is not None:
            bar.stop()
    if not rows:
        raise UserError("no evaluation scenes found", index, "check that the index keys match the chunks")
    summary = summarize(rows, runs)
    result = {"data_root": str(root), "resolution": res, "outliers": bool(outliers), "optimizer": optimizer,
              "models": {k: str(resolve_model_path(v)) for k, v in (("diff3r", model), ("ff", ff_model)) if v},
              "tto_steps": steps_list, "num_scenes": len(rows), "numerical_failures": failures,
              "seconds": round(time.perf_counter() - t_start, 1), "summary": summary, "scenes": rows}
    if json_out is not None:
        from diff3r_cli.fsio import atomic_output
        with atomic_output(Path(json_out), "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    print_summary(result)
    return result


def _depth_range(sample: dict, mode: str) -> tuple[float, float, str]:
    """near, far, source for one dataset sample (see evaluate_main's depth_range)."""
    near, far, src = float(sample["near"]), float(sample["far"]), sample.get("depth_range_from", "default")
    if mode == "auto" and src == "default":
        from diff3r_cli.engines.policy import range_from_points as _range_from_points
        from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

        # at the stored size where the dataset gives it: a 128-px crop holds few features
        key = "_full" if "context_images_full" in sample else ""
        imgs = sample[f"context_images{key}"]
        H, W = imgs.shape[1:3]
        cams = Cameras(sample[f"context_K{key}"].double(), sample["context_w2c"].double(), W, H)
        tri = triangulate_known_cameras(imgs, cams)
        rng = _range_from_points(cams, tri["points3d"]) if tri["num_points"] >= 10 else None
        if rng is not None:
            return rng[0], rng[1], f"triangulated matches ({tri['num_points']} points at {W}x{H})"
    return near, far, "dataset depth maps" if src == "depth maps" else "dataset default"


def print_summary(result: dict) -> None:
    """Rich table: one row per (method, steps)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Target views, {result['num_scenes']} scenes, short side {result['resolution']} (native aspect)"
                    + (" (context outliers)" if result["outliers"] else ""))
    for c in ("method", "TTO steps", "PSNR", "SSIM", "context PSNR"):
        t.add_column(c, justify="right" if c != "method" else "left")
    for r in result["summary"]:
        cp = r.get("context_psnr")
        t.add_row(r["method"], str(r["steps"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                  "-" if cp is None else f"{cp:.2f}")
    Console().print(t)


def markdown_table(result: dict) -> str:
    """The summary as a Markdown table (for the README)."""
    lines = ["| method | TTO steps | PSNR | SSIM | context PSNR |", "|---|---:|---:|---:|---:|"]
    for r in result["summary"]:
        cp = r.get("context_psnr")
        lines.append(f"| {r['method']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{'-' if cp is None else f'{cp:.2f}'} |")
    return "\n".join(lines)


__all__ = ["evaluate_main", "evaluate_views", "plan_runs", "summarize", "print_summary", "markdown_table", "METHODS"]
