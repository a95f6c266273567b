"""How much could the uncertainty-anchored refine still gain? Oracles and grids (issues 20 and 23).

The `diff3r eval` row diff3r+TTO+unc (confidence pre-pass, pixel weights, the anchor head's Λ, 200
Adam steps; ``depth.consistency.confident_start`` without dropping) is re-run here on the same
tuples with one thing changed, to find where its margins over plain TTO are lost.

``strength``: Λ times a global factor s for each s in --scales. Does the anchor's overall strength
matter, and on which split? (issue 20's synthetic target: +unc was 2 dB under plain TTO there.) s
multiplies the Λ of the model *as calibrated* (its ``anchor_log_scales``, recorded in the grid's
settings); ``fit_anchor_strength.py`` picks s from train-split grids.

``outliers``: the evaluation's outlier protocol (--outliers P, seed 0) and three rows per tuple:
- ``default``: the +unc row on the corrupted context photos, as `diff3r eval --outliers P` runs it;
- ``oracle_masks``: the same with the protocol's true corruption masks as well: those pixels get weight
  0 and the Gaussians predicted from them are dropped (perfect occluder detection);
- ``oracle_repair``: θ0 predicted from photos whose corrupted pixels are restored to the clean photo
  (a perfect inpainting before the prediction), then the default row on the corrupted photos;
- ``clean``: the +unc row without outliers (what the corruption costs).
A view that the protocol re-exposed as a whole (its mask is the whole frame) is left to the exposure
compensation in both oracles: no mask can say which of two views has the right exposure.

Resumable and splittable: --part k --parts n computes every n-th tuple into <out>.part<k>.json
(tuples already there are skipped); --merge joins the parts into <out> and prints the table.

    python benchmarks/headroom.py strength [--data real|synthetic] [--split test|train] [--scales 0.01,0.1,1]
        [--outliers P]
    python benchmarks/headroom.py outliers [--outliers 0.5]
        [--data-root DIR] [--resolution N] [--limit N] [--part K --parts N | --merge] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.re10k import RE10KDataset
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, resolve_head
from diff3r_cli.depth.consistency import confident_start, contradicted
from diff3r_cli.engines.policy import DEFAULT_MODEL
from diff3r_cli.evaluate.command import depth_range_for, outlier_config
from diff3r_cli.evaluate.views import EvalViews, predict, score
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.optim.tto import optimize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# default root and resolution per data set (the synthetic split has no fixed place: --data-root)
DATA = {"real": (ROOT.parent / "shared" / "data" / "real", 128), "synthetic": (None, 64)}


def dataset(root: Path, split: str, resolution: int, outliers: float = 0.0) -> RE10KDataset:
    """The evaluation's fixed tuples (test) or one sampled tuple per scene (train, seed 0)."""
    index = root / "evaluation_index.json" if split == "test" else None
    return RE10KDataset(root, split=split, resolution=resolution, evaluation_index=index, seed=0,
                        outliers=outlier_config(outliers) if outliers else None, full_context=True, warn=False)


def views_of(sample: dict, model) -> EvalViews:
    """The sample's EvalViews as `diff3r eval` builds them (near/far by the model's convention, depth
    stage on)."""
    near, far, _ = depth_range_for(sample, "auto", model.cfg.depth_range)
    return replace(EvalViews.from_sample(sample, near, far), sweep=True)


def target_psnr(g, views: EvalViews) -> float:
    return score(g, views, context=False).means()["psnr"]


def plus_unc(g0, lam, cams: Cameras, images: torch.Tensor, views: EvalViews, head, steps: int,
             scales: tuple[float, ...] = (1.0,), masks: Optional[torch.Tensor] = None) -> list[float]:
    """Target PSNR of the +unc row for each global anchor factor in ``scales``; ``masks`` (V,H,W) bool:
    pixels known to be corrupted (weight 0, their Gaussians dropped)."""
    g, lam_s, w, _ = confident_start(g0, lam, cams, images, drop=False, head=head)
    if masks is not None:
        known = (~masks).to(w)
        keep = ~contradicted(g, cams, known)
        g, lam_s, w = g[keep], lam_s[keep], torch.minimum(w, known)
    out = []
    for s in scales:
        gs, _ = optimize(g, lam_s * s, cams, images, steps, compensation="auto", pixel_weights=w)
        out.append(target_psnr(gs, views))
    return out


def run_strength(args, model, head):
    """(key, row) per tuple: the +unc row's target PSNR at each global anchor factor."""
    if args.data_root is None and DATA[args.data][0] is None:
        raise SystemExit(f"--data {args.data} needs --data-root (e.g. a `diff3r data synth --split test` output)")
    root, res = Path(args.data_root or DATA[args.data][0]), args.resolution or DATA[args.data][1]
    for n, s in enumerate(dataset(root, args.split, res, args.outliers)):
        if n >= args.limit:
            break
        if n % args.parts != args.part or s["key"] in args.done:
            continue
        t = time.perf_counter()
        v = views_of(s, model)
        g0, lam, _ = predict(model, v, torch.device("cpu"))
        psnr = plus_unc(g0, lam, Cameras.of_sample(s), s["context_images"], v, head, args.steps, tuple(args.scales))
        row = {f"s={x:g}": round(p, 3) for x, p in zip(args.scales, psnr)}
        print(f"  {s['key']}: {row} ({time.perf_counter() - t:.0f} s)", flush=True)
        yield s["key"], row


