"""fox with `reconstruct`'s default settings: the depth range from the look-at guess vs. triangulation.

Same as `diff3r reconstruct ../shared/data/fox --out scene.ply` up to the prediction (default working
resolution, default 3 context views, bundled diff3r-small); the only change is where near/far come
from. Reports context-view PSNR (the inputs re-rendered from the prediction) and the PSNR of the 5
unseen views nearest to the context cameras. Writes benchmarks/results/fox_depth_range.json.

    python benchmarks/fox_depth_range.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from diff3r_cli.engines.outputs import mean_psnr, render_views
from diff3r_cli.engines.policy import DEFAULT_MODEL, choose_context, default_resolution, estimate_depth_range
from diff3r_cli.model.inference import predict_gaussians
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import resize_scene

HERE = Path(__file__).resolve().parent
FOX = HERE.parent.parent / "shared" / "data" / "fox"


def main() -> None:
    from real_scenes import render_backend  # same folder

    scene = load_scene(FOX)
    scene = resize_scene(scene, *default_resolution(scene.width, scene.height))
    ctx = choose_context(scene.cameras)
    c = scene.cameras.centers.to(torch.float64)
    others = [i for i in range(len(scene)) if i not in ctx]
    dist = torch.stack([(c[others] - c[i]).norm(dim=1) for i in ctx]).min(0).values
    held = [others[i] for i in torch.argsort(dist)[:5].tolist()]
    net = load_model(resolve_model_path(DEFAULT_MODEL), device="cpu")
    out = {"scene": str(FOX), "resolution": [scene.width, scene.height], "context": ctx, "held_out": held,
           "model": DEFAULT_MODEL, "render_backend": render_backend(), "runs": []}
    for triangulate in (False, True):
        t0 = time.perf_counter()
        near, far, src = estimate_depth_range(scene, ctx, triangulate=triangulate)
        t_range = time.perf_counter() - t0
        g, _ = predict_gaussians(net, scene.images[ctx], scene.cameras[ctx], near, far, torch.device("cpu"))
        run = {"near": near, "far": far, "depth_range_from": src, "range_seconds": round(t_range, 2),
               "context_psnr": mean_psnr(render_views(g, scene.cameras[ctx]), scene.images[ctx]),
               "heldout_psnr": mean_psnr(render_views(g, scene.cameras[held]), scene.images[held])}
        out["runs"].append(run)
        print(f"{src:45s} near {near:.3g} far {far:.3g}: context {run['context_psnr']:.2f} dB, "
              f"nearest unseen {run['heldout_psnr']:.2f} dB")
    path = HERE / "results" / "fox_depth_range.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
