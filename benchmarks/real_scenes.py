"""Held-out view quality on the real photos in ../shared/data (fern: posed by our SfM; fox: transforms.json).

For each chosen target frame the two nearest other cameras are the context views (an
interpolation setting like the synthetic test split). Compares ff, ff+TTO, diff3r,
diff3r+TTO with and without uncertainty. Prints a table, writes benchmarks/results/real_scenes.json.

    python benchmarks/real_scenes.py [--data ../shared/data] [--steps 0,50] [--targets 3] [--max-side 160]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diff3r_cli.evaluate import evaluate_views, plan_runs, print_summary, summarize
from diff3r_cli.model.io import load_model
from diff3r_cli.pipeline import default_resolution, estimate_depth_range
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import resize_scene

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--scenes", default="llff_fern,fox")
    ap.add_argument("--steps", default="0,50")
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--model", default="diff3r-small")
    ap.add_argument("--ff-model", default="ff-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "real_scenes.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    models = {"diff3r": load_model(a.model), "ff": load_model(a.ff_model)}
    runs = plan_runs(sorted(int(s) for s in a.steps.split(",")), True)
    dev = torch.device("cpu")
    report = {"scenes": {}, "steps": a.steps, "max_side": a.max_side}
    all_rows = []
    for name in a.scenes.split(","):
        root = Path(a.data) / name
        if not root.exists():
            print(f"skip {name}: {root} not found")
            continue
        t0 = time.perf_counter()
        scene = load_scene(root, progress=False)
        t_load = time.perf_counter() - t0
        w, h = default_resolution(scene.width, scene.height, a.max_side)
        scene = resize_scene(scene, w, h)
        centres = scene.cameras.centers.to(torch.float64)
        n = len(scene)
        targets = [int(round(x)) for x in torch.linspace(n * 0.2, n * 0.8, a.targets).tolist()]
        rows = []
        for t in targets:
            d = (centres - centres[t]).norm(dim=1)
            d[t] = float("inf")
            ctx = sorted(torch.argsort(d)[:2].tolist())
            near, far, src = estimate_depth_range(scene, ctx)
            metrics, _ = evaluate_views(models, runs, scene.images[ctx], scene.cameras.K[ctx].float(),
                                        scene.cameras.w2c[ctx].float(), scene.images[[t]],
                                        scene.cameras.K[[t]].float(), scene.cameras.w2c[[t]].float(),
                                        near, far, dev)
            row = {"scene": name, "context": ctx, "target": [t], "near": near, "far": far, "range_from": src}
            row.update(metrics)
            rows.append(row)
            print(name, ctx, t, {k: round(v["psnr"], 2) for k, v in metrics.items() if v})
        summ = summarize(rows, runs)
        report["scenes"][name] = {"views": n, "resolution": [w, h], "load_s": round(t_load, 1),
                                  "sfm": {k: scene.extras.get(k) for k in ("reprojection_error", "num_registered")},
                                  "summary": summ, "rows": rows}
        print_summary({"num_scenes": len(rows), "resolution": f"{w}x{h} {name}", "outliers": False, "summary": summ})
        all_rows += rows
    report["summary"] = summarize(all_rows, runs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
