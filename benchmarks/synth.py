"""Synthetic data generator throughput: scenes per minute, and the time 2,000 scenes would take.

Usage: python benchmarks/synth.py [--scenes 2] [--configs 256x40x4x1,128x24x4x1:classic,128x24x4x1:photos]
Each config is RESOLUTIONxFRAMESxSPPxWORKERS (RESOLUTION: the short side), optionally followed by
:classic (the generator of before issue 13: square rooms) or :photos (the default generator with
photo textures from --texture-root); without a suffix, the default generator. Prints a table and writes
benchmarks/results/synth.json (atomically). Note the load average in the output: on a shared
machine the numbers scale with the CPU time actually available.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from diff3r_cli.data.synth import CLASSIC, SynthConfig, frame_size, generate_dataset, random_scene, render_frame
from diff3r_cli.scene_io.re10k import write_json_atomic


def _generator(variant: str, texture_root: str) -> SynthConfig:
    """The generator config a config suffix names."""
    if variant not in ("", "classic", "photos"):
        raise SystemExit(f"unknown config suffix {variant!r}: use classic or photos")
    return {"": SynthConfig(), "classic": CLASSIC, "photos": SynthConfig(texture_root=texture_root)}[variant]


def _frame_breakdown(resolution: int, spp: int, config: SynthConfig, frames: int = 4) -> dict:
    """Per-frame seconds of the ray caster alone (no JPEG, no I/O), one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scene = random_scene(123, frames, *frame_size(123, resolution, config), config)
        render_frame(scene, 0, spp)  # warm-up
        t0 = time.perf_counter()
        for f in range(frames):
            render_frame(scene, f, spp)
        return {"render_seconds_per_frame": (time.perf_counter() - t0) / frames}
    finally:
        torch.set_num_threads(old)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=2, help="scenes per config (per worker for workers > 1)")
    ap.add_argument("--configs", default="256x40x4x1,128x24x4x1:classic,128x24x4x1,128x24x4x1:photos")
    ap.add_argument("--texture-root", default=str(Path(__file__).parents[1].parent / "shared" / "data" / "real"),
                    help="RE10K root whose train/ photos the :photos configs cut textures from")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth.json"))
    args = ap.parse_args(argv)
    rows = []
    for cfg in args.configs.split(","):
        sizes, _, variant = cfg.partition(":")
        res, frames, spp, workers = (int(x) for x in sizes.split("x"))
        generator = _generator(variant, args.texture_root)
        n = args.scenes * workers
        with tempfile.TemporaryDirectory() as tmp:
            load0 = os.getloadavg()[0]
            r = generate_dataset(tmp, n, frames=frames, resolution=res, seed=0, spp=spp, chunk_size=args.scenes,
                                 workers=workers, config=generator)
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*.torch"))
        spm = r["scenes_per_minute"]
        row = {"resolution": res, "generator": variant or "default", "texture_photos": r["texture_photos"],
               "frames": frames, "spp": spp, "workers": workers, "scenes": n,
               "seconds": r["seconds"], "scenes_per_minute": spm,
               "hours_for_2000_scenes": 2000 / spm / 60, "mb_per_scene": size / n / 2 ** 20,
               "load_average_before": load0}
        row.update(_frame_breakdown(res, spp, generator))
        rows.append(row)
        print(f"done {cfg}: {spm:.2f} scenes/min", file=sys.stderr, flush=True)
    result = {"benchmark": "synth", "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "machine": platform.machine(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": rows}
    hdr = f"{'generator':>9} {'res':>5} {'frames':>6} {'spp':>3} {'workers':>7} {'scenes/min':>10} {'h/2000':>7} " \
          f"{'s/frame(1 thr)':>14} {'MB/scene':>8} {'load':>5}"
    print(hdr)
    for r in rows:
        print(f"{r['generator']:>9} {r['resolution']:>5} {r['frames']:>6} {r['spp']:>3} {r['workers']:>7} {r['scenes_per_minute']:>10.2f} "
              f"{r['hours_for_2000_scenes']:>7.2f} {r['render_seconds_per_frame']:>14.3f} {r['mb_per_scene']:>8.2f} "
              f"{r['load_average_before']:>5.1f}")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
