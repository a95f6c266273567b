"""Does the TTO anchor Λ carry information? (issue 20, item 6)

On the held-out real tuples (`diff3r eval`'s views and near/far), the depth stage of the pipeline
(`predict_matched`, as `reconstruct` and `eval` run it) gives θ0 and the anchor Λ. Two converged
references θ*: plain TTO (Λ = 0, Adam, --steps) on the context views only — how far the context
photos pull each Gaussian — and on the context *and* target views — where the Gaussian should go to
explain unseen views too. Per parameter group, the Spearman rank correlation between 1/λ (how far
Λ lets a Gaussian move) and |θ* − θ0| (over the group's scalars). An informative anchor
correlates positively with the second reference; a constant one (e.g. at its floor) gives about 0.

--source network: the network's Λ rows as predicted (no covisibility scaling), for comparison.
--anchor-head (default: the bundled one; "none" to skip): also the Λ that the anchored refine hands
its TTO after the head's re-ranking (``depth.consistency.confident_start``, pre-pass included).
Also prints the share of Gaussians another context view sees (those the anchor frees). Writes
benchmarks/results/lambda_rank.json.

    python benchmarks/lambda_rank.py [--model NAME|PATH] [--steps 200] [--limit 12] [--resolution 128]
        [--anchor-head NAME|PATH|none]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.data.re10k import RE10KDataset
from diff3r_cli.depth import predict_matched
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, group_change, resolve_head
from diff3r_cli.depth.consistency import confident_start
from diff3r_cli.engines.policy import DEFAULT_MODEL
from diff3r_cli.evaluate.command import depth_range_for
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.gaussians import GROUPS
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.optim.tto import optimize
from diff3r_cli.train.anchor_head_fit import spearman

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--source", choices=("pipeline", "network"), default="pipeline")
    ap.add_argument("--anchor-head", default=DEFAULT_HEAD)
    ap.add_argument("--json", default=str(HERE / "results" / "lambda_rank.json"))
    a = ap.parse_args()
    net = load_model(resolve_model_path(a.model), device="cpu")
    head = resolve_head(a.anchor_head)
    ds = RE10KDataset(REAL, split="test", resolution=a.resolution, evaluation_index=REAL / "evaluation_index.json",
                      full_context=True)
    rows = []
    for n, s in enumerate(ds):
        if n >= a.limit:
            break
        near, far, _ = depth_range_for(s, "auto", net.cfg.depth_range)
        h, w = s["context_images"].shape[1:3]
        cams = Cameras.of_sample(s)
        imgs = s["context_images"]
        m = predict_matched(net, imgs, cams, near, far, "cpu", anchor=a.source == "pipeline",
                            backdrop=False)  # the predicted Gaussians only: the backdrop is not predicted
        g0, lam = m.gaussians, m.lam
        sources = {"predicted": lam}
        if head is not None:
            sources["anchor head"] = confident_start(g0, lam, cams, imgs, drop=False, head=head)[1]
        all_cams = Cameras(torch.cat([s["context_K"], s["target_K"]]), torch.cat([s["context_w2c"], s["target_w2c"]]),
                           w, h)
        refs = {"context": (cams, imgs), "all views": (all_cams, torch.cat([imgs, s["target_images"]]))}
        row = {"key": s["key"], "covisible": round(float(m.covisible.float().mean()), 3)}
        cols = []
        for ref, (c, im) in refs.items():
            g1, _ = optimize(g0, None, c, im, a.steps, optimizer="adam")
            moves = group_change(g0, g1.detach())  # mean squared change per group (ranks as its norm)
            for src, lm in sources.items():
                col = ref if src == "predicted" else f"{ref}, {src}"
                row[col] = {name: round(spearman(1.0 / lm[:, k], moves[:, k]), 3) for k, name in enumerate(GROUPS)}
                cols.append(col)
        rows.append(row)
        print(f"{row['key']:22s} covisible {row['covisible']:.2f}  " + "  ".join(
            f"{col}: " + " ".join(f"{row[col][g]:+.2f}" for g in GROUPS) for col in cols), flush=True)
    mean = {col: {g: round(sum(r[col][g] for r in rows) / len(rows), 3) for g in GROUPS} for col in cols}
    print(f"mean over {len(rows)} tuples (groups: {', '.join(GROUPS)}):")
    for col, vals in mean.items():
        print(f"  θ* from {col:22s}: " + "  ".join(f"{g} {v:+.3f}" for g, v in vals.items()))
    out = {"model": a.model, "source": a.source, "steps": a.steps, "resolution": a.resolution,
           "anchor_head": None if head is None else a.anchor_head, "mean": mean, "rows": rows}
    atomic_write_json(Path(a.json), out, indent=1)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
