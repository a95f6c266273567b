"""Rasterizer benchmark on pixel-aligned scenes like the predictor makes: the torch
backend against the compiled CPU backend, side by side in one run (same scene, same thread
count, timed back to back, so the ratio survives a noisy shared CPU).

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
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.render import render
from diff3r_cli.render.torch_backend import bin_pairs, project_gaussians


def parse_size(text: str) -> tuple[int, int]:
    """"256" -> (256, 256); "512x384" -> (512, 384) (width x height)."""
    w, _, h = str(text).lower().partition("x")
    return int(w), int(h or w)


def pixel_aligned_scene(size, footprint: float = 1.5, sh_degree: int = 0, seed: int = 0,
                        device: str = "cpu", dtype=torch.float32) -> tuple[Gaussians, Cameras]:
    """2 views of W x H (``size``: an int for a square, or (W, H)); one Gaussian per pixel of
    each view, unprojected to depth 2-4."""
    W, H = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    f = float(max(W, H))  # ~53° field of view across the long side
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.2   # second camera 0.2 to the right (baseline ≈ 5-10 % of depth)
    cams = Cameras(K[None].repeat(2, 1, 1), w2c, W, H)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                            torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    means, scales = [], []
    for v in range(2):
        # smooth depth field in [2,4] so neighbouring splats overlap like real surfaces
        d = 3.0 + 0.8 * torch.sin(xs / f * 5 + v) * torch.cos(ys / f * 3)
        d = d + 0.2 * (torch.rand(H, W, generator=gen, dtype=torch.float64) - 0.5)
        d = d.clamp(2.0, 4.0)
        cam_pts = torch.stack([(xs - W / 2) / f * d, (ys - H / 2) / f * d, d], -1).reshape(-1, 3)
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
from diff3r_cli.fsio import atomic_write_json
torch.set_num_threads(1)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
g, cams = pixel_aligned_scene({size!r}, footprint={footprint!r})
p = g.map(lambda t: t.clone().requires_grad_(True))
peak, done = [0], [False]
def sample():  # torch ops release the GIL, so this thread sees the live RSS
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base = rss()
th = threading.Thread(target=sample); th.start()
o = render(p, cams, backend={backend!r})
(o.rgb.sum() + o.depth.sum()).backward()
done[0] = True; th.join()
print(max(peak[0], rss()) - base)
"""


def _cpu_peak_mb(size, footprint: float, backend: str = "torch") -> float:
    """Peak resident-memory growth (MB) during one forward+backward, sampled every 0.5 ms in
    a fresh process (so earlier, larger runs cannot hide it). The compiled backend is built
    (or loaded from the cache) before the baseline is taken."""
    import subprocess
    script = _PEAK_SCRIPT.format(here=str(Path(__file__).parent), size=size, footprint=footprint,
                                 backend=backend)
    if backend == "cpu":
        script = script.replace("base = rss()", "from diff3r_cli.render import cpu_ext; cpu_ext.load()\nbase = rss()")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 2**20


