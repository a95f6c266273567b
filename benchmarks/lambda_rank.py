"""Does the predicted uncertainty Λ carry information? (issue 20, item 6)

On the held-out real tuples (`diff3r eval`'s views and near/far), predict θ0 and Λ with the diff3r
model (depth corrected by the sweep, as reconstruct does), run plain TTO (Λ = 0, Adam, --steps) to
θ*, and report per parameter group the Spearman rank correlation between 1/λ (how far Λ lets a
Gaussian move) and |θ* − θ0| (how far the photos moved it; the norm over the group's scalars).
Positive and clearly above 0 means Λ predicts where TTO will change the prediction; about 0 means
Λ is a constant in disguise (e.g. at its floor). Also prints the share of Gaussians whose λ·P is
within 1 % of the model's floor. Writes benchmarks/results/lambda_rank.json.

    python benchmarks/lambda_rank.py [--model NAME|PATH] [--steps 200] [--limit 12] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.re10k import RE10KDataset
from diff3r_cli.depth import sweep_depth, view_depths, with_depths
from diff3r_cli.engines.policy import DEFAULT_MODEL
from diff3r_cli.evaluate.command import depth_range_for
from diff3r_cli.gaussians import GROUPS
from diff3r_cli.model.inference import predict_gaussians
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.optim.tto import optimize

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-D tensors (average ranks are not needed: ties are rare in floats)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def group_moves(g0, g1) -> torch.Tensor:
    """(N,5) norm of θ* − θ0 over each group's scalars."""
    parts = [(g1.means - g0.means), (g1.log_scales - g0.log_scales), (g1.quats - g0.quats),
             (g1.opacity_logits - g0.opacity_logits)[:, None], (g1.sh - g0.sh).reshape(len(g0), -1)]
    return torch.stack([p.norm(dim=1) for p in parts], 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--json", default=str(HERE / "results" / "lambda_rank.json"))
    a = ap.parse_args()
    net = load_model(resolve_model_path(a.model), device="cpu")
    ds = RE10KDataset(REAL, split="test", resolution=a.resolution, evaluation_index=REAL / "evaluation_index.json",
                      full_context=True)
    floor = float(getattr(net.cfg, "lam_floor", 0.0))
    rows = []
    for n, s in enumerate(ds):
        if n >= a.limit:
            break
        near, far, _ = depth_range_for(s, "auto", net.cfg.depth_range)
        h, w = s["context_images"].shape[1:3]
        cams = Cameras(s["context_K"], s["context_w2c"], w, h)
        imgs = s["context_images"]
        g0, lam = predict_gaussians(net, imgs, cams, near, far, "cpu", keep_floor=True)
        g0 = with_depths(g0, cams, sweep_depth(imgs, cams, view_depths(g0, cams)).depth)
        g1, _ = optimize(g0, None, cams, imgs, a.steps, optimizer="adam")
        moves = group_moves(g0, g1.detach())
        P = imgs.shape[0] * h * w
        lamP = lam * P
        row = {"key": s["key"], "at_floor": round(float((lamP <= floor * 1.01).float().mean()), 3) if floor else 0.0}
        for k, name in enumerate(GROUPS):
            row[name] = round(spearman(1.0 / lam[:, k], moves[:, k]), 3)
        rows.append(row)
        print(f"{row['key']:24s} " + "  ".join(f"{g}: {row[g]:+.3f}" for g in GROUPS) + f"  at floor {row['at_floor']:.2f}",
              flush=True)
    mean = {g: round(sum(r[g] for r in rows) / len(rows), 3) for g in GROUPS}
    print("mean" + " " * 21 + "  ".join(f"{g}: {mean[g]:+.3f}" for g in GROUPS))
    out = {"model": a.model, "steps": a.steps, "resolution": a.resolution, "lam_floor": floor, "mean": mean, "rows": rows}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
