"""Real photos, evaluated like `diff3r eval`: the real corpus's test split, llff_fern and fox, at native aspect.

Every tuple has 2 context views and 2 target views between them:
- real test split (`../shared/data/real`, 4 scenes x 3 tuples): the fixed tuples of its
  evaluation_index.json, near/far triangulated from the context views (as `diff3r eval` does);
- llff_fern (bare folder, posed by our SfM) and fox (transforms.json): 3 tuples each, drawn by the
  real-sequence view sampler (context pairs 15-30 deg apart sharing the view, else by frame gap;
  first 3 distinct pairs of seeds 0, 1, ...), near/far from the SfM points (fern) or triangulated
  (fox); triangulation runs on the context views at their stored size (more features than 128 px).
Images keep their aspect ratio: short side --short (default 128), sides cropped to a multiple of 16.

All five configurations (ff, ff+TTO, diff3r, diff3r+TTO+unc, diff3r+TTO) at each --steps budget:
target PSNR/SSIM and context PSNR (the inputs re-rendered from the same Gaussians). Every finished
tuple is appended to a cache (so an interrupted run resumes where it stopped); the summary goes to
benchmarks/results/real_scenes.json and a picture grid (context, target, ff, ff+TTO,
diff3r+TTO+unc at the largest budget) to benchmarks/results/real_grid.png (--out, --grid-out).

    python benchmarks/real_scenes.py [--short 128] [--steps 0,50,200] [--only real,fern,fox] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig
from diff3r_cli.data.view_sampler import sample_views_real
from diff3r_cli.evaluate import depth_range_for, evaluate_views, markdown_table, plan_runs, print_summary, summarize
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.model.io import load_model
from diff3r_cli.engines.policy import estimate_depth_range
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import native_size, resize_scene

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
GRID_COLUMNS = ("context", "target", "ff", "ff+TTO", "diff3r+TTO+unc")


def models_tag(*names: str) -> str:
    """A short name for a set of weights files: their stems and a hash of their bytes."""
    import hashlib

    from diff3r_cli.model.io import resolve_model_path

    paths = [resolve_model_path(n) for n in names]
    h = hashlib.sha1()
    for p in paths:
        h.update(p.read_bytes())
    return "+".join(p.stem for p in paths) + "-" + h.hexdigest()[:8]


def model_convention(model) -> str:
    """The model's near/far convention (PredictorConfig.depth_range)."""
    return getattr(model.cfg, "depth_range", "fitted")


def render_backend() -> str:
    """The backend render(backend="auto") uses for CPU tensors here (recorded with the figures)."""
    from diff3r_cli.render import resolve_backend

    return resolve_backend("auto", torch.zeros(1))


def real_split_tuples(short: int, conventions):
    """(group, key, sample-like dict, {convention: (near, far, source)}) for each evaluation tuple of
    the real test split (each model's depth-range convention decided as `diff3r eval` does)."""
    root = DATA / "real"
    ds = RE10KDataset(root, "test", resolution=short, evaluation_index=root / "evaluation_index.json",
                      full_context=True)  # near/far triangulated at the stored size, as `diff3r eval` does
    for s in ds:
        yield "real test split", s["key"], s, {c: depth_range_for(s, "auto", c) for c in conventions}


def scene_tuples(name: str, short: int, conventions, count: int = 3):
    """Tuples of a shared-data scene, drawn by the real-sequence sampler with seeds 0..count-1."""
    full = load_scene(DATA / name, progress=False)
    scene = resize_scene(full, *native_size(full.width, full.height, short))
    cfg = ViewSamplerConfig(num_context=2, num_target=2, mode="angle", min_gap=4, max_gap=12)
    seen = set()
    for seed in range(count * 4):
        if len(seen) == count:
            break
        ctx, tgt = sample_views_real(scene.cameras, cfg, torch.Generator().manual_seed(seed))
        if tuple(ctx) in seen:
            continue
        seen.add(tuple(ctx))
        tgt = sorted(set(tgt))
        # stored size: more features to triangulate
        rng = {c: estimate_depth_range(full, ctx, convention=c) for c in conventions}
        c, t = scene.cameras, torch.as_tensor(tgt)
        s = {"context_images": scene.images[ctx], "context_K": c.K[ctx].float(), "context_w2c": c.w2c[ctx].float(),
             "target_images": scene.images[t], "target_K": c.K[t].float(), "target_w2c": c.w2c[t].float(),
             "context_indices": torch.tensor(ctx), "target_indices": t}
        yield name, f"{name}_{ctx[0]}_{ctx[1]}", s, rng


def strip(sample: dict, renders: dict, steps: int) -> np.ndarray:
    """One grid row: first context view, first target, and the first target rendered by 3 configurations."""
    ims = [sample["context_images"][0], sample["target_images"][0], renders["ff@0"][0],
           renders[f"ff+TTO@{steps}"][0], renders[f"diff3r+TTO+unc@{steps}"][0]]
    return np.concatenate([(im.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8) for im in ims], axis=1)