def _cuda_peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_one(size, backend: str, device: str, repeats: int, footprint: float) -> dict:
    from diff3r_cli.optim.energy import Energy
    from diff3r_cli.render.jvp import render_jvp

    W, H = size
    g, cams = pixel_aligned_scene(size, footprint=footprint, device=device)
    params = g.map(lambda t: t.clone().requires_grad_(True))
    with torch.no_grad():
        ent = project_gaussians(g, cams.K, cams.w2c, W, H)
        n_pairs = bin_pairs(ent, len(cams), W, H).num if ent is not None else 0

    def fwd():
        with torch.no_grad():
            render(g, cams, backend=backend)

    def fwd_bwd():
        out = render(params, cams, backend=backend)
        (out.rgb.sum() + out.depth.sum()).backward()

    tangent = g.map(lambda t: torch.randn_like(t))

    def jvp():
        render_jvp(g, cams, tangent, backend=backend)

    # the optimiser's Gauss-Newton Jv: a linearisation kept for many products (PCG)
    images = render(g, cams, backend=backend).rgb.detach().clamp(0, 1)
    lam = g.expand_groups(torch.full((g.num, 5), 1e-3, device=device))
    energy = Energy(g, g.flatten(), lam, cams, images, backend=backend)
    lin = energy.linearize(g.flatten())
    v = tangent.flatten()
    lin.jvp(v)  # resolves "auto-exact" once

    def gn_jv():
        lin.jvp(v)

    row = {"size": f"{W}x{H}", "backend": backend, "device": device, "gaussians": g.num,
           "pairs": n_pairs, "threads": torch.get_num_threads() if device == "cpu" else None,
           "jv_mode": lin.jvp_mode, "loadavg_before": os.getloadavg()[0]}
    row["forward_ms"], row["forward_cpu_ms"] = _time(fwd, repeats, device)
    row["fwd_bwd_ms"], row["fwd_bwd_cpu_ms"] = _time(fwd_bwd, repeats, device)
    row["jvp_ms"], row["jvp_cpu_ms"] = _time(jvp, repeats, device)
    row["gn_jv_ms"], _ = _time(gn_jv, repeats, device)
    row["jvp_over_forward"] = row["jvp_ms"] / row["forward_ms"]
    row["gn_jv_over_forward"] = row["gn_jv_ms"] / row["forward_ms"]
    row["loadavg_after"] = os.getloadavg()[0]
    lin.release()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["64", "128", "256", "512x384"],
                    help="square sizes or WxH")
    ap.add_argument("--only-compiled", action="store_true", help="time the compiled backend only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--footprint", type=float, default=1.5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to time")
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
    sizes = [parse_size(x) for x in args.sizes]
    cpu_backends = ["torch", "cpu"] if not args.only_compiled else ["cpu"]
    rows = []
    hdr = (f"{'size':>8} {'backend':>7} {'dev':>4} {'thr':>3} {'gauss':>7} {'pairs':>9} {'fwd ms':>8} "
           f"{'f+b ms':>8} {'jvp ms':>8} {'jvp/f':>5} {'GN Jv':>7} {'Jv/f':>5} {'load':>5}")
    print(hdr)

    def show(r):
        print(f"{r['size']:>8} {r['backend']:>7} {r['device']:>4} {str(r['threads'] or '-'):>3} "
              f"{r['gaussians']:>7} {r['pairs']:>9} {r['forward_ms']:>8.1f} {r['fwd_bwd_ms']:>8.1f} "
              f"{r['jvp_ms']:>8.1f} {r['jvp_over_forward']:>5.2f} {r['gn_jv_ms']:>7.1f} "
              f"{r['gn_jv_over_forward']:>5.2f} {r['loadavg_before']:>5.1f}", flush=True)

    speedups = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in sizes:
            pair = {}
            for backend in cpu_backends:  # back to back: same scene, same load
                r = bench_one(size, backend, "cpu", args.repeats, args.footprint)
                rows.append(r)
                pair[backend] = r
                show(r)
            if len(pair) == 2:
                t, c = pair["torch"], pair["cpu"]
                sp = {"size": t["size"], "threads": threads,
                      **{k: t[f"{k}_ms"] / c[f"{k}_ms"] for k in ("forward", "fwd_bwd", "jvp", "gn_jv")},
                      # process CPU time (all threads): robust to other jobs on a shared machine
                      **{f"{k}_cpu": t[f"{k}_cpu_ms"] / c[f"{k}_cpu_ms"] for k in ("forward", "fwd_bwd", "jvp")}}
                speedups.append(sp)
    if speedups:
        print(f"\nspeed-up of the compiled backend over the torch backend (same run, same threads)")
        print(f"{'':>12} {'--- wall time ---':>27} | {'--- CPU time ---':>20}")
        print(f"{'size':>8} {'thr':>3} {'fwd':>6} {'f+b':>6} {'jvp':>6} {'GN Jv':>6} | {'fwd':>6} {'f+b':>6} {'jvp':>6}")
        for sp in speedups:
            print(f"{sp['size']:>8} {sp['threads']:>3} {sp['forward']:>6.1f} {sp['fwd_bwd']:>6.1f} "
                  f"{sp['jvp']:>6.1f} {sp['gn_jv']:>6.1f} | {sp['forward_cpu']:>6.1f} {sp['fwd_bwd_cpu']:>6.1f} "
                  f"{sp['jvp_cpu']:>6.1f}")
    if torch.cuda.is_available():
        for backend in ("torch", "gsplat"):
            for size in sizes:
                r = bench_one(size, backend, "cuda", args.repeats, args.footprint)
                rows.append(r)
                show(r)
    memory = []
    if not args.no_memory:
        print(f"\n{'size':>8} {'backend':>7} {'pairs':>9} {'peak MB (f+b, fresh process)':>29} {'MB per M pairs':>15}")
        for size in sizes:
            label = f"{size[0]}x{size[1]}"
            pairs = next(r["pairs"] for r in rows if r["size"] == label)
            for backend in cpu_backends:
                mb = _cpu_peak_mb(size, args.footprint, backend)
                memory.append({"size": label, "backend": backend, "pairs": pairs, "peak_mb": mb,
                               "mb_per_mpair": mb / (pairs / 1e6)})
                print(f"{label:>8} {backend:>7} {pairs:>9} {mb:>29.1f} {mb / (pairs / 1e6):>15.1f}", flush=True)
        if torch.cuda.is_available():
            for backend in ("torch", "gsplat"):
                for size in sizes:
                    g, cams = pixel_aligned_scene(size, footprint=args.footprint, device="cuda")
                    p = g.map(lambda t: t.clone().requires_grad_(True))

                    def fb():
                        o = render(p, cams, backend=backend)
                        (o.rgb.sum() + o.depth.sum()).backward()
                    mb = _cuda_peak_mb(fb)
                    memory.append({"size": f"{size[0]}x{size[1]}", "backend": backend, "device": "cuda",
                                   "peak_mb": mb})
                    print(f"cuda {backend} {size}: peak {mb:.1f} MB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"footprint_px": args.footprint, "repeats": args.repeats, "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(default)"), "command": " ".join(["benchmarks/render.py"] + (argv or sys.argv[1:])),
            "note": "wall times are medians; *_cpu_ms is process CPU time (all threads); the CPU is "
                    "shared with other jobs, see loadavg_before/after"}
    atomic_write_json(out, {"meta": meta, "rows": rows, "speedups": speedups, "memory": memory})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
