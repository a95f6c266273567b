"""The classical depth stage on real photos: depth error against triangulated points, PSNR, time.

For each scene (fox, fern, viking sample), with `reconstruct`'s default working size, context views
and model: predict, then refine each context view's depth by the ZNCC sweep (diff3r_cli.depth).
Reports the median relative depth error at points triangulated from the context photos (poses
fixed, SIFT + pycolmap), the accepted fraction, the sweep's wall time, and context / unseen
(interpolation) PSNR of the prediction before and after. Writes benchmarks/results/depth_sweep.json.
With --real-split ROOT: the same depth error on the context views of every test tuple of an
RE10K-format root (`diff3r eval`'s tuples at --resolution, its near/far; points triangulated at
the stored size), for the network alone and for reconstruct's depth stage (`predict_matched`);
writes benchmarks/results/depth_split.json.

    python benchmarks/depth_sweep.py [--scenes fox,fern,viking] [--model NAME]
    python benchmarks/depth_sweep.py --real-split ../shared/data/real [--resolution 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diff3r_cli.depth import sparse_depth_error, sweep_depth, view_depths, with_depths
from diff3r_cli.engines.outputs import mean_psnr, render_views
from diff3r_cli.engines.policy import (DEFAULT_MODEL, context_views, estimate_depth_range, split_unseen,
                                       working_resolution)
from diff3r_cli.fsio import atomic_write_json
from diff3r_cli.model.inference import predict_gaussians
from diff3r_cli.model.io import load_model, resolve_model_path
from diff3r_cli.scene_io import load_scene
from diff3r_cli.scene_io.images import resize_scene
from diff3r_cli.scene_io.triangulate import triangulate_known_cameras

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SCENES = {"fox": DATA / "fox", "fern": DATA / "llff_fern", "viking": HERE.parent / "sample_data" / "viking" / "images"}


def run_scene(name: str, path: Path, model: str) -> dict:
    scene = load_scene(path)
    ctx = context_views(scene, None, path)
    scene = resize_scene(scene, *working_resolution(scene.width, scene.height, None))
    net = load_model(resolve_model_path(model), device="cpu")
    near, far, _ = estimate_depth_range(scene, ctx, convention=net.cfg.depth_range)
    cams, imgs = scene.cameras[ctx], scene.images[ctx]
    g, _ = predict_gaussians(net, imgs, cams, near, far, "cpu")
    interp, _ = split_unseen(scene.cameras, ctx)
    pts = triangulate_known_cameras(imgs, cams)["points3d"]
    d0 = view_depths(g, cams)
    t0 = time.perf_counter()
    res = sweep_depth(imgs, cams, d0)
    t_sweep = time.perf_counter() - t0
    g1 = with_depths(g, cams, res.depth)
    row = {"scene": name, "size": [scene.width, scene.height], "context": ctx, "interp": interp,
           "points": int(pts.shape[0]), "sweep_s": round(t_sweep, 2), "accepted": round(res.accepted_fraction, 3)}
    for tag, gg, d in (("predicted", g, d0), ("sweep", g1, res.depth)):
        err = sparse_depth_error(d, cams, pts)
        row[tag] = {"depth_err": round(err["median"], 4), "depth_bias": round(err["bias"], 4),
                    "context_psnr": round(mean_psnr(render_views(gg, cams), imgs), 2),
                    "interp_psnr": round(mean_psnr(render_views(gg, scene.cameras[interp]), scene.images[interp]), 2)
                    if interp else None}
    return row


def run_split(root: Path, model: str, resolution: int) -> list[dict]:
    """Depth error of the network and of the depth stage on each test tuple's context views."""
    from diff3r_cli.cameras import Cameras
    from diff3r_cli.data.re10k import RE10KDataset
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.evaluate.command import depth_range_for

    net = load_model(resolve_model_path(model), device="cpu")
    ds = RE10KDataset(root, split="test", resolution=resolution, evaluation_index=root / "evaluation_index.json",
                      full_context=True)
    rows = []
    for sample in ds:
        imgs = sample["context_images"]
        H, W = imgs.shape[1:3]
        cams = Cameras(sample["context_K"].double(), sample["context_w2c"].double(), W, H)
        full = sample["context_images_full"]
        fcams = Cameras(sample["context_K_full"].double(), sample["context_w2c"].double(), full.shape[2], full.shape[1])
        pts = triangulate_known_cameras(full, fcams)["points3d"]
        near, far, _ = depth_range_for(sample, "auto", net.cfg.depth_range)
        m = predict_matched(net, imgs, cams, near, far, "cpu", backdrop=False)
        row = {"key": sample["key"], "points": int(pts.shape[0]), "accepted": round(m.accepted, 3)}
        for tag, d in (("network", m.network_depth), ("pipeline", m.sweep.depth)):
            err = sparse_depth_error(d, cams, pts)
            row[tag] = {"depth_err": round(err["median"], 4), "depth_bias": round(err["bias"], 4), "count": err["count"]}
        rows.append(row)
        print(f"{row['key'][:28]:28s} {row['points']:6d} pts  acc {row['accepted']:.2f}  "
              f"depth err {row['network']['depth_err']:.3f} -> {row['pipeline']['depth_err']:.3f}")
    return rows


