"""Predictor figures: parameters, time per forward and peak memory, 2 views at 256x256.

Every predictor diff3r runs (our own small/base, and the MVSplat re10k / DepthSplat small
re-implementations with their Λ head), and, when given their source, the authors' encoders in the same run (same
inputs, same threads) so the re-implementation can be compared with the reference. Each row
runs in its own subprocess (peak memory = growth of the process's peak RSS, or CUDA's peak
allocation, during the forwards); rows are run in rounds (A B A B ...) and the median kept,
which evens out the load of a shared machine.

Usage:
  python benchmarks/predictor.py [--device cpu|cuda] [--res 256] [--repeats 3] [--rounds 2]
                                 [--mvsplat-ref /path/to/mvsplat] [--depthsplat-ref /path/to/depthsplat
                                  --dinov2 /path/to/dinov2]
The reference rows need their imports (einops, jaxtyping, e3nn; see tools/make_backbone_fixtures.py).
Prints a table and writes benchmarks/results/predictor[_cuda].json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("small", "base", "mvsplat-re10k", "depthsplat-small", "mvsplat-reference", "depthsplat-reference")


def _inputs(res: int, views: int, dev: torch.device):
    imgs = torch.rand(1, views, res, res, 3, generator=torch.Generator().manual_seed(0)).to(dev)
    K = torch.tensor([[res * 1.0, 0, res / 2], [0, res * 1.0, res / 2], [0, 0, 1]]).expand(1, views, 3, 3).to(dev)
    w2c = torch.eye(4).repeat(1, views, 1, 1)
    w2c[0, :, 0, 3] = torch.linspace(-0.2, 0.2, views)
    return imgs, K, w2c.to(dev), torch.tensor([1.0], device=dev), torch.tensor([100.0], device=dev)


def _reference_runner(name: str, src: Path, dinov2: Path | None, views: int, dev: torch.device):
    """The authors' encoder (MVSplat re10k / DepthSplat small), run with their input conventions."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_backbone_fixtures import build_depthsplat_reference, build_mvsplat_reference

    if name == "mvsplat-reference":
        enc = build_mvsplat_reference(src, views).to(dev).eval()
    else:
        enc = build_depthsplat_reference(src, dinov2).to(dev).eval()
    n = sum(p.numel() for p in enc.parameters())

    def run(imgs, K, w2c, near, far):
        b, v, H, W, _ = imgs.shape
        Kn = K.clone()
        Kn[..., 0, :] /= W
        Kn[..., 1, :] /= H
        ctx = {"image": imgs.permute(0, 1, 4, 2, 3), "intrinsics": Kn, "extrinsics": torch.inverse(w2c),
               "near": near[:, None].expand(b, v), "far": far[:, None].expand(b, v)}
        return enc(ctx, global_step=0, deterministic=True)

    return run, n


def one_row(name: str, res: int, views: int, repeats: int, device: str, refs: dict) -> dict:
    """Time and peak memory of one predictor in this process."""
    dev = torch.device(device)
    torch.manual_seed(0)
    if name.endswith("-reference"):
        src = refs["mvsplat"] if name.startswith("mvsplat") else refs["depthsplat"]
        run, n = _reference_runner(name, Path(src), refs.get("dinov2") and Path(refs["dinov2"]), views, dev)
    else:
        if name.startswith(("mvsplat", "depthsplat")):
            from diff3r_cli.model.backbones.predictor import BackboneConfig, BackbonePredictor
            model = BackbonePredictor(BackboneConfig() if name.startswith("mvsplat") else
                                      BackboneConfig(family="depthsplat", variant="small", train_near=0.5))
        else:
            from diff3r_cli.model.predictor import build_predictor
            model = build_predictor(name)
        model = model.to(dev).eval()
        run, n = model, model.num_parameters()
    args = _inputs(res, views, dev)
    times = []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with torch.no_grad():
        run(*args)  # warm-up (counts for the peak, not for the time)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(*args)
            sync()
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # growth of the peak RSS over the forwards (model and inputs were already resident)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    return {"predictor": name, "parameters": n, "resolution": res, "views": views, "device": device,
            "median_s": statistics.median(times), "min_s": min(times), "peak_mem_mib": peak,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS[:4]), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--mvsplat-ref", default=None, help="checkout of github.com/donydchen/mvsplat (adds its row)")
    ap.add_argument("--depthsplat-ref", default=None, help="checkout of github.com/cvg/depthsplat (adds its row; "
                                                          "needs --dinov2)")
    ap.add_argument("--dinov2", default=None, help="checkout of github.com/facebookresearch/dinov2")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one row, print JSON
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.one:
        refs = {"mvsplat": a.mvsplat_ref, "depthsplat": a.depthsplat_ref, "dinov2": a.dinov2}
        print(json.dumps(one_row(a.one, a.res, a.views, a.repeats, a.device, refs)))
        return
    names = [r for r in a.rows.split(",") if r]
    for flag, row in ((a.mvsplat_ref, "mvsplat-reference"), (a.depthsplat_ref, "depthsplat-reference")):
        if flag and row not in names:
            names.append(row)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(a.rounds):
        for n in names:
            cmd = [sys.executable, __file__, "--one", n, "--res", str(a.res), "--views", str(a.views),
                   "--repeats", str(a.repeats), "--device", a.device]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            for opt, val in (("--mvsplat-ref", a.mvsplat_ref), ("--depthsplat-ref", a.depthsplat_ref),
                             ("--dinov2", a.dinov2)):
                if val:
                    cmd += [opt, val]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                raise SystemExit(f"{n}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for n, rs in runs.items():
        r = dict(rs[0])
        r["median_s"] = statistics.median(x["median_s"] for x in rs)
        r["min_s"] = min(x["min_s"] for x in rs)
        r["peak_mem_mib"] = statistics.median(x["peak_mem_mib"] for x in rs)
        rows.append(r)
        print(f"{n:18s} params {r['parameters']:>11,d}  {r['views']} views {r['resolution']}^2 {a.device}  "
              f"median {r['median_s']:.3f} s  min {r['min_s']:.3f} s  peak +{r['peak_mem_mib']:.0f} MiB")
    from diff3r_cli.fsio import atomic_write_json

    res = {"rows": rows, "rounds": a.rounds, "threads": a.threads or torch.get_num_threads(), "torch": torch.__version__,
           "cpu": platform.processor(), "load_average": os.getloadavg()}
    out = ROOT / "benchmarks" / "results" / ("predictor.json" if a.device == "cpu" else f"predictor_{a.device}.json")
    out.parent.mkdir(exist_ok=True)
    atomic_write_json(out, res)


if __name__ == "__main__":
    main()
