"""Does a leave-one-view-out fit tell the anchor which Gaussians to free? (issue 20 item 6; a negative result)

The anchor head (diff3r_cli/depth/anchor_head.py) ranks Λ from context-only features; the oracle it
imitates moves each Gaussian as a TTO that also sees the *target* views would. A context-only stand-in
for "what another view demands": fit each context view alone (50 plain steps) and measure how far each
Gaussian moves when the view that did *not* predict it is fitted ("other"), and when its own view is
("own"). This script computes those 10 features (log mean squared change per group, centred per tuple)
for the anchor-head fit's train tuples (the records `benchmarks/fit_anchor_head.py` cached in
runs/anchor_head/), then prints

- the raw rank correlation of each feature set with the oracle displacement, and
- the held-out rank correlation of a head fitted with the 19 bundled features against one with the
  19 + 10 (same split, steps and seed as fit_anchor_head.py).

    python benchmarks/crossfit_rank.py [--work runs/anchor_head] [--cache runs/crossfit] [--part K --parts N]

Writes benchmarks/results/crossfit_rank.json. Two-view tuples only (the train tuples are).
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import torch

from diff3r_cli.fsio import atomic_output, atomic_write_json

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
STEPS = 50


def crossfit_features(g0, cams, imgs, steps: int = STEPS) -> torch.Tensor:
    """(N,10): per group, log change when the other view alone is fitted, then when the own view is."""
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.depth.anchor_head import centred_log_change, group_change
    from diff3r_cli.depth.pixel_gaussians import source_views
    from diff3r_cli.optim.tto import optimize

    if len(cams) != 2:
        raise ValueError(f"two context views expected, got {len(cams)}")
    owner = source_views(g0, cams)
    ch = []
    for v in range(2):
        one = Cameras(cams.K[v:v + 1], cams.w2c[v:v + 1], cams.width, cams.height)
        gv, _ = optimize(g0, None, one, imgs[v:v + 1], steps, compensation="off")
        ch.append(group_change(g0, gv).float())
    ch = torch.stack(ch)  # (2,N,5)
    idx = torch.arange(len(g0))
    own_v = owner.clamp_min(0)
    own, other = ch[own_v, idx], ch[1 - own_v, idx]
    back = owner < 0  # the backdrop has no source view: both fits alike
    own[back] = other[back] = ch[:, back].mean(0)
    return torch.cat([centred_log_change(other), centred_log_change(own)], 1)


def compute(cache: Path, part: int, parts: int) -> None:
    from headroom import views_of  # the sample's views as `diff3r eval` builds them

    from diff3r_cli.cameras import Cameras
    from diff3r_cli.evaluate.views import predict
    from diff3r_cli.model.io import load_model, resolve_model_path
    from diff3r_cli.train.anchor_fit import train_tuples

    model = load_model(resolve_model_path("diff3r-real"), device="cpu")
    for n, (seed, _, s) in enumerate(train_tuples(REAL, 2, 0.5, 128)):  # fit_anchor_head.py's tuples
        f = cache / f"{seed}_{s['key']}.pt"
        if n % parts != part or f.exists():
            continue
        t = time.perf_counter()
        g0, _, _ = predict(model, views_of(s, model), torch.device("cpu"))
        x = crossfit_features(g0, Cameras.of_sample(s), s["context_images"])
        with atomic_output(f, "wb") as fh:
            torch.save({"features": x, "n": len(g0)}, fh)
        print(f"  {f.stem}: {len(g0)} Gaussians, {time.perf_counter() - t:.0f} s", flush=True)


def analyse(work: Path, cache: Path, out: Path) -> None:
    import diff3r_cli.train.anchor_head_fit as fit
    from diff3r_cli.depth.anchor_head import FEATURES
    from diff3r_cli.gaussians import GROUPS

    recs = []
    for f in sorted(glob.glob(str(work / "*.pt"))):
        c = cache / Path(f).name
        if not c.exists():
            continue
        r, x = torch.load(f, weights_only=False), torch.load(c, weights_only=False)
        if x["n"] != len(r["features"]):
            raise SystemExit(f"{c}: {x['n']} Gaussians, the record has {len(r['features'])}: not the same prediction")
        recs.append(dict(r, crossfit=x["features"]))
    if not recs:
        raise SystemExit(f"no records in both {work} and {cache}: run fit_anchor_head.py, then this script")
    raw = {}
    pre = FEATURES.index("prepass_mean")  # the five pre-pass change columns, one per group
    sets = {"prepass (bundled features)": lambda r: r["features"][:, pre:pre + len(GROUPS)],
            "other view alone": lambda r: r["crossfit"][:, :5],
            "own view alone": lambda r: r["crossfit"][:, 5:]}
    for name, col in sets.items():
        rows = [[fit.spearman(col(r)[:, g], r["displacement"][:, g]) for g in range(len(GROUPS))] for r in recs]
        raw[name] = torch.tensor(rows).mean(0).tolist()
    held = fit.held_out_scenes(recs)  # as fit_anchor_head.py
    heads = {}
    for name, feats in (("19 bundled features", lambda r: r["features"]),
                        ("19 + 10 cross-fit features", lambda r: torch.cat([r["features"], r["crossfit"]], 1))):
        rs = [dict(r, features=feats(r)) for r in recs]
        head, _ = fit.fit_head([r for r in rs if r["key"] not in held], 3000, n_features=rs[0]["features"].shape[1])
        heads[name] = fit.rank_correlations(head, [r for r in rs if r["key"] in held])
    print(f"{'rank correlation with the oracle displacement':48s} " + " ".join(f"{g:>9s}" for g in GROUPS))
    for name, v in {**{f"raw: {k}": v for k, v in raw.items()}, **{f"held-out head: {k}": v for k, v in heads.items()}}.items():
        print(f"{name:48s} " + " ".join(f"{x:+9.3f}" for x in v))
    atomic_write_json(out, {"tuples": len(recs), "held_out_scenes": sorted(held), "steps": STEPS, "groups": list(GROUPS),
                            "raw": raw, "held_out_head": heads})
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "anchor_head")
    ap.add_argument("--cache", type=Path, default=HERE.parent / "runs" / "crossfit")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1)
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "crossfit_rank.json")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        torch.set_num_threads(1 if args.parts > 1 else torch.get_num_threads())
        compute(args.cache, args.part, args.parts)
    if args.parts == 1 or args.analyse_only:
        analyse(args.work, args.cache, args.out)


if __name__ == "__main__":
    main()
