"""Benchmark: the IFT optimisation layer vs plain autograd unrolling of K inner Adam steps.

For K in {5, 10, 20, 50, 100} inner Adam steps on 2-view pixel-aligned scenes (one Gaussian
per context pixel, like a feed-forward predictor's output), side by side:

* peak memory (ru_maxrss of a fresh subprocess per configuration; also the increase over the
  same process's footprint just before the layer call),
* backward time of the IFT layer (PCG with Gauss-Newton products) vs autograd through the
  unrolled Adam steps,
* PCG iterations to 1e-3 relative residual with the Jacobi preconditioner vs plain CG,
* cosine between the IFT and the unrolled gradients w.r.t. θ0 and Λ.

Usage:  python benchmarks/layer.py [--res 64 128] [--steps 5 10 20 50 100] [--threads 1]
Writes benchmarks/results/layer.json (atomically) and prints a table. CPU, float64 by default
(unrolled Adam differentiated in float32 overflows to NaN). "unrolled" renders through
diff3r_cli.render.autograd_rgb.render_rgb_autograd (render()'s projection + binning,
autograd compositing: twice differentiable); "ift" uses render() itself, "ift_autograd"
the helper.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "layer.json"


# --------------------------------------------------------------------------- scene
def make_scene(res: int, seed: int = 0, dtype: str = "float64"):
    """Pixel-aligned 2-view scene: ground truth, perturbed prediction θ0, weights Λ, target view."""
    import torch

    from diff3r_cli.cameras import Cameras
    from diff3r_cli.gaussians import Gaussians, rgb_to_sh_dc
    from diff3r_cli.render import render

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    f = 1.0 * res
    K = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1]], dtype=dt)

    def cam_at(x: float) -> torch.Tensor:
        w2c = torch.eye(4, dtype=dt)
        w2c[0, 3] = -x
        w2c[2, 3] = 2.0  # camera centre at (x, 0, -2), looking along +z
        return w2c

    baseline = 0.2
    ctx = Cameras(K.expand(2, 3, 3).clone(), torch.stack([cam_at(-baseline / 2), cam_at(baseline / 2)]), res, res)
    tgt = Cameras(K[None].clone(), cam_at(0.0)[None], res, res)
    # One Gaussian per pixel of each context view, unprojected onto a wavy surface.
    ys, xs = torch.meshgrid(torch.arange(res, dtype=dt) + 0.5, torch.arange(res, dtype=dt) + 0.5, indexing="ij")
    means, scales = [], []
    for v in range(2):
        rx = (xs - res / 2) / f
        ry = (ys - res / 2) / f
        depth = 2.0 + 0.15 * torch.sin(3 * rx * 2 * math.pi) * torch.cos(2 * ry * 2 * math.pi)
        pc = torch.stack([rx * depth, ry * depth, depth], -1).reshape(-1, 3)
        c2w = torch.linalg.inv(ctx.w2c[v])
        means.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
        scales.append((depth / f).reshape(-1, 1).expand(-1, 3) * 0.8)
    means = torch.cat(means)
    n = means.shape[0]
    log_scales = torch.log(torch.cat(scales))
    quats = torch.zeros(n, 4, dtype=dt)
    quats[:, 0] = 1
    opacity_logits = torch.full((n,), 1.5, dtype=dt)  # opacity ≈ 0.82
    colour = 0.5 + 0.35 * torch.stack([torch.sin(4 * means[:, 0] + 1), torch.sin(5 * means[:, 1]),
                                        torch.cos(3 * (means[:, 0] + means[:, 1]))], -1)
    gt = Gaussians(means, log_scales, quats, opacity_logits, rgb_to_sh_dc(colour)[:, None, :])
    with torch.no_grad():
        images = render(gt, ctx).rgb
        tgt_img = render(gt, tgt).rgb
    theta = gt.flatten()
    noise = torch.randn(theta.shape, generator=gen, dtype=dt)
    # Prediction error: position 2% of a pixel footprint·depth, others 0.1 in raw units.
    sizes = gt.group_sizes()
    scale = torch.cat([torch.full((n * s,), 0.01 if g == 0 else 0.1, dtype=dt) for g, s in enumerate(sizes)])
    g0 = gt.unflatten(theta + scale * noise)
    lam = 10 ** (torch.rand(n, 5, generator=gen, dtype=dt) * 3 - 3)  # Λ in [1e-3, 1]
    return ctx, images, g0, lam, tgt, tgt_img


def outer_loss(g, tgt, tgt_img):
    from diff3r_cli.render import render

    r = render(g, tgt).rgb - tgt_img
    return (r * r).mean()


# --------------------------------------------------------------------------- worker
_AUTOGRAD_RENDERER = None


def _autograd_renderer():
    """One RgbRenderer around render_rgb_autograd per process: render()'s projection and
    binning with autograd compositing (twice differentiable, which unrolled differentiation
    needs). Shared by the warm-up and the timed run, so its one-time Jv check (kept on the
    renderer) stays out of the timings."""
    global _AUTOGRAD_RENDERER
    if _AUTOGRAD_RENDERER is None:
        from diff3r_cli.optim.energy import RgbRenderer
        from diff3r_cli.render.autograd_rgb import render_rgb_autograd

        _AUTOGRAD_RENDERER = RgbRenderer(render_rgb_autograd)
    return _AUTOGRAD_RENDERER

def _warm_up(ctx, images, g0, lam, method: str) -> None:
    """One-time costs out of the timings: torch's lazy imports on the first forward-mode AD
    call (~3 s here) and the auto-jvp check, done on an 8-Gaussian copy of the scene."""
    import torch

    from diff3r_cli.optim.energy import Energy

    small = g0[:8].detach()
    render_fn = None if method == "ift" else _autograd_renderer()
    e = Energy(small, small.flatten(), small.expand_groups(lam[:8]), ctx, images, render_fn=render_fn)
    lin = e.linearize(small.flatten())
    lin.gn_matvec(torch.ones_like(small.flatten()))
    lin.release()



def _maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(res: int, steps: int, method: str, out: str, threads: int, pcg_compare: bool,
           adam_eps: float = 1e-15, dtype: str = "float64") -> dict:
    """One configuration: K Adam steps + outer loss on the target view + backward.

    method "ift": optimization_layer (GN Hessian, PCG rtol 1e-3) rendering with render();
    "ift_autograd": the same with the autograd-composited helper; "unrolled": the same Adam
    kept in the autograd graph, rendering with the helper.
    """
    import torch

    torch.set_num_threads(threads)
    from diff3r_cli.optim.config import BackwardConfig
    from diff3r_cli.optim.energy import Energy
    from diff3r_cli.optim.implicit import ift_solve, optimization_layer_with_stats
    from diff3r_cli.optim.tto import adam_lr_vector, adam_run, scene_extent

    render_rgb_autograd = _autograd_renderer()

    ctx, images, g0, lam, tgt, tgt_img = make_scene(res, dtype=dtype)
    _warm_up(ctx, images, g0, lam, method)
    theta0 = g0.flatten().detach().requires_grad_(True)
    lam_ = lam.clone().requires_grad_(True)
    base_rss = _maxrss_mb()
    rec: dict = {"res": res, "steps": steps, "method": method, "gaussians": g0.num, "params": theta0.numel(),
                 "threads": threads, "dtype": dtype}
    t0 = time.perf_counter()
    if method in ("ift", "ift_autograd"):
        render_fn = render_rgb_autograd if method == "ift_autograd" else None
        gs, stats = optimization_layer_with_stats(g0.unflatten(theta0), lam_, ctx, images, steps, "adam", hessian="gn",
                                                  pcg_rtol=1e-3, pcg_max_iter=200, adam_eps=adam_eps,
                                                  render_fn=render_fn)
        loss = outer_loss(gs, tgt, tgt_img)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        solve = stats.backward.solve
        rec.update(pcg_iterations=solve.pcg_iterations, pcg_residual=solve.pcg_residual, fallback=solve.fallback)
    else:
        g0d = g0.detach()
        energy = Energy(g0d, theta0.detach(), g0d.expand_groups(lam_.detach()), ctx, images,
                        render_fn=render_rgb_autograd)
        # Unrolled: the same Adam, every step in the autograd graph (Λ enters through the
        # proximal term, so rebuild that term with the differentiable Λ and θ0).
        lam_flat = g0d.expand_groups(lam_)

        class _DiffEnergy:
            num_pixels = energy.num_pixels

            def value_and_grad(self, x, create_graph=False):
                from diff3r_cli.optim.energy import EnergyTerms

                r = energy.residual(x)
                photo = 0.5 * (r * r).sum() / energy.num_pixels
                d = x - theta0
                prox = 0.5 * (lam_flat * d * d).sum()
                e = photo + prox
                (grad,) = torch.autograd.grad(e, x, create_graph=True)
                return EnergyTerms(float(e.detach()), float(photo.detach()), float(prox.detach())), grad

        lr_vec = adam_lr_vector(g0d, scene_extent(g0d, ctx))
        x, _ = adam_run(_DiffEnergy(), theta0, steps, lr_vec, create_graph=True, eps=adam_eps)
        loss = outer_loss(g0d.unflatten(x), tgt, tgt_img)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
    rec.update(forward_s=t1 - t0, backward_s=t2 - t1, loss=float(loss.detach()), peak_rss_mb=_maxrss_mb(),
               peak_increase_mb=_maxrss_mb() - base_rss)
    torch.save({"theta0": theta0.grad.detach().clone(), "lam": lam_.grad.detach().clone()}, out)
    if pcg_compare and method in ("ift", "ift_autograd"):
        # PCG iterations to 1e-3 at θ* (the same system the backward solved), Jacobi vs plain CG.
        g0d = g0.detach()
        energy = Energy(g0d, g0d.flatten(), g0d.expand_groups(lam.detach()), ctx, images)
        theta_star = gs.flatten().detach()
        t = theta_star.clone().requires_grad_(True)
        (rhs,) = torch.autograd.grad(outer_loss(g0d.unflatten(t), tgt, tgt_img), t)
        for pre in ("jacobi", "none"):
            _, info = ift_solve(energy, theta_star, rhs, BackwardConfig(pcg_rtol=1e-3, pcg_max_iter=1000,
                                                                        preconditioner=pre))
            rec[f"pcg_{pre}_iterations"] = info.pcg_iterations
            rec[f"pcg_{pre}_converged"] = info.pcg_converged
    return rec


# --------------------------------------------------------------------------- driver
def _run_worker(res: int, steps: int, method: str, threads: int, pcg_compare: bool, tmp: str, timeout: float,
                adam_eps: float, dtype: str) -> dict:
    out = os.path.join(tmp, f"{method}_{res}_{steps}.pt")
    cmd = [sys.executable, __file__, "--worker", "--res", str(res), "--steps", str(steps), "--method", method,
           "--out", out, "--threads", str(threads), "--adam-eps", repr(adam_eps), "--dtype", dtype] + \
        (["--pcg-compare"] if pcg_compare else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"res": res, "steps": steps, "method": method, "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"res": res, "steps": steps, "method": method, "error": " | ".join(tail)}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["grad_file"] = out
    return rec


def _cos(a, b) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[64])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--methods", nargs="+", default=["ift", "ift_autograd", "unrolled"])
    ap.add_argument("--pcg-method", default="ift_autograd", help="which IFT run also compares Jacobi PCG vs CG")
    ap.add_argument("--max-unrolled-gb", type=float, default=8.0,
                    help="skip unrolled runs whose memory, extrapolated from smaller K, would exceed this")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                    help="float64 by default: differentiating unrolled Adam in float32 overflows (1/sqrt(v) "
                         "terms of coordinates with tiny gradients) and gives NaN gradients")
    ap.add_argument("--adam-eps", type=float, default=1e-15, help="Adam ε for both methods (3DGS: 1e-15)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    ap.add_argument("--out-json", type=Path, default=RESULTS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ift", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--pcg-compare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        rec = worker(args.res[0], args.steps[0], args.method, args.out, args.threads, args.pcg_compare, args.adam_eps,
                     args.dtype)
        print(json.dumps(rec))
        return 0

    import torch

    rows = []
    unrolled_mb_per_step: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.res:
            for k in args.steps:
                recs = {}
                for m in args.methods:
                    per_step = unrolled_mb_per_step.get(res)
                    if m == "unrolled" and per_step is not None and per_step * k > args.max_unrolled_gb * 1024:
                        # The unrolled graph grows linearly in K: skip rather than swap the shared machine.
                        recs[m] = {"skipped": f"predicted {per_step * k / 1024:.1f} GB > --max-unrolled-gb "
                                              f"{args.max_unrolled_gb}"}
                        print(f"  res {res} K {k:3d} {m:12s} skipped ({recs[m]['skipped']})", file=sys.stderr)
                        continue
                    t = time.perf_counter()
                    recs[m] = _run_worker(res, k, m, args.threads, m == args.pcg_method, tmp, args.timeout,
                                          args.adam_eps, args.dtype)
                    print(f"  res {res} K {k:3d} {m:12s} done in {time.perf_counter() - t:6.1f} s "
                          f"{recs[m].get('error', '')}", file=sys.stderr, flush=True)
                    if m == "unrolled" and "peak_increase_mb" in recs[m]:
                        unrolled_mb_per_step[res] = max(unrolled_mb_per_step.get(res, 0.0),
                                                        recs[m]["peak_increase_mb"] / k)
                row = {"res": res, "steps": k}
                for m, r in recs.items():
                    for key, val in r.items():
                        if key not in ("res", "steps", "method", "grad_file"):
                            row[f"{m}_{key}"] = val
                for m in ("ift", "ift_autograd"):
                    if "grad_file" in recs.get(m, {}) and "grad_file" in recs.get("unrolled", {}):
                        gi = torch.load(recs[m]["grad_file"])
                        gu = torch.load(recs["unrolled"]["grad_file"])
                        row[f"{m}_cos_theta0"] = _cos(gi["theta0"], gu["theta0"])
                        row[f"{m}_cos_lam"] = _cos(gi["lam"], gu["lam"])
                rows.append(row)

    hdr = (f"{'res':>4} {'K':>4} | {'peak RSS MB: IFT':>16} {'IFT-ag':>7} {'unrolled':>9} | "
           f"{'(+MB over pre-layer) IFT':>24} {'IFT-ag':>7} {'unrolled':>9} | "
           f"{'bwd s: IFT':>10} {'IFT-ag':>7} {'unrolled':>9} | {'PCG jac':>7} {'CG':>5} | {'cos θ0':>7} {'cos Λ':>7}")
    print(hdr)
    print("-" * len(hdr))

    def fmt(v, width, prec=None):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return format("-", f">{width}")
        return format(v, f">{width}.{prec}f") if prec is not None else format(v, f">{width}d")

    pm = args.pcg_method
    for r in rows:
        print(f"{r['res']:>4} {r['steps']:>4} | {fmt(r.get('ift_peak_rss_mb'), 16, 0)} "
              f"{fmt(r.get('ift_autograd_peak_rss_mb'), 7, 0)} {fmt(r.get('unrolled_peak_rss_mb'), 9, 0)} | "
              f"{fmt(r.get('ift_peak_increase_mb'), 24, 0)} {fmt(r.get('ift_autograd_peak_increase_mb'), 7, 0)} "
              f"{fmt(r.get('unrolled_peak_increase_mb'), 9, 0)} | "
              f"{fmt(r.get('ift_backward_s'), 10, 2)} {fmt(r.get('ift_autograd_backward_s'), 7, 2)} "
              f"{fmt(r.get('unrolled_backward_s'), 9, 2)} | "
              f"{fmt(r.get(f'{pm}_pcg_jacobi_iterations'), 7)} {fmt(r.get(f'{pm}_pcg_none_iterations'), 5)} | "
              f"{fmt(r.get('ift_cos_theta0', r.get('ift_autograd_cos_theta0')), 7, 3)} "
              f"{fmt(r.get('ift_cos_lam', r.get('ift_autograd_cos_lam')), 7, 3)}")
        for m in args.methods:
            for tag in ("error", "skipped"):
                if f"{m}_{tag}" in r:
                    print(f"     {m} {tag}: {r[f'{m}_{tag}']}")
    meta = {"device": "cpu", "threads": args.threads, "dtype": args.dtype, "adam_eps": args.adam_eps,
            "torch": torch.__version__,
            "command": " ".join(["python", "benchmarks/layer.py"] + (argv if argv is not None else sys.argv[1:])),
            "inner_optimizer": "adam (3DGS per-group learning rates)",
            "ift": "GN Hessian, PCG rtol 1e-3 (max 200), Jacobi from 4 probes",
            "methods": {"ift": "IFT layer rendering with render() (torch backend)",
                        "ift_autograd": "IFT layer rendering with diff3r_cli.render.autograd_rgb.render_rgb_autograd",
                        "unrolled": "autograd through K Adam steps, rendering with render_rgb_autograd"},
            "memory": "ru_maxrss of a fresh subprocess per configuration; +MB = increase over the footprint "
                      "just before the layer call (scene built, torch loaded)",
            "pcg": f"iterations to 1e-3 relative residual at θ* of the '{pm}' run: Jacobi vs plain CG (max 1000)"}
    from diff3r_cli.fsio import atomic_write_json

    atomic_write_json(args.out_json, {"meta": meta, "rows": rows})
    print(f"wrote {args.out_json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
