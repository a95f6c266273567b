"""Pick the TTO anchor's overall strength of a model on TRAIN tuples (issue 20, synthetic target).

The +unc row's target PSNR against a global factor s on Λ is measured per data set by
``headroom.py strength --split train`` (one JSON per data set: the real corpus, clean and with the
outlier protocol, and synthetic rooms of both generators). This script pools them and picks the s
with the highest pooled score, the mean over the data sets of each one's mean target PSNR (each
data set weighs the same, whatever its number of tuples). Grids of the test split are refused: the
choice must not see the tuples it is judged on.

--write-model adds log s to every entry of the model's ``PredictorConfig.anchor_log_scales`` (the
calibration ``predict_matched`` applies in reconstruct, refine and eval; weights unchanged) and
records the choice in the model's metadata.

    python benchmarks/headroom.py strength --split train --scales 0.03,0.1,0.3,1 ...   # one per data set
    python benchmarks/fit_anchor_strength.py GRID.json [GRID.json ...] [--model diff3r-real] [--write-model]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from diff3r_cli.depth.covisible import ANCHOR_SETS
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.gaussians import GROUPS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def grid_means(doc: dict) -> dict[float, float]:
    """{s: mean target PSNR over the grid's tuples} of one ``headroom.py strength`` JSON."""
    rows = list(doc["tuples"].values())
    if not rows:
        raise ValueError("the grid has no tuples")
    keys = list(rows[0])
    if any(list(r) != keys for r in rows):
        raise ValueError("the grid's tuples were measured at different factors")
    return {float(k.removeprefix("s=")): sum(r[k] for r in rows) / len(rows) for k in keys}


def pick_strength(grids: dict[str, dict]) -> tuple[float, dict[float, float], dict[str, dict[float, float]]]:
    """(best s, pooled score per s, per-grid means) over ``grids`` {name: headroom strength JSON}.

    Only factors every grid measured are compared. Raises ValueError for a test-split grid."""
    means, calibrations = {}, set()
    for name, doc in grids.items():
        split = doc.get("settings", {}).get("split")
        if split != "train":
            raise ValueError(f"{name}: a grid of the {split!r} split; the strength is picked on train tuples only")
        # s is relative to the calibration the model carried when the grid was measured (none: absent)
        calibrations.add(json.dumps(doc["settings"].get("anchor_log_scales")))
        means[name] = grid_means(doc)
    if len(calibrations) > 1:
        raise ValueError("the grids were measured with differently calibrated models; measure them again with one")
    common = sorted(set.intersection(*(set(m) for m in means.values())))
    if not common:
        raise ValueError("the grids share no factor")
    pooled = {s: sum(m[s] for m in means.values()) / len(means) for s in common}
    best = max(common, key=lambda s: (pooled[s], s))  # ties: the stronger anchor (the predicted Λ's side)
    return best, pooled, means


def store_strength(model_path: Path, s: float, record: dict) -> Path:
    """Add log s to every entry of the model's anchor calibration table and save it (atomic)."""
    from diff3r_cli.model.io import load_model, read_metadata, save_model

    model = load_model(model_path, device="cpu")
    old = model.cfg.anchor_log_scales or tuple((0.0,) * len(GROUPS) for _ in ANCHOR_SETS)
    model.cfg.anchor_log_scales = tuple(tuple(v + math.log(s) for v in row) for row in old)
    meta = read_metadata(model_path)["meta"]
    meta.setdefault("anchor_strength", []).append(record)
    return save_model(model_path, model, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("grids", nargs="+", help="headroom.py strength JSONs of train splits")
    ap.add_argument("--model", default=None, help="the model the grids were measured with (default: theirs)")
    ap.add_argument("--write-model", action="store_true", help="store the chosen s in the model's config")
    ap.add_argument("--out", default=str(RESULTS / "anchor_strength_fit.json"))
    args = ap.parse_args()
    docs = {Path(g).stem: json.loads(Path(g).read_text()) for g in args.grids}
    try:
        best, pooled, means = pick_strength(docs)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    models = {d["settings"].get("model") for d in docs.values()}
    if args.model is None and len(models) != 1:
        raise SystemExit(f"error: the grids were measured with different models ({sorted(map(str, models))}); pass --model")
    model = args.model or models.pop()
    names = list(means)
    print("| s | " + " | ".join(names) + " | pooled |")
    print("|---:|" + "---:|" * (len(names) + 1))
    for s in sorted(pooled):
        mark = "**" if s == best else ""
        print(f"| {s:g} | " + " | ".join(f"{means[n][s]:.2f}" for n in names) + f" | {mark}{pooled[s]:.3f}{mark} |")
    print(f"picked s = {best:g}")
    record = {"s": best, "model": str(model), "pooled": {f"{s:g}": round(v, 4) for s, v in pooled.items()},
              "grids": {n: {"tuples": len(docs[n]["tuples"]), "settings": docs[n]["settings"],
                            "means": {f"{s:g}": round(v, 4) for s, v in m.items()}} for n, m in means.items()}}
    atomic_write_json(Path(args.out), record)
    print(f"wrote {args.out}")
    if args.write_model:
        from diff3r_cli.model.io import resolve_model_path

        path = store_strength(resolve_model_path(model), best, {k: record[k] for k in ("s", "pooled")}
                              | {"grids": sorted(names)})
        print(f"stored log s = {math.log(best):+.3f} in {path}'s anchor calibration")


if __name__ == "__main__":
    main()
