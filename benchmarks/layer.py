"""Benchmark: the inner problem of the optimisation layer at the model's own Λ (issue 13).

For real training examples (the TRAIN split of ../shared/data/real through the trainer's
dataset and view sampler, native aspect, short side --res) the bundled model predicts θ0
and Λ; each inner solver then runs as a training step runs it (float32, the default render
backend — the compiled CPU one —, ``optimization_layer_with_stats`` with the trainer's
pcg_max_iter 50, outer loss = MSE on the target views, ``loss.backward()``), and we report:

* ratio: ‖∇E(θ_K)‖ / ‖∇E(θ0)‖ (the energy's own gradient, evaluated in float64),
* cos ∂θ0, cos ∂Λ: cosine of the layer's IFT gradient to the reference gradient
  (``layer_reference.py``): for Adam, reverse-mode through the same K steps ("unrolled");
  for LM, the exact-Hessian IFT gradient at a converged θ* ("converged"); the columns
  marked θ* compare every row with that converged reference,
* s/step: seconds of the training step's layer work (inner solve + IFT backward) per
  thread count; PCG its / misses: the IFT backward's PCG iterations and solves that did
  not reach pcg_rtol.

Usage:  python benchmarks/layer.py [--res 64] [--examples 3] [--solvers adam lm:2,5 adam-lr4]
        [--model PATH] [--threads 1 [2]] [--lam-scale 1.0] [--data ../shared/data/real]
Writes benchmarks/results/layer.json atomically and prints the table (means over examples).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:  # run as a script from anywhere: this checkout's package first
        sys.path.insert(0, _p)

from diff3r_cli.cameras import Cameras  # noqa: E402
from diff3r_cli.gaussians import Gaussians, rgb_to_sh_dc  # noqa: E402
from diff3r_cli.optim.config import BackwardConfig  # noqa: E402
from diff3r_cli.optim.energy import Energy  # noqa: E402
from diff3r_cli.optim.implicit import optimization_layer_with_stats  # noqa: E402
from diff3r_cli.optim.tto import adam_lr_vector, scene_extent  # noqa: E402
from diff3r_cli.render import render  # noqa: E402
from diff3r_cli.render.autograd_rgb import render_rgb_autograd  # noqa: E402
from layer_reference import (adam_adjoint, adam_trace, compare, converged_reference,  # noqa: E402
                             ift_grads, Grads)

RESULTS = ROOT / "benchmarks" / "results" / "layer.json"
DATA = ROOT.parent / "shared" / "data" / "real"
# The trainer's layer settings (train.py: pcg_max_iter=50; BackwardConfig's pcg_rtol 1e-3).
TRAIN_BACKWARD = {"pcg_max_iter": 50}
GOAL_RATIO, GOAL_COS = 0.1, 0.9


@dataclass
class Example:
    """One scene: context cameras/images (the inner problem), targets (the outer loss), θ0, Λ."""

    key: str
    cams: Cameras
    images: torch.Tensor
    tgt_cams: Cameras
    tgt_images: torch.Tensor
    g0: Gaussians
    lam: torch.Tensor


@dataclass(frozen=True)
class Solver:
    """A row family: optimizer and its options (``optimize``'s keyword names), step counts."""

    name: str
    optimizer: str
    steps: tuple
    options: dict = field(default_factory=dict)


SOLVERS = {s.name: s for s in (
    Solver("adam", "adam", (10, 50, 100, 200)),
    Solver("lm", "lm", (2, 3, 5, 10)),
    # Better-conditioned candidates: Adam's 3DGS rates are tuned for Λ = 0 from a random
    # start; at the model's small Λ the flat directions want larger steps.
    Solver("adam-lr4", "adam", (50, 100), {"lr": 4.0}),
    Solver("adam-lr10", "adam", (50, 100), {"lr": 10.0}),
    # The trainer's backward (PCG ≤ 50 its) misses 1e-3 on every real example measured and
    # returns the Jacobi fallback M⁻¹∇ℓ: the same inner solve with a backward run to convergence.
    Solver("adam-lr4-bwd600", "adam", (50, 100), {"lr": 4.0, "pcg_max_iter": 600}),
    # What the real-photo diff3r fine-tune trains with (README: --inner-lr 4 --pcg-max-iter 150).
    Solver("adam-lr4-bwd150", "adam", (100,), {"lr": 4.0, "pcg_max_iter": 150}),
    # The converged reference differentiates with the exact Hessian; the layer's default is
    # Gauss-Newton. Near stationarity the gap between the two is what is left of the cosine.
    Solver("adam-exact", "adam", (100, 200), {"hessian": "exact"}),
    Solver("adam-lr4-exact", "adam", (50, 100), {"lr": 4.0, "hessian": "exact"}),
)}
# adam-lr10 is left out of the default run: each unrolled reference step costs ~0.35 s at 64².
DEFAULT_SOLVERS = ("adam", "lm", "adam-lr4")


def parse_solvers(names) -> list[Solver]:
    """``name`` or ``name:K1,K2`` (override the step counts) -> Solver records."""
    out = []
    for item in names:
        name, _, ks = item.partition(":")
        if name not in SOLVERS:
            raise SystemExit(f"unknown solver {name!r} (use {', '.join(SOLVERS)})")
        s = SOLVERS[name]
        out.append(Solver(s.name, s.optimizer, tuple(int(k) for k in ks.split(",")), s.options) if ks else s)
    return out


# --------------------------------------------------------------------------- scenes
def load_examples(root: Path, res: int, count: int, model_path: str, lam_scale: float = 1.0,
                  num_target: int = 2, seed: int = 0, lam_floor: float = 0.0) -> list[Example]:
    """``count`` examples of the train split as ``diff3r train --data re10k`` samples them
    (angle view sampler, native aspect, short side ``res``), θ0 and Λ from the model; Λ is then
    multiplied by ``lam_scale`` and raised by ``lam_floor`` in units of 1/P (P = context pixels),
    the two ways of conditioning the inner problem this benchmark compares."""
    from diff3r_cli.data.re10k import RE10KDataset, ViewSamplerConfig
    from diff3r_cli.model.io import load_model

    sampler = ViewSamplerConfig(num_context=2, num_target=num_target, mode="angle")
    ds = RE10KDataset(root, "train", resolution=res, sampler=sampler, seed=seed, warn=False)
    model = load_model(model_path).eval()
    out = []
    for s in ds:
        with torch.no_grad():
            pred = model(s["context_images"][None], s["context_K"][None], s["context_w2c"][None],
                         s["near"][None], s["far"][None])
        v, h, w, _ = s["context_images"].shape
        lam = pred.lam[0].detach() * lam_scale + lam_floor / (v * h * w)
        out.append(Example(s["key"], Cameras.of_sample(s), s["context_images"],
                           Cameras.of_sample(s, "target"), s["target_images"],
                           pred.gaussians[0].detach(), lam))
        if len(out) == count:
            break
    return out


def synthetic_example(res: int = 16, seed: int = 0, lam_pixels: float = 1.0) -> Example:
    """A tiny pixel-aligned 2-view scene (wavy surface) with a perturbed θ0 and Λ·P ≈
    ``lam_pixels`` in every group, float32 like the model's output: for the tests."""
    gen = torch.Generator().manual_seed(seed)
    f = float(res)
    K = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1]])
    w2c = torch.eye(4).repeat(3, 1, 1)
    w2c[:, 0, 3] = torch.tensor([0.1, -0.1, 0.0])
    w2c[:, 2, 3] = 2.0
    ctx, tgt = Cameras(K.repeat(2, 1, 1), w2c[:2], res, res), Cameras(K[None], w2c[2:], res, res)
    ys, xs = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
    rx, ry = (xs - res / 2) / f, (ys - res / 2) / f
    depth = 2.0 + 0.15 * torch.sin(6 * math.pi * rx) * torch.cos(4 * math.pi * ry)
    pc = torch.stack([rx * depth, ry * depth, depth], -1).reshape(-1, 3)
    means = torch.cat([pc @ torch.linalg.inv(w)[:3, :3].T + torch.linalg.inv(w)[:3, 3] for w in w2c[:2]])
    n = means.shape[0]
    colour = 0.5 + 0.35 * torch.stack([torch.sin(4 * means[:, 0] + 1), torch.sin(5 * means[:, 1]),
                                        torch.cos(3 * means[:, 0] + 3 * means[:, 1])], -1)
    gt = Gaussians(means, torch.log(0.8 * depth.reshape(-1, 1) / f).repeat(2, 3), torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
                   torch.full((n,), 1.5), rgb_to_sh_dc(colour)[:, None, :])
    with torch.no_grad():
        images, tgt_images = render(gt, ctx).rgb, render(gt, tgt).rgb
    scale = torch.cat([torch.full((n * s,), 0.01 if gi == 0 else 0.1) for gi, s in enumerate(gt.group_sizes())])
    g0 = gt.unflatten(gt.flatten() + scale * torch.randn(gt.flatten().shape, generator=gen))
    lam = torch.full((n, 5), lam_pixels / images[..., 0].numel())
    return Example(f"synthetic{res}", ctx, images, tgt, tgt_images, g0, lam)


