"""Fit the anchor head (issue 20 item 6): a learned ranking of Λ across Gaussians.

On the real corpus's TRAIN split (one tuple per scene per seed, 2 context + 4 target views; every
second seed with the evaluation's outlier protocol), each tuple is predicted as `eval` predicts it,
run through the anchored refine's confidence pre-pass, and fitted by a plain TTO on context *and*
target views; the head regresses how far that TTO moves each Gaussian per group
(diff3r_cli/train/anchor_head_fit.py). Every third scene is held out for the rank correlations.
Resumable: each tuple's record is cached in --work as it is prepared.

    python benchmarks/fit_anchor_head.py [--seeds 2] [--steps 3000] [--write]

Writes benchmarks/results/anchor_head_fit.json (records, curve, rank correlations of the head and
of the predicted Λ on the held-out tuples); --write also refits on all tuples and stores the head
as models/anchor-head-real.safetensors.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.gaussians import GROUPS

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"


def records(model_name: str, work: Path, seeds: int, outliers: float, resolution: int) -> list[dict]:
    """The train tuples' records (cached in work/ as they are prepared)."""
    from dataclasses import replace

    from diff3r_cli.cameras import Cameras
    from diff3r_cli.evaluate.command import depth_range_for
    from diff3r_cli.evaluate.views import EvalViews, predict
    from diff3r_cli.model.io import load_model, resolve_model_path
    from diff3r_cli.train.anchor_fit import cached_train_tuples
    from diff3r_cli.train.anchor_head_fit import prepare_record

    model = load_model(resolve_model_path(model_name), device="cpu")

    def prepare(seed: int, corrupt: bool, s: dict) -> dict:
        t0 = time.perf_counter()
        near, far, _ = depth_range_for(s, "auto", model.cfg.depth_range)
        v = replace(EvalViews.from_sample(s, near, far), sweep=True)
        g0, lam, _ = predict(model, v, torch.device("cpu"))
        rec = prepare_record(g0, Cameras.of_sample(s), s["context_images"],
                             Cameras.of_sample(s, "target"), s["target_images"], key=s["key"])
        rec["lam"] = lam.detach().float()
        rec["seed"] = seed
        print(f"  prepared {s['key']} (seed {seed}{', outliers' if corrupt else ''}): {len(g0)} Gaussians, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        return rec

    return cached_train_tuples(work, "", REAL, seeds, outliers, resolution, prepare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diff3r-real")
    ap.add_argument("--seeds", type=int, default=2, help="tuples per scene (one per seed)")
    ap.add_argument("--outliers", type=float, default=0.5, help="corrupt every second seed's context views")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3000, help="Adam steps of the fit")
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "anchor_head")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "anchor_head_fit.json")
    ap.add_argument("--write", action="store_true", help="refit on every tuple and store the bundled head")
    args = ap.parse_args()
    from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, FEATURES, head_path, save_anchor_head
    from diff3r_cli.train.anchor_head_fit import fit_head, held_out_scenes, rank_correlations

    args.work.mkdir(parents=True, exist_ok=True)
    recs = records(args.model, args.work, args.seeds, args.outliers, args.resolution)
    held = held_out_scenes(recs)
    train = [r for r in recs if r["key"] not in held]
    val = [r for r in recs if r["key"] in held]

    def show(rec: dict) -> None:
        vr = "" if rec["val_rank"] is None else " ".join(f"{v:+.2f}" for v in rec["val_rank"])
        print(f"step {rec['step']:5d}  loss {rec['loss']:.4f}  held-out rank correlation {vr}", flush=True)

    head, log = fit_head(train, args.steps, val=val, progress=show)
    ours = rank_correlations(head, val)
    predicted = rank_correlations(None, val, [r["lam"] for r in val])
    print(f"{'held-out rank corr.':22s} " + " ".join(f"{g:>9s}" for g in GROUPS))
    print(f"{'anchor head':22s} " + " ".join(f"{v:9.3f}" for v in ours))
    print(f"{'predicted Λ':22s} " + " ".join(f"{v:9.3f}" for v in predicted))
    result = {"model": args.model, "seeds": args.seeds, "outliers": args.outliers, "resolution": args.resolution,
              "steps": args.steps, "features": list(FEATURES), "groups": list(GROUPS),
              "train": sorted({r["key"] for r in train}), "held_out": sorted(held), "tuples": len(recs),
              "held_out_rank_head": ours, "held_out_rank_predicted_lam": predicted, "log": log}
    if args.write:
        full, full_log = fit_head(recs, args.steps)
        meta = {k: result[k] for k in ("model", "seeds", "outliers", "resolution", "steps", "tuples")}
        meta["held_out_rank_head"] = ours
        meta["trained_on"] = "the real corpus's train split (../shared/data/real/train), all tuples"
        path = save_anchor_head(head_path(DEFAULT_HEAD), full, meta)
        result["written"] = str(path.name)
        result["final_loss"] = full_log[-1]["loss"]
        print(f"stored the head in {path}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