def compose_grid(paths: list[Path], out: Path, steps: int, height: int = 128) -> None:
    """Stack the saved strips (each rescaled to one height); every cell is labelled, since rows differ in
    width (each scene keeps its aspect ratio)."""
    labels = [name + (f"@{steps}" if "TTO" in name else "") for name in GRID_COLUMNS]
    rows = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        im = im.resize((round(im.width * height / im.height), height), Image.LANCZOS)
        draw = ImageDraw.Draw(im)
        cell = im.width / len(labels)
        for k, label in enumerate(labels):
            x = int(k * cell)
            draw.rectangle((x, 0, x + 6 * len(label) + 4, 12), fill=(0, 0, 0))
            draw.text((x + 2, 1), label, fill=(255, 255, 255))
        rows.append(im)
    grid = Image.new("RGB", (max(r.width for r in rows), height * len(rows)), (255, 255, 255))
    for i, r in enumerate(rows):
        grid.paste(r, (0, i * height))
    grid.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=128, help="short side of the working images")
    ap.add_argument("--steps", default="0,50,200")
    ap.add_argument("--only", default="real,llff_fern,fox")
    ap.add_argument("--limit", type=int, default=None, help="at most this many tuples per group")
    ap.add_argument("--model", default="diff3r-small")
    ap.add_argument("--ff-model", default="ff-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default="viking_0,tum_freiburg_desk_1,colosseum_0,opensfm_lund_1",
                    help="tuple keys whose renders make up the PNG grid (plus the first fern and fox tuple)")
    ap.add_argument("--out", default=str(HERE / "results" / "real_scenes.json"))
    ap.add_argument("--grid-out", default=str(HERE / "results" / "real_grid.png"))
    ap.add_argument("--cache", default=str(HERE / "results" / "real_cache"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps = sorted({int(s) for s in a.steps.split(",")})
    models = {"diff3r": load_model(a.model), "ff": load_model(a.ff_model)}
    runs = plan_runs(steps, True)
    conventions = sorted({model_convention(m) for m in models.values()})
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    # rows and strips are keyed by the models too: another pair must never reuse them
    tag = models_tag(a.model, a.ff_model)
    rows_file = cache / f"rows_{tag}_s{a.short}_{'-'.join(map(str, steps))}.jsonl"
    done = {}
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    backend = render_backend()
    groups = []
    for g in a.only.split(","):
        if g == "real" and (DATA / "real" / "test").is_dir():
            groups.append(real_split_tuples(a.short, conventions))
        elif g in ("llff_fern", "fox") and (DATA / g).is_dir():
            groups.append(scene_tuples(g, a.short, conventions))
        else:
            print(f"skip {g}: not found under {DATA}")
    for gen in groups:
        n = 0
        for group, key, s, rng in gen:
            if a.limit is not None and n >= a.limit:
                break
            n += 1
            if key in done:
                continue
            t0 = time.perf_counter()
            renders: dict = {}
            ranges = {n: rng[model_convention(m)] for n, m in models.items()}
            near, far, src = ranges["diff3r"]
            metrics, fails = evaluate_views(models, runs, s["context_images"], s["context_K"], s["context_w2c"],
                                            s["target_images"], s["target_K"], s["target_w2c"], near, far,
                                            torch.device("cpu"), renders=renders,
                                            ranges={n: r[:2] for n, r in ranges.items()})
            H, W = s["context_images"].shape[1:3]
            row = {"group": group, "key": key, "context": s["context_indices"].tolist(),
                   "target": s["target_indices"].tolist(), "size": [W, H],
                   "depth_range": [round(near, 4), round(far, 4), src],
                   "depth_ranges": {n: [round(r[0], 4), round(r[1], 4), r[2]] for n, r in ranges.items()},
                   "numerical_failures": fails,
                   "seconds": round(time.perf_counter() - t0, 1), "render_backend": backend,
                   "threads": a.threads, **metrics}
            if steps[-1] > 0 and metrics.get(f"ff+TTO@{steps[-1]}") and metrics.get(f"diff3r+TTO+unc@{steps[-1]}"):
                Image.fromarray(strip(s, renders, steps[-1])).save(cache / f"{key}_{tag}_s{a.short}.png")
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key] = row
            print(f"{key:28s} {W}x{H} {row['seconds']:7.1f}s  " + "  ".join(
                f"{k}={v['psnr']:.2f}" for k, v in metrics.items() if v and k.endswith(f"@{steps[-1]}")), flush=True)
    report = {"short_side": a.short, "tto_steps": steps, "models": {"diff3r": a.model, "ff": a.ff_model},
              "render_backends": sorted({r["render_backend"] for r in done.values()}),
              "threads": sorted({r["threads"] for r in done.values()}),
              "seconds": round(sum(r["seconds"] for r in done.values()), 1), "groups": {}}
    for group in ("real test split", "llff_fern", "fox"):
        rows = [r for r in done.values() if r["group"] == group]
        if not rows:
            continue
        summ = summarize(rows, runs)
        report["groups"][group] = {"tuples": len(rows), "summary": summ, "rows": rows}
        res = {"num_scenes": len(rows), "resolution": a.short, "outliers": False, "summary": summ}
        print(f"\n{group} ({len(rows)} tuples)")
        print_summary(res)
        print(markdown_table(res))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, report, indent=1)
    print(f"wrote {a.out}")
    keys = [k for k in a.grid.split(",") if k]
    keys += [next((k for k, r in done.items() if r["group"] == g), "") for g in ("llff_fern", "fox")]
    strips = [cache / f"{k}_{tag}_s{a.short}.png" for k in keys if k]
    strips = [p for p in strips if p.exists()]
    if strips:
        compose_grid(strips, Path(a.grid_out), steps[-1])
        print(f"wrote {a.grid_out} ({len(strips)} rows)")


if __name__ == "__main__":
    main()
