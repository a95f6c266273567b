"""End-to-end timings of the commands the rasterizer dominates, torch backend against the
compiled CPU backend, side by side in one run (each command runs once per backend, back to
back, as a fresh process, so the ratio survives a noisy shared CPU):

- ``diff3r refine scene.ply --steps 200`` (Adam) on a 256x256 reconstruction of the sample,
- ``diff3r refine scene.ply --optimizer lm --steps 10`` on the same scene,
- ``diff3r train --stage diff3r`` steps at 64² and 128² (seconds per step from log.jsonl,
  averaged over the run's steps).

    python benchmarks/end_to_end.py [--threads 2] [--skip-torch-lm] [--lm-steps-torch 3]

The torch backend's LM refine at 256² takes minutes per iteration; ``--lm-steps-torch``
(default 3) times fewer iterations for it and reports seconds per iteration for both.
Prints a table and writes benchmarks/results/end_to_end.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from diff3r_cli.fsio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], backend: str, threads: int, cwd: Path) -> float:
    env = dict(os.environ, DIFF3R_RENDER_BACKEND=backend, OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "diff3r_cli", *args], env=env, cwd=cwd,
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"diff3r {' '.join(args)} failed ({backend}):\n{p.stderr[-2000:]}")
    return dt


def _train_step_seconds(run_dir: Path) -> float:
    """Seconds per step of the last logged training window (log.jsonl's steps_per_s)."""
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["steps_per_s"] for r in rows if r.get("type") == "train" and r.get("steps_per_s")]
    if not rates:
        raise RuntimeError(f"no training steps logged in {run_dir / 'log.jsonl'}")
    return 1.0 / rates[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm-steps-torch", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--backends", nargs="+", default=["torch", "cpu"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "end_to_end.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(["reconstruct", str(ROOT / "sample_data" / "room"), "--out", str(tmp / "scene.ply"),
              "--resolution", "256", "--no-render"], "cpu", args.threads, tmp)
        _run(["data", "synth", "--out", str(tmp / "synth"), "--scenes", "2", "--frames", "12",
              "--resolution", "128", "--split", "train"], "cpu", args.threads, tmp)

        def row(task, backend, seconds, per=None, n=None):
            r = {"task": task, "backend": backend, "threads": args.threads, "seconds": seconds,
                 "loadavg": os.getloadavg()[0]}
            if per is not None:
                r.update(per_iteration_s=per, iterations=n)
            rows.append(r)
            extra = f"  ({per:.2f} s/it over {n})" if per is not None else ""
            print(f"{task:<34} {backend:>6} {seconds:>9.1f} s{extra}  load {r['loadavg']:.1f}", flush=True)

        for backend in args.backends:
            s = _run(["refine", str(tmp / "scene.ply"), "--steps", "200", "--out", str(tmp / f"r_{backend}.ply")],
                     backend, args.threads, tmp)
            row("refine --steps 200 (adam, 256²)", backend, s)
        for backend in args.backends:
            n = args.lm_steps_torch if backend == "torch" else 10
            s = _run(["refine", str(tmp / "scene.ply"), "--optimizer", "lm", "--steps", str(n),
                      "--out", str(tmp / f"lm_{backend}.ply")], backend, args.threads, tmp)
            row(f"refine --optimizer lm (256²)", backend, s, per=s / n, n=n)
        for res in (64, 128):
            for backend in args.backends:
                run_dir = tmp / f"train_{backend}_{res}"
                _run(["train", "--data", "synthetic", "--data-root", str(tmp / "synth"), "--stage", "diff3r",
                      "--resolution", str(res), "--batch", "1", "--steps", str(args.train_steps),
                      "--init", str(ROOT / "models" / "diff3r-small.safetensors"), "--out", str(run_dir),
                      "--eval-every", "0", "--threads", str(args.threads)], backend, args.threads, tmp)
                row(f"train --stage diff3r step ({res}²)", backend, _train_step_seconds(run_dir))
    speedups = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        by = {r["backend"]: r for r in rows if r["task"] == task}
        if "torch" in by and "cpu" in by:
            key = "per_iteration_s" if "per_iteration_s" in by["cpu"] else "seconds"
            speedups[task] = by["torch"][key] / by["cpu"][key]
    if speedups:
        print("\nspeed-up of the compiled backend (torch / cpu, same run):")
        for task, sp in speedups.items():
            print(f"  {task:<34} {sp:5.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["benchmarks/end_to_end.py"] + (argv or sys.argv[1:])), "cpu_count": os.cpu_count(),
            "note": "wall time of fresh processes (includes start-up and model load); CPU shared with other jobs"}
    atomic_write_json(out, {"meta": meta, "rows": rows, "speedups": speedups})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