# the sweep timed side by side in one run (this machine is noisy): without the despeckle, with it
# reading every pixel of its window, and as shipped (a grid of at most 9×9 samples)
SPEED_CONFIGS = {"no despeckle": {"despeckle": 0.0}, "despeckle, every pixel": {"despeckle_samples": 10_000},
                 "despeckle (default)": {}}


def speed(size: int = 256, views: int = 3, repeats: int = 3) -> dict:
    """Wall time of the sweep on `views` random-texture views of size² (the issue's budget: 2 s for 3 at
    256²), per configuration of SPEED_CONFIGS, interleaved so that load changes hit all alike."""
    import os

    from diff3r_cli.cameras import Cameras
    from diff3r_cli.depth.sweep import SweepConfig

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(views, size, size, 3, generator=g)
    K = torch.tensor([[size * 0.9, 0, size / 2], [0, size * 0.9, size / 2], [0, 0, 1.0]]).expand(views, 3, 3).clone()
    w2c = torch.eye(4).repeat(views, 1, 1)
    w2c[:, 0, 3] = torch.linspace(-0.3, 0.3, views)
    cams = Cameras(K, w2c, size, size)
    guess = torch.full((views, size, size), 3.0)
    cfgs = {name: SweepConfig(**kw) for name, kw in SPEED_CONFIGS.items()}
    sweep_depth(imgs, cams, guess)                                   # warm-up
    times: dict = {n: [] for n in cfgs}
    cpu: dict = {n: [] for n in cfgs}
    for _ in range(repeats):
        for n, cfg in cfgs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            sweep_depth(imgs, cams, guess, cfg)
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    # CPU time (all threads of this process) is what a busy shared machine cannot inflate much;
    # wall time is what a user waits on an idle one.
    return {"size": size, "views": views, "threads": torch.get_num_threads(),
            "loadavg_1min": round(os.getloadavg()[0], 2),
            "configs": {n: {"best_s": round(min(times[n]), 3), "median_s": round(sorted(times[n])[len(times[n]) // 2], 3),
                            "cpu_s": round(min(cpu[n]), 3)} for n in cfgs}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", default="fox,fern,viking")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--json", default=str(HERE / "results" / "depth_sweep.json"))
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--real-split", type=Path, default=None)
    ap.add_argument("--resolution", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.real_split is not None:
        rows = run_split(a.real_split, a.model, a.resolution)
        med = {t: float(torch.tensor([r[t]["depth_err"] for r in rows if r[t]["count"]]).median()) for t in ("network", "pipeline")}
        print(f"median over {len(rows)} tuples: network {med['network']:.3f}, depth stage {med['pipeline']:.3f}")
        out = Path(a.json).with_name("depth_split.json") if a.json.endswith("depth_sweep.json") else Path(a.json)
        atomic_write_json(out, {"model": a.model, "root": str(a.real_split), "resolution": a.resolution,
                                "median": med, "rows": rows}, indent=1)
        print(f"wrote {out}")
        return
    sp = speed()
    print(f"sweep, {sp['views']} views at {sp['size']}² ({sp['threads']} threads, load average {sp['loadavg_1min']}):")
    base = sp["configs"]["no despeckle"]["best_s"]
    for n, c in sp["configs"].items():
        print(f"  {n:24s} wall best {c['best_s']:6.2f} s, median {c['median_s']:6.2f} s, CPU {c['cpu_s']:6.2f} s, "
              f"{c['best_s'] / base:5.2f}x no despeckle")
    if a.speed_only:
        out = Path(a.json).with_name("depth_sweep_speed.json") if a.json.endswith("depth_sweep.json") else Path(a.json)
        atomic_write_json(out, sp, indent=1)
        print(f"wrote {out}")
        return
    rows = []
    print(f"{'scene':8s} {'size':>9s} {'sweep s':>7s} {'acc':>5s} | {'depth err':>15s} | {'context dB':>13s} | "
          f"{'unseen dB':>13s}")
    for name in a.scenes.split(","):
        r = run_scene(name, SCENES[name], a.model)
        rows.append(r)
        p, s = r["predicted"], r["sweep"]
        print(f"{name:8s} {r['size'][0]:4d}x{r['size'][1]:<4d} {r['sweep_s']:7.2f} {r['accepted']:5.2f} | "
              f"{p['depth_err']:6.3f} -> {s['depth_err']:6.3f} | {p['context_psnr']:5.2f} -> {s['context_psnr']:5.2f} | "
              f"{p['interp_psnr'] or 0:5.2f} -> {s['interp_psnr'] or 0:5.2f}")
    out = {"model": a.model, "threads": torch.get_num_threads(), "speed": sp, "rows": rows}
    atomic_write_json(a.json, out, indent=1)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