def run_outliers(args, model, head):
    """(key, row) per tuple: the +unc row clean, with outliers, and with the two oracles."""
    root, res = Path(args.data_root or DATA["real"][0]), args.resolution or DATA["real"][1]
    clean_ds, bad_ds = dataset(root, "test", res), dataset(root, "test", res, args.outliers)
    for n, (c, s) in enumerate(zip(clean_ds, bad_ds)):
        if n >= args.limit:
            break
        if c["key"] != s["key"]:
            raise RuntimeError(f"the clean and corrupted tuples differ: {c['key']} / {s['key']}")
        if n % args.parts != args.part or s["key"] in args.done:
            continue
        t = time.perf_counter()
        cams, imgs = Cameras.of_sample(s), s["context_images"]
        masks = s["context_outlier_mask"].clone()
        masks[masks.flatten(1).all(1)] = False  # a whole view re-exposed: the compensation's job
        row = {"corrupted": round(float(s["context_outlier_mask"].float().mean()), 4)}
        vc = views_of(c, model)
        g0c, lamc, _ = predict(model, vc, torch.device("cpu"))
        row["clean"] = plus_unc(g0c, lamc, cams, c["context_images"], vc, head, args.steps)[0]
        v = views_of(s, model)
        g0, lam, _ = predict(model, v, torch.device("cpu"))
        row["default"] = plus_unc(g0, lam, cams, imgs, v, head, args.steps)[0]
        if bool(masks.any()):
            row["oracle_masks"] = plus_unc(g0, lam, cams, imgs, v, head, args.steps, masks=masks)[0]
            repaired = torch.where(masks[..., None], c["context_images"], imgs)
            # the corrupted tuple's near/far (no second triangulation); the depth stage re-sets them anyway
            g0r, lamr, _ = predict(model, replace(v, context_images=repaired), torch.device("cpu"))
            row["oracle_repair"] = plus_unc(g0r, lamr, cams, imgs, v, head, args.steps)[0]
        else:  # nothing but (at most) a whole-view exposure change: the oracles are the default row
            row["oracle_masks"] = row["oracle_repair"] = row["default"]
        row = {k: round(x, 3) for k, x in row.items()}
        print(f"  {s['key']}: {row} ({time.perf_counter() - t:.0f} s)", flush=True)
        yield s["key"], row


def table(rows: dict) -> list[str]:
    cols = [k for k in next(iter(rows.values())) if k != "corrupted"]
    lines = ["| tuple | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key, r in rows.items():
        lines.append(f"| {key} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{sum(r[c] for r in rows.values()) / len(rows):.2f}**"
                                            for c in cols) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("strength", "outliers"))
    ap.add_argument("--data", choices=tuple(DATA), default="real")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--scales", default="0.01,0.1,1")
    ap.add_argument("--outliers", type=float, default=None,
                    help="the outlier protocol's P (outliers: default 0.5; strength: default 0, clean tuples)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--anchor-head", default=DEFAULT_HEAD)
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.scales = [float(x) for x in args.scales.split(",")]
    if args.outliers is None:
        args.outliers = 0.5 if args.what == "outliers" else 0.0
    name = "outlier_headroom" if args.what == "outliers" else f"anchor_strength_{args.data}_{args.split}"
    if args.what == "strength" and args.outliers:
        name += f"_outliers_{args.outliers:g}"
    out = Path(args.out or RESULTS / f"{name}.json")
    part_file = out.with_suffix(f".part{args.part}.json")
    if args.merge:
        parts = sorted(out.parent.glob(out.stem + ".part*.json"))
        if not parts:
            raise SystemExit(f"nothing to merge: no {out.stem}.part*.json in {out.parent} (run with --part K --parts N first)")
        rows: dict = {}
        for f in parts:
            rows.update(json.loads(f.read_text())["tuples"])
        doc = {"settings": json.loads(parts[0].read_text())["settings"], "tuples": rows}
        atomic_write_json(out, doc)
        print("\n".join(table(rows)))
        print(f"wrote {out}")
        return
    torch.set_num_threads(1 if args.parts > 1 else torch.get_num_threads())
    doc = json.loads(part_file.read_text()) if part_file.exists() else {"tuples": {}}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("merge",)}
    doc["settings"] = settings
    args.done = set(doc["tuples"])
    model = load_model(resolve_model_path(args.model), device="cpu")
    # a factor s is relative to the calibration the model already carries: record it with the grid
    cal = model.cfg.anchor_log_scales
    settings["anchor_log_scales"] = None if cal is None else [list(row) for row in cal]
    head = resolve_head(None if args.anchor_head == "none" else args.anchor_head)
    gen = run_outliers(args, model, head) if args.what == "outliers" else run_strength(args, model, head)
    for key, row in gen:
        doc["tuples"][key] = row
        atomic_write_json(part_file, doc)
    if doc["tuples"]:
        print("\n".join(table(doc["tuples"])))
    print(f"wrote {part_file}")


if __name__ == "__main__":
    main()
