"""Does depth come from the photos or from the depth range? (issue 20)

For each scene, with `reconstruct`'s defaults (working size, context views, near/far), predict the
context views' depth three times: with (near, far), (near/2, far) and (near, far·2). Prints the
median |log ratio| of each pixel's depth between the runs, for the network alone and for the
network followed by one photometric sweep, and for reconstruct's depth stage (`predict_matched`: the
sweep's accepted depths re-set the range, the network predicts again, a second sweep). A depth that
comes from matching stays put (≤ 0.05); one read off the range follows it (log 2 = 0.69).
Writes benchmarks/results/depth_range.json.

    python benchmarks/depth_range.py [--scenes fox,viking] [--model NAME|PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diff3r_cli.depth import predict_matched, sweep_depth
from diff3r_cli.engines.policy import DEFAULT_MODEL, context_views, estimate_depth_range, working_resolution
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import resize_scene

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SCENES = {"fox": DATA / "fox", "fern": DATA / "llff_fern", "viking": HERE.parent / "sample_data" / "viking" / "images"}


def depth_moves(net, images: torch.Tensor, cams, near: float, far: float) -> dict:
    """Median |log depth ratio| for near/2 and far·2: the network alone, the network + one sweep, and
    the pipeline (reconstruct's depth stage: the range re-set from the matched depths)."""
    out = {}
    base = {}
    for tag, (n, f) in (("base", (near, far)), ("near/2", (near / 2, far)), ("far*2", (near, far * 2))):
        m = predict_matched(net, images, cams, n, f, "cpu", backdrop=False)
        d = m.network_depth  # the first network pass, at (n, f)
        kinds = {"network": d, "network+sweep": sweep_depth(images, cams, d).depth, "pipeline": m.sweep.depth}
        if tag == "base":
            base = kinds
            continue
        for kind, dd in kinds.items():
            out[f"{kind} {tag}"] = round(float(torch.log(dd / base[kind]).abs().median()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", default="fox,viking")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--json", default=str(HERE / "results" / "depth_range.json"))
    a = ap.parse_args()
    net = load_model(resolve_model_path(a.model), device="cpu")
    rows = []
    for name in a.scenes.split(","):
        path = SCENES[name]
        scene = load_scene(path)
        ctx = context_views(scene, None, path)
        scene = resize_scene(scene, *working_resolution(scene.width, scene.height, None))
        near, far, _ = estimate_depth_range(scene, ctx, convention=net.cfg.depth_range)
        r = {"scene": name, "near": near, "far": far, **depth_moves(net, scene.images[ctx], scene.cameras[ctx], near, far)}
        rows.append(r)
        print(f"{name:8s} " + "  ".join(f"{k}: {v:.3f}" for k, v in r.items() if k not in ("scene", "near", "far")))
    Path(a.json).write_text(json.dumps({"model": a.model, "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
