"""Rasterizer benchmark on pixel-aligned scenes like the predictor makes.

(Runs with OMP_WAIT_POLICY=PASSIVE unless --omp-active or the variable is already set: with
OpenMP's default spin-waiting, 2 threads on a CPU shared with other jobs were 2-3x slower
than 1 thread; passive waiting removes that.)

One Gaussian per pixel of 2 views (depth 2-4 along the pixel ray, 3D std chosen so that the
projected std is ``footprint/2`` px, i.e. a ≈``footprint``-px wide splat), rendered into those
2 views. Measures forward, forward+backward and jvp wall time (median of repeats) and peak
memory, on the CPU with 2 threads, and on CUDA (torch backend vs gsplat) when available.

    python benchmarks/render.py [--sizes 64 128 256] [--repeats 5] [--footprint 1.5]

Prints a table and writes benchmarks/results/render.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import render
from diff3r_cli.render.torch_backend import bin_pairs, project_gaussians


def pixel_aligned_scene(size: int, footprint: float = 1.5, sh_degree: int = 0, seed: int = 0,
                        device: str = "cpu", dtype=torch.float32) -> tuple[Gaussians, Cameras]:
    """2 views of size x size; one Gaussian per pixel of each view, unprojected to depth 2-4."""
    gen = torch.Generator().manual_seed(seed)
    f = float(size)  # ~53° field of view
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.2   # second camera 0.2 to the right (baseline ≈ 5-10 % of depth)
    cams = Cameras(K[None].repeat(2, 1, 1), w2c, size, size)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                            torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
    means, scales = [], []
    for v in range(2):
        # smooth depth field in [2,4] so neighbouring splats overlap like real surfaces
        d = 3.0 + 0.8 * torch.sin(xs / size * 5 + v) * torch.cos(ys / size * 3)
        d = d + 0.2 * (torch.rand(size, size, generator=gen, dtype=torch.float64) - 0.5)
        d = d.clamp(2.0, 4.0)
        cam_pts = torch.stack([(xs - size / 2) / f * d, (ys - size / 2) / f * d, d], -1).reshape(-1, 3)
        c2w = torch.linalg.inv(w2c[v])
        means.append(cam_pts @ c2w[:3, :3].T + c2w[:3, 3])
        scales.append((footprint / 2) * d.reshape(-1) / f)
    means = torch.cat(means)
    n = means.shape[0]
    s = torch.cat(scales)[:, None] * torch.exp(0.2 * torch.randn(n, 3, generator=gen, dtype=torch.float64))
    g = Gaussians(means, s.log(), torch.randn(n, 4, generator=gen, dtype=torch.float64),
                  torch.randn(n, generator=gen, dtype=torch.float64) + 1.0,
                  0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=torch.float64))
    return g.to(device=device, dtype=dtype), cams.to(device=device, dtype=dtype)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) in ms."""
    fn()  # warm-up
    _sync(device)
    ts, cs = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1000)
        cs.append((time.process_time() - c0) * 1000)
    return statistics.median(ts), statistics.median(cs)


_PEAK_SCRIPT = """
import os, sys, threading, time, torch
sys.path.insert(0, {here!r})
from render import pixel_aligned_scene
from diff3r_cli.render import render
torch.set_num_threads(1)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
g, cams = pixel_aligned_scene({size}, footprint={footprint!r})
p = g.map(lambda t: t.clone().requires_grad_(True))
peak, done = [0], [False]
def sample():  # torch ops release the GIL, so this thread sees the live RSS
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base = rss()
th = threading.Thread(target=sample); th.start()
o = render(p, cams, backend="torch")
(o.rgb.sum() + o.depth.sum()).backward()
done[0] = True; th.join()
print(max(peak[0], rss()) - base)
"""


def _cpu_peak_mb(size: int, footprint: float) -> float:
    """Peak resident-memory growth (MB) during one forward+backward, sampled every 0.5 ms in
    a fresh process (so earlier, larger runs cannot hide it)."""
    import subprocess
    script = _PEAK_SCRIPT.format(here=str(Path(__file__).parent), size=size, footprint=footprint)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 2**20