# --------------------------------------------------------------------------- measurements
def outer_loss(g: Gaussians, ex: Example) -> torch.Tensor:
    """The outer loss ℓ: MSE of the target views (train.py adds 0.05·(1−SSIM); the rhs only)."""
    r = render(g, ex.tgt_cams).rgb - ex.tgt_images.to(g.dtype)
    return (r * r).mean()


def loss_grad_fn(ex: Example, template: Gaussians):
    """θ (flat, float64) -> ∇ℓ(θ)."""
    def grad(theta: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            (out,) = torch.autograd.grad(outer_loss(template.unflatten(t), ex), t)
        return out
    return grad


def energy64(ex: Example, render_fn=None) -> Energy:
    """E(θ; θ0, Λ) of the example in float64 (default backend, or ``render_fn``)."""
    g = ex.g0.unflatten(ex.g0.flatten().double())
    return Energy(g, g.flatten(), g.expand_groups(ex.lam.double()), ex.cams, ex.images.double(), render_fn=render_fn)


def timed_layer(ex: Example, solver: Solver, steps: int, threads: int) -> tuple[dict, Grads, torch.Tensor]:
    """One training step's layer work as train.py runs it; returns (record, IFT grads, θ_K)."""
    torch.set_num_threads(threads)
    theta0 = ex.g0.flatten().detach().clone().requires_grad_(True)
    lam = ex.lam.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    gs, stats = optimization_layer_with_stats(ex.g0.unflatten(theta0), lam, ex.cams, ex.images, steps,
                                              solver.optimizer, **{**TRAIN_BACKWARD, **solver.options})
    loss = outer_loss(gs, ex)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    solve = stats.backward.solve
    hist = stats.forward.history
    rec = {"forward_s": t1 - t0, "backward_s": t2 - t1, "step_s": t2 - t0, "pcg_iterations": solve.pcg_iterations,
           "pcg_residual": solve.pcg_residual, "pcg_miss": int(solve.pcg_miss), "fallback": solve.fallback,
           "nonfinite_grad": stats.backward.nonfinite_grad,
           "inner_pcg_iterations": sum(h.get("pcg_iterations", 0) for h in hist)}
    return rec, Grads(theta0.grad.detach(), lam.grad.detach()), gs.flatten().detach()


def warm_up(ex: Example, threads) -> None:
    """Keep one-time costs (extension load, the Jv-mode check) out of the timings."""
    for th in threads:
        for opt in ("adam", "lm"):
            timed_layer(ex, Solver("warm", opt, (1,)), 1, th)


def measure_example(ex: Example, solvers, threads=(1,), ref_stage_steps: int = 150) -> tuple[list[dict], dict]:
    """Rows (one per solver and K) for one example, and the converged reference's info."""
    e64 = energy64(ex)
    lg = loss_grad_fn(ex, e64.template)
    g0_norm = float(e64.value_and_grad(e64.theta0)[1].norm())
    warm_up(ex, threads)
    t = time.perf_counter()
    conv, conv_info = converged_reference(e64, e64.theta0, lg, ex.lam, ref_stage_steps)
    conv_info["seconds"] = time.perf_counter() - t
    print(f"  {ex.key}: converged reference {conv_info}", file=sys.stderr, flush=True)
    rows = []
    e_ag = energy64(ex, render_rgb_autograd)  # twice differentiable: the unrolled reference's E
    for solver in solvers:
        trace = None
        if solver.optimizer == "adam":
            lr = adam_lr_vector(e64.template, scene_extent(e64.template, e64.cameras), solver.options.get("lr"))
            trace = adam_trace(e_ag, e_ag.theta0, max(solver.steps), lr)
        for k in solver.steps:
            rec = {"key": ex.key, "solver": solver.name, "steps": k}
            for i, th in enumerate(threads):
                r, grads, theta_k = timed_layer(ex, solver, k, th)
                if i == 0:
                    rec.update(r)
                    ift = grads
                rec[f"step_s_t{th}"] = r["step_s"]
            rec["ratio"] = float(e64.value_and_grad(theta_k.double())[1].norm()) / g0_norm
            rec.update(compare(ift, conv, ex.lam, "conv_"))
            if trace is not None:
                ref = adam_adjoint(e_ag, trace, k, lg, ex.lam)
                rec.update(compare(ift, ref, ex.lam), reference="unrolled")
                # The same IFT in float64 at the reference's own θ_K: float32 and trajectory effects apart.
                ift64, _ = ift_grads(e_ag, trace.xs[k], lg, ex.lam, BackwardConfig(**TRAIN_BACKWARD))
                rec.update(compare(ift64, ref, ex.lam, "f64_"))
            else:
                rec.update({key[5:]: v for key, v in rec.items() if key.startswith("conv_cos")}, reference="converged")
            rows.append(rec)
            print(f"  {ex.key:24s} {solver.name:10s} K={k:<4d} ratio {rec['ratio']:.3f} cos θ0 {rec['cos_theta0']:.3f}"
                  f" Λ {rec['cos_lam']:.3f} (θ* {rec['conv_cos_theta0']:.3f} / {rec['conv_cos_lam']:.3f})"
                  f"  {rec['step_s']:.2f} s", file=sys.stderr, flush=True)
        del trace
    return rows, conv_info


# --------------------------------------------------------------------------- report
MEAN_KEYS = ("ratio", "cos_theta0", "cos_lam", "cos_loglam", "conv_cos_theta0", "conv_cos_lam", "conv_cos_loglam",
             "f64_cos_theta0", "f64_cos_lam", "forward_s", "backward_s", "step_s", "pcg_iterations",
             "inner_pcg_iterations")


def aggregate(per_example: list[dict], threads) -> list[dict]:
    """Means over examples per (solver, K); worst cosines and ratio; PCG misses summed."""
    rows: dict = {}
    for r in per_example:
        rows.setdefault((r["solver"], r["steps"]), []).append(r)
    out = []
    for (solver, k), rs in rows.items():
        agg = {"solver": solver, "steps": k, "reference": rs[0]["reference"], "examples": len(rs),
               "pcg_misses": sum(r["pcg_miss"] for r in rs), "fallbacks": sum(bool(r["fallback"]) for r in rs)}
        for key in MEAN_KEYS + tuple(f"step_s_t{t}" for t in threads):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                agg[key] = sum(vals) / len(vals)
        agg["worst_ratio"] = max(r["ratio"] for r in rs)
        agg["worst_cos"] = min(min(r["cos_theta0"], r["cos_lam"]) for r in rs)
        # The goal's cosines are to the derivative of the converged argmin (θ* columns): that is what
        # the IFT gradient claims to be. Reverse mode through Adam's own path ("unrolled") differentiates
        # its per-coordinate step normalisation too, and drifts away from it (to ~0) as the solve
        # converges, so it is reported but not the yardstick.
        agg["meets_goal"] = (agg["ratio"] <= GOAL_RATIO and agg["conv_cos_theta0"] >= GOAL_COS
                             and agg["conv_cos_lam"] >= GOAL_COS)
        out.append(agg)
    return out


def recommend(rows: list[dict]) -> dict:
    """The cheapest row meeting ratio ≤ 0.1 and both θ* cosines ≥ 0.9, else the closest one."""
    ok = [r for r in rows if r["meets_goal"]]
    if ok:
        best = min(ok, key=lambda r: r["step_s"])
        return {"solver": best["solver"], "steps": best["steps"], "meets_goal": True, "step_s": best["step_s"]}

    def shortfall(r):  # how far from the goal, in the goal's own terms
        return (max(0.0, math.log10(r["ratio"] / GOAL_RATIO)) + max(0.0, GOAL_COS - r["conv_cos_theta0"])
                + max(0.0, GOAL_COS - r["conv_cos_lam"]))
    best = min(rows, key=shortfall)
    return {"solver": best["solver"], "steps": best["steps"], "meets_goal": False, "step_s": best["step_s"]}


def format_table(rows: list[dict], threads) -> str:
    """The README table (markdown)."""
    t_hdr = " | ".join(f"s/step ({t} thr)" for t in threads)
    lines = [f"| solver | K | ratio | cos ∂θ0 | cos ∂Λ | cos ∂logΛ | reference | θ* cos ∂θ0 | θ* cos ∂Λ | {t_hdr} "
             "| PCG its | misses | fallbacks |",
             "|---" * (12 + len(threads)) + "|"]
    for r in rows:
        times = " | ".join(f"{r.get(f'step_s_t{t}', float('nan')):.2f}" for t in threads)
        lines.append(f"| {r['solver']} | {r['steps']} | {r['ratio']:.3f} | {r['cos_theta0']:.3f} | {r['cos_lam']:.3f} "
                     f"| {r['cos_loglam']:.3f} | {r['reference']} | {r['conv_cos_theta0']:.3f} "
                     f"| {r['conv_cos_lam']:.3f} | {times} | {r['pcg_iterations']:.1f} | {r['pcg_misses']} | {r['fallbacks']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--res", type=int, default=64, help="short side of the views (native aspect)")
    ap.add_argument("--examples", type=int, default=2, help="training examples (train split only)")
    ap.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS),
                    help=f"rows: name or name:K1,K2 with name in {', '.join(SOLVERS)}")
    ap.add_argument("--model", default=str(ROOT / "models" / "diff3r-small.safetensors"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to time")
    ap.add_argument("--lam-scale", type=float, default=1.0, help="multiply the model's Λ (conditioning study)")
    ap.add_argument("--lam-floor", type=float, default=0.0,
                    help="add this to every λ, in units of 1/P (P = context pixels): a floor on λ·P")
    ap.add_argument("--data", type=Path, default=DATA, help="RE10K-layout root; only its train/ split is read")
    ap.add_argument("--ref-stage-steps", type=int, default=150,
                    help="Adam steps per learning-rate stage of the converged reference θ*")
    ap.add_argument("--out-json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    solvers = parse_solvers(args.solvers)
    t_start = time.perf_counter()
    examples = load_examples(args.data, args.res, args.examples, args.model, args.lam_scale,
                             lam_floor=args.lam_floor)
    per_example, refs = [], {}
    for ex in examples:
        rows, refs[ex.key] = measure_example(ex, solvers, args.threads, args.ref_stage_steps)
        per_example += rows
    rows = aggregate(per_example, args.threads)
    table = format_table(rows, args.threads)
    rec = recommend(rows)
    print(table)
    print(f"\nrecommended: {rec['solver']} K={rec['steps']} ({'meets' if rec['meets_goal'] else 'closest to'} "
          f"ratio ≤ {GOAL_RATIO}, cos ≥ {GOAL_COS}; {rec['step_s']:.2f} s/step)")
    meta = {"command": " ".join(["python", "benchmarks/layer.py"] + (argv if argv is not None else sys.argv[1:])),
            "torch": torch.__version__, "res": args.res, "threads": args.threads, "lam_scale": args.lam_scale, "lam_floor": args.lam_floor,
            "model": Path(args.model).name, "data": f"{args.data.name}/train",
            "examples": [{"key": ex.key, "size": [ex.cams.width, ex.cams.height], "gaussians": ex.g0.num,
                          "lam_p_median": (ex.lam * ex.images[..., 0].numel()).median(0).values.tolist()}
                         for ex in examples],
            "timed": "float32, default backend, optimization_layer_with_stats(pcg_max_iter=50), MSE outer loss",
            "references": {"unrolled": "reverse mode through the same K Adam steps, float64, render_rgb_autograd, "
                                       "exact Hessian-vector products by double backward (layer_reference.py)",
                           "converged": "exact-Hessian IFT (PCG 1e-6) at θ* from a 5-stage decaying-lr Adam run, "
                                        "float64", "converged_info": refs},
            "seconds": time.perf_counter() - t_start, "recommended": rec, "table": table}
    from diff3r_cli.fsio import atomic_write_json

    atomic_write_json(args.out_json, {"meta": meta, "rows": rows, "per_example": per_example})
    print(f"wrote {args.out_json} ({meta['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
