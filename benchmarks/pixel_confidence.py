"""How well the context-pixel confidence finds outliers, and what it costs (issue 23, item 3).

On the real test split under `diff3r eval --outliers P`'s protocol (same seed, same corruptions),
each tuple's θ0 comes from the depth stage (`predict_matched`, as `eval` and `reconstruct` run it).
Per corrupted view (occluders or a local exposure blob; whole-view exposure changes are left to the
exposure compensation and skipped), the AUROC of 1 − w against the protocol's outlier mask, for the
confidence measured at θ0 and after the plain pre-pass that `confident_start` uses; on every view,
the share of clean pixels it distrusts (w < 0.5); and the time of `confident_start` (pre-pass,
confidence, drop) next to the 200 TTO steps it precedes (the same Adam steps, measured in the same
run). Prints a table and writes benchmarks/results/pixel_confidence.json.

    python benchmarks/pixel_confidence.py [--model NAME|PATH] [--outliers 0.5] [--limit 12] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth import predict_matched
from diff3r_cli.depth.consistency import PREPASS_STEPS, confident_start, pixel_confidence
from diff3r_cli.depth.pixel_gaussians import source_views
from diff3r_cli.engines.policy import DEFAULT_MODEL
from diff3r_cli.evaluate.command import _test_dataset, depth_range_for
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.optim.tto import optimize

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
TTO_STEPS = 200


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counted by rank order."""
    x = torch.cat([pos, neg]).double()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tuple_row(model, sample: dict) -> dict:
    """Detection and cost figures of one evaluation tuple."""
    imgs = sample["context_images"]
    cams = Cameras.of_sample(sample)
    near, far, _ = depth_range_for(sample, "auto", getattr(model.cfg, "depth_range", "fitted"))
    m = predict_matched(model, imgs, cams, near, far, torch.device("cpu"))
    g0, lam = m.gaussians, m.lam
    owner = source_views(g0, cams)
    t = time.perf_counter()
    g_start, _, w_pass, kept = confident_start(g0, lam, cams, imgs)
    t_conf = time.perf_counter() - t
    t = time.perf_counter()
    optimize(g_start, lam[kept], cams, imgs, TTO_STEPS, compensation="auto")
    t_tto = time.perf_counter() - t
    w0 = pixel_confidence(g0, cams, imgs, owner=owner)
    mask = sample["context_outlier_mask"]
    row = {"key": sample["key"], "dropped": int((~kept).sum()), "gaussians": len(g0),
           "confidence_s": round(t_conf, 2), "tto_s": round(t_tto, 2), "views": []}
    for i in range(len(cams)):
        frac = float(mask[i].float().mean())
        view = {"outlier_fraction": round(frac, 4)}
        if frac < 0.9:  # a view shot whole at another exposure has no clean pixels to count
            view["clean_distrusted_theta0"] = round(float((w0[i][~mask[i]] < 0.5).float().mean()), 4)
            view["clean_distrusted_prepass"] = round(float((w_pass[i][~mask[i]] < 0.5).float().mean()), 4)
        if 0.002 < frac < 0.9:  # local corruption: is it found?
            view["auroc_theta0"] = round(auroc(1 - w0[i][mask[i]], 1 - w0[i][~mask[i]]), 3)
            view["auroc_prepass"] = round(auroc(1 - w_pass[i][mask[i]], 1 - w_pass[i][~mask[i]]), 3)
        row["views"].append(view)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data-root", type=Path, default=REAL)
    ap.add_argument("--outliers", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pixel_confidence.json")
    args = ap.parse_args()
    model = load_model(resolve_model_path(args.model), device="cpu")
    root = args.data_root
    ds = _test_dataset(root, "test", args.resolution, root / "evaluation_index.json", args.seed, args.outliers, "auto")
    rows = []
    print(f"{'tuple':24s} {'AUROC θ0':>9s} {'AUROC pre':>9s} {'clean<0.5 θ0':>12s} {'pre':>6s} "
          f"{'dropped':>8s} {'conf s':>7s} {'TTO s':>6s}")
    for n, sample in enumerate(ds):
        if n >= args.limit:
            break
        r = tuple_row(model, sample)
        rows.append(r)
        found = [v for v in r["views"] if "auroc_theta0" in v]
        a0 = " ".join(f"{v['auroc_theta0']:.3f}" for v in found) or "-"
        a1 = " ".join(f"{v['auroc_prepass']:.3f}" for v in found) or "-"
        clean = [v for v in r["views"] if "clean_distrusted_theta0" in v]
        c0 = sum(v["clean_distrusted_theta0"] for v in clean) / len(clean)
        c1 = sum(v["clean_distrusted_prepass"] for v in clean) / len(clean)
        print(f"{r['key']:24s} {a0:>9s} {a1:>9s} {c0:12.3f} {c1:6.3f} {r['dropped']:8d} "
              f"{r['confidence_s']:7.1f} {r['tto_s']:6.1f}", flush=True)
    found = [v for r in rows for v in r["views"] if "auroc_theta0" in v]
    clean = [v for r in rows for v in r["views"] if "clean_distrusted_theta0" in v]
    summary = {
        "corrupted_views": len(found),
        "auroc_theta0_mean": round(sum(v["auroc_theta0"] for v in found) / max(len(found), 1), 3),
        "auroc_prepass_mean": round(sum(v["auroc_prepass"] for v in found) / max(len(found), 1), 3),
        "clean_distrusted_theta0_mean": round(sum(v["clean_distrusted_theta0"] for v in clean)
                                              / max(len(clean), 1), 4),
        "clean_distrusted_prepass_mean": round(sum(v["clean_distrusted_prepass"] for v in clean)
                                               / max(len(clean), 1), 4),
        "confidence_over_tto_time": round(sum(r["confidence_s"] for r in rows) / sum(r["tto_s"] for r in rows), 3),
        "prepass_steps": PREPASS_STEPS, "tto_steps": TTO_STEPS,
    }
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model": str(args.model), "outliers": args.outliers, "seed": args.seed,
                               "resolution": args.resolution, "summary": summary, "tuples": rows}, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
