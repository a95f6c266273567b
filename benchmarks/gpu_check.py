"""Timings for benchmarks/gpu_check.sh: one table, one JSON.

- render forward+backward ms at 256² and 512² (pixel-aligned 2-view scenes of
  benchmarks/render.py): gsplat and the torch backend on CUDA, the compiled backend on the CPU;
- predictor ms per scene (bundled model, 2 context views, 256²) on the device;
- IFT backward seconds: optimization_layer (10 Adam steps, PCG) on a predicted 128² scene;
- the step results the shell script measured (reconstruct s, refine s, train s/step, test
  counts), passed in as --extra JSON.

    python benchmarks/gpu_check.py --device cuda|cpu [--extra results.json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from render import pixel_aligned_scene  # noqa: E402

from diff3r_cli.render import render  # noqa: E402
from diff3r_cli.fsio import atomic_write_json


def _ms(fn, device: str, repeats: int = 5) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def render_ms(size: int, backend: str, device: str) -> float:
    g, cams = pixel_aligned_scene(size, device=device)
    p = g.map(lambda t: t.clone().requires_grad_(True))

    def fb():
        o = render(p, cams, backend=backend)
        (o.rgb.sum() + o.depth.sum()).backward()
    return _ms(fb, device, repeats=5 if device == "cuda" else 2)


def predictor_and_ift(device: str, predict_res: int = 256, ift_res: int = 128) -> dict:
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.model.io import load_model
    from diff3r_cli.optim.implicit import optimization_layer_with_stats

    model = load_model("diff3r-small", device=torch.device(device))
    out = {}
    for res, key in ((predict_res, "predictor_ms"), (ift_res, None)):
        g, cams = pixel_aligned_scene(res, device=device)
        images = render(g, cams).rgb.detach().clamp(0, 1)
        K = cams.K[None].float()
        w2c = cams.w2c[None].float()
        near = torch.full((1,), 1.0, device=device)
        far = torch.full((1,), 10.0, device=device)
        ctx = images[None]

        def predict():
            with torch.no_grad():
                model(ctx, K, w2c, near, far)
        if key:
            out[key] = _ms(predict, device, repeats=5)
        else:
            pred = model(ctx, K, w2c, near, far)
            g0, lam = pred.gaussians[0], pred.lam[0]
            gs, stats = optimization_layer_with_stats(g0, lam, Cameras(K[0], w2c[0], res, res), images, 10, "adam")
            loss = ((render(gs, Cameras(K[0], w2c[0], res, res)).rgb - images) ** 2).mean()
            t0 = time.perf_counter()
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            out["ift_backward_s"] = time.perf_counter() - t0
            out["ift_pcg_iterations"] = stats.backward.solve.pcg_iterations
            out["ift_jvp_mode"] = stats.backward.solve.jvp_mode
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--predict-res", type=int, default=256)
    ap.add_argument("--ift-res", type=int, default=128)
    ap.add_argument("--extra", help="JSON file with the shell script's step results")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = ap.parse_args(argv)
    res: dict = {"device": args.device, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "render_fb_ms": {}}
    for size in args.sizes:
        row = {}
        if args.device == "cuda":
            row["gsplat"] = render_ms(size, "gsplat", "cuda")
            row["torch-cuda"] = render_ms(size, "torch", "cuda")
        from diff3r_cli.render import cpu_ext
        row["compiled-cpu"] = render_ms(size, "cpu", "cpu") if cpu_ext.load() else None
        res["render_fb_ms"][str(size)] = row
    res.update(predictor_and_ift(args.device, args.predict_res, args.ift_res))
    res["predict_res"], res["ift_res"] = args.predict_res, args.ift_res
    if args.extra and Path(args.extra).exists():
        res["steps"] = json.loads(Path(args.extra).read_text())
    print(f"\ndiff3r GPU check ({res['gpu'] or 'CPU only'}, torch {res['torch']})")
    print(f"{'render fwd+bwd (ms)':<28}" + "".join(f"{k:>14}" for k in ("gsplat", "torch-cuda", "compiled-cpu")))
    for size, row in res["render_fb_ms"].items():
        print(f"{'  ' + size + '² pixel-aligned':<28}" + "".join(
            f"{row[k]:>14.1f}" if row.get(k) is not None else f"{'-':>14}"
            for k in ("gsplat", "torch-cuda", "compiled-cpu")))
    print(f"{f'predictor ms / scene ({args.predict_res}²)':<28}{res['predictor_ms']:>14.1f}")
    print(f"{f'IFT backward s ({args.ift_res}², K=10)':<28}{res['ift_backward_s']:>14.2f}")
    for k, v in (res.get("steps") or {}).items():
        print(f"{k:<28}{v!s:>14}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
