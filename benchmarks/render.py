"""Rasterizer benchmark on pixel-aligned scenes like the predictor makes.

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
import math
import os
import resource
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


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def _peak_mb(fn, device: str) -> float:
    """Peak memory of one call: CUDA allocator peak, or on the CPU the process max-RSS growth
    (an upper-bound proxy: ru_maxrss only ever grows, so run the sizes in increasing order)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024


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
           "pairs": n_pairs, "threads": torch.get_num_threads()}
    row["forward_ms"] = _time(fwd, repeats, device)
    row["fwd_bwd_ms"] = _time(fwd_bwd, repeats, device)
    row["jvp_ms"] = _time(jvp, repeats, device)
    row["jvp_over_forward"] = row["jvp_ms"] / row["forward_ms"]
    row["peak_fwd_bwd_mb"] = _peak_mb(fwd_bwd, device)
    row["peak_mb_per_mpair"] = row["peak_fwd_bwd_mb"] / max(n_pairs / 1e6, 1e-9)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--footprint", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "render.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [("torch", "cpu")]
    if torch.cuda.is_available():
        runs += [("torch", "cuda"), ("gsplat", "cuda")]
    rows = []
    hdr = f"{'size':>5} {'backend':>7} {'dev':>4} {'gauss':>8} {'pairs':>10} {'fwd ms':>8} {'f+b ms':>8} {'jvp ms':>8} {'jvp/f':>6} {'peak MB':>8} {'MB/Mpair':>8}"
    print(hdr)
    for backend, device in runs:
        for size in sorted(args.sizes):
            r = bench_one(size, backend, device, args.repeats, args.footprint)
            rows.append(r)
            print(f"{r['size']:>5} {backend:>7} {device:>4} {r['gaussians']:>8} {r['pairs']:>10} "
                  f"{r['forward_ms']:>8.1f} {r['fwd_bwd_ms']:>8.1f} {r['jvp_ms']:>8.1f} "
                  f"{r['jvp_over_forward']:>6.2f} {r['peak_fwd_bwd_mb']:>8.1f} {r['peak_mb_per_mpair']:>8.1f}",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"footprint_px": args.footprint, "repeats": args.repeats, "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:]))}
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