def _cuda_peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_one(size: int, backend: str, device: str, repeats: int, footprint: float) -> dict:
    g, cams = pixel_aligned_scene(size, footprint=footprint, device=device)
    params = g.map(lambda t: t.clone().requires_grad_(True))
    with torch.no_grad():
        ent = project_gaussians(g, cams.K, cams.w2c, size, size)
        n_pairs = int(bin_pairs(ent, len(cams), size, size)[0].numel()) if ent is not None else 0

    def fwd():
        with torch.no_grad():
            render(g, cams, backend=backend)

    def fwd_bwd():
        out = render(params, cams, backend=backend)
        (out.rgb.sum() + out.depth.sum()).backward()

    tangent = g.map(lambda t: torch.randn_like(t))

    def jvp():
        if backend == "torch":
            torch.func.jvp(lambda *ts: render(Gaussians(*ts), cams, backend=backend).rgb,
                           g.tensors(), tangent.tensors())
        else:
            from diff3r_cli.render.jvp import render_jvp
            render_jvp(g, cams, tangent, backend=backend)

    row = {"size": size, "backend": backend, "device": device, "gaussians": g.num,
           "pairs": n_pairs, "threads": torch.get_num_threads() if device == "cpu" else None,
           "loadavg_before": os.getloadavg()[0]}
    row["forward_ms"], row["forward_cpu_ms"] = _time(fwd, repeats, device)
    row["fwd_bwd_ms"], row["fwd_bwd_cpu_ms"] = _time(fwd_bwd, repeats, device)
    row["jvp_ms"], row["jvp_cpu_ms"] = _time(jvp, repeats, device)
    row["jvp_over_forward"] = row["jvp_ms"] / row["forward_ms"]
    row["loadavg_after"] = os.getloadavg()[0]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--footprint", type=float, default=1.5)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="CPU thread counts to time (the first is the headline)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "render.json"))
    ap.add_argument("--omp-active", action="store_true",
                    help="keep OpenMP's default spin-waiting (by default the benchmark re-runs itself "
                         "with OMP_WAIT_POLICY=PASSIVE, 2-3x faster on a CPU shared with other jobs)")
    args = ap.parse_args(argv)
    if not args.omp_active and "OMP_WAIT_POLICY" not in os.environ and argv is None:
        # Must be set before OpenMP starts, hence a re-exec of this very command.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve())] + sys.argv[1:])
    runs = [("torch", "cpu", t) for t in args.threads]
    if torch.cuda.is_available():
        runs += [("torch", "cuda", None), ("gsplat", "cuda", None)]
    rows = []
    hdr = (f"{'size':>5} {'backend':>7} {'dev':>4} {'thr':>3} {'gauss':>7} {'pairs':>9} {'fwd ms':>8} "
           f"{'f+b ms':>8} {'jvp ms':>8} {'jvp/f':>5} | {'cpu: fwd':>8} {'f+b':>7} {'jvp':>7} {'load':>5}")
    print(hdr)
    for backend, device, threads in runs:
        if threads is not None:
            torch.set_num_threads(threads)
        for size in sorted(args.sizes):
            r = bench_one(size, backend, device, args.repeats, args.footprint)
            rows.append(r)
            print(f"{r['size']:>5} {backend:>7} {device:>4} {str(threads or '-'):>3} {r['gaussians']:>7} "
                  f"{r['pairs']:>9} {r['forward_ms']:>8.1f} {r['fwd_bwd_ms']:>8.1f} {r['jvp_ms']:>8.1f} "
                  f"{r['jvp_over_forward']:>5.2f} | {r['forward_cpu_ms']:>8.1f} {r['fwd_bwd_cpu_ms']:>7.1f} "
                  f"{r['jvp_cpu_ms']:>7.1f} {r['loadavg_before']:>5.1f}", flush=True)
    memory = []
    if not args.no_memory:
        print(f"{'size':>5} {'pairs':>9} {'peak MB (f+b, CPU, fresh process)':>34} {'MB per M pairs':>15}")
        for size in sorted(args.sizes):
            pairs = next(r["pairs"] for r in rows if r["size"] == size)
            mb = _cpu_peak_mb(size, args.footprint)
            memory.append({"size": size, "pairs": pairs, "peak_mb": mb, "mb_per_mpair": mb / (pairs / 1e6)})
            print(f"{size:>5} {pairs:>9} {mb:>34.1f} {mb / (pairs / 1e6):>15.1f}", flush=True)
        if torch.cuda.is_available():
            for backend in ("torch", "gsplat"):
                for size in sorted(args.sizes):
                    g, cams = pixel_aligned_scene(size, footprint=args.footprint, device="cuda")
                    p = g.map(lambda t: t.clone().requires_grad_(True))

                    def fb():
                        o = render(p, cams, backend=backend)
                        (o.rgb.sum() + o.depth.sum()).backward()
                    mb = _cuda_peak_mb(fb)
                    memory.append({"size": size, "backend": backend, "device": "cuda", "peak_mb": mb})
                    print(f"cuda {backend} {size}: peak {mb:.1f} MB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"footprint_px": args.footprint, "repeats": args.repeats, "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(default)"), "command": " ".join(["benchmarks/render.py"] + (argv or sys.argv[1:])),
            "note": "wall times are medians; *_cpu_ms is process CPU time (all threads); the CPU is "
                    "shared with other jobs, see loadavg_before/after"}
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"meta": meta, "rows": rows, "memory": memory}, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
