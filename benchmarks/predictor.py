"""Predictor figures: parameter count and CPU inference time per size, 2 views at 256x256.

Usage: python benchmarks/predictor.py [--threads N] [--res 256] [--repeats 5]
Prints a table and writes benchmarks/results/predictor.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diff3r_cli.model.predictor import build_predictor
from diff3r_cli.fsio import atomic_write_json


def bench(size: str, res: int, views: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_predictor(size).eval()
    imgs = torch.rand(1, views, res, res, 3)
    K = torch.tensor([[res * 1.0, 0, res / 2], [0, res * 1.0, res / 2], [0, 0, 1]]).expand(1, views, 3, 3)
    w2c = torch.eye(4).repeat(1, views, 1, 1)
    w2c[0, :, 0, 3] = torch.linspace(-0.2, 0.2, views)
    near, far = torch.tensor([1.0]), torch.tensor([100.0])
    times = []
    with torch.no_grad():
        model(imgs, K, w2c, near, far)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(imgs, K, w2c, near, far)
            times.append(time.perf_counter() - t0)
    return {"size": size, "parameters": model.num_parameters(), "resolution": res, "views": views,
            "gaussians": views * res * res, "median_s": statistics.median(times), "min_s": min(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [bench(s, a.res, a.views, a.repeats) for s in ("small", "base")]
    for r in rows:
        print(f"{r['size']:6s} params {r['parameters']:>9,d}  {r['views']} views {r['resolution']}^2 "
              f"-> {r['gaussians']:,d} Gaussians  median {r['median_s'] * 1000:.0f} ms  min {r['min_s'] * 1000:.0f} ms")
    res = {"rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
           "load_average": os.getloadavg()}
    out = Path(__file__).parent / "results" / "predictor.json"
    out.parent.mkdir(exist_ok=True)
    atomic_write_json(out, res)


if __name__ == "__main__":
    main()
