"""Fit the TTO anchor's calibration of a model through the optimisation layer (issues 20 and 23).

On the real corpus's TRAIN split (one tuple per scene per seed, 2 context + 4 target views, as the
trainer samples them), learn Λ's log multiplier per Gaussian set (covisible / single-view /
backdrop) and group by the target views' MSE after TTO, gradients by the IFT
(diff3r_cli/train/anchor_fit.py). Resumable: predictions and the fit state live in --work
(runs/anchor_fit by default); run it again to continue (a fit already past --epochs only writes
its results). Writes benchmarks/results/anchor_fit.json
(the table and one record per step); --write-model stores the table in the model's config
(weights unchanged), where `predict_matched` (reconstruct, eval) applies it.

    python benchmarks/fit_anchor.py [--model diff3r-real] [--epochs 3] [--lr 0.3] [--outliers 0]
        [--write-model]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diff3r_cli.depth.covisible import ANCHOR_SETS
from diff3r_cli.evaluate.command import depth_range_for
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.gaussians import GROUPS
from diff3r_cli.model.io import load_model, read_metadata, resolve_model_path, save_model
from diff3r_cli.train.anchor_fit import cached_train_tuples, fit_anchor, prepare_example

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"


def examples(model, work: Path, seeds: int, outliers: float, resolution: int) -> list:
    """The prepared train tuples (cached in work/ as they are predicted)."""
    def prepare(seed: int, corrupt: bool, s: dict):
        near, far, _ = depth_range_for(s, "auto", model.cfg.depth_range)
        ex = prepare_example(model, s, near, far)
        print(f"  predicted {ex.key} (seed {seed}{', outliers' if corrupt else ''}): {ex.g0.num} Gaussians",
              flush=True)
        return ex

    return cached_train_tuples(work, "pred_", REAL, seeds, outliers, resolution, prepare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diff3r-real")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=1, help="tuples per scene (one per seed)")
    ap.add_argument("--outliers", type=float, default=0.0, help="corrupt every second seed's context views")
    ap.add_argument("--steps", default="200", help="TTO steps inside the layer; several (e.g. 50,200) are used in turn")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "anchor_fit")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "anchor_fit.json")
    ap.add_argument("--write-model", action="store_true", help="store the table in the model file's config")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = resolve_model_path(args.model)
    model = load_model(path, device="cpu")
    exs = examples(model, args.work, args.seeds, args.outliers, args.resolution)
    t0 = time.perf_counter()

    def show(rec: dict) -> None:
        table = [[round(v, 2) for v in row] for row in rec["log_scales"]]
        print(f"step {rec['step']}/{len(exs) * args.epochs} {rec['key']} ({rec['tto_steps']} TTO steps): "
              f"target {rec['psnr']:.2f} dB  {table}  IFT solve: residual {rec['pcg_residual']:.2g}"
              f"{', Jacobi fallback' if rec['fallback'] else ''}  "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

    budgets = [int(b) for b in str(args.steps).split(",")]
    state = fit_anchor(exs, args.epochs, args.lr, budgets, state_path=args.work / "state.json", progress=show)
    table = [[round(v, 4) for v in row] for row in state["log_scales"]]
    print(f"{'set':10s} " + " ".join(f"{g:>9s}" for g in GROUPS))
    for name, row in zip(ANCHOR_SETS, table):
        print(f"{name:10s} " + " ".join(f"{v:9.3f}" for v in row))
    result = {"model": str(path.name), "epochs": args.epochs, "fit_steps": state["step"], "lr": args.lr, "steps": budgets,
              "outliers": args.outliers, "examples": [e.key for e in exs], "sets": list(ANCHOR_SETS),
              "groups": list(GROUPS), "log_scales": table, "log": state["log"]}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    if args.write_model:
        meta = read_metadata(path)["meta"]
        model.cfg.anchor_log_scales = tuple(tuple(row) for row in table)
        meta["anchor_fit"] = {k: result[k] for k in ("fit_steps", "lr", "steps", "outliers", "sets", "groups")}
        meta["anchor_fit"]["examples"] = len(exs)
        save_model(path, model, meta)
        print(f"stored the table in {path}")


if __name__ == "__main__":
    main()
