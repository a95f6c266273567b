"""Issue 14, point 3: signals, exit codes, no leftovers, file modes, input validation.

The signal tests run the real CLI in a subprocess and send real SIGTERM/SIGINT at a moment
they observe (a temporary folder appearing), so they exercise the handlers, the watchdog for
native code (pycolmap SfM) and the clean-up of temporary paths end to end.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diff3r_cli.cli import app
from diff3r_cli.model.io import save_model
from diff3r_cli.model.predictor import Predictor, PredictorConfig

from conftest import tiny_model_and_scene

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sig")
    model, scene = tiny_model_and_scene(root, seed=2_000_003, frames=[0, 2, 4, 6], path_frames=8, resolution=64)
    return root, model, scene


def _env(tmp: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("DIFF3R_DEBUG", None)
    return env


def _signal_when(cmd: list[str], tmp: Path, ready, sig: int, timeout: float = 240.0) -> tuple[int, str]:
    """Start `python -m diff3r_cli cmd`, send `sig` as soon as ready() is true; returns (rc, stderr)."""
    tmp.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-m", "diff3r_cli", *cmd], cwd=REPO, env=_env(tmp),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while not ready():
            if p.poll() is not None:
                pytest.fail(f"finished before the signal could be sent: rc={p.returncode}\n{p.stderr.read()}")
            if time.monotonic() - t0 > timeout:
                pytest.fail("the awaited state never came")
            time.sleep(0.01)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


def _assert_clean_exit(rc: int, err: str, sig: int) -> None:
    name = signal.Signals(sig).name
    assert rc == 128 + sig, (rc, err)
    # the finished steps' progress lines may precede it; the interrupted step's display is removed;
    # diff3r's own one-line notices (compiling the CPU rasterizer, or its fallback warning) may too
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("diff3r: ")]
    assert lines[-1] == f"error: interrupted ({name})", err
    assert all("━" in ln for ln in lines[:-1]), err
    for foreign in ("Traceback", "*** Aborted", "stack trace", "KeyboardInterrupt"):
        assert foreign not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_render_leaves_nothing(tiny, tmp_path, sig):
    root, model, scene = tiny
    out = tmp_path / "out" / "s.ply"
    # 256x256 on a 64-pixel scene: enough Gaussians that rendering the path takes seconds
    cmd = ["reconstruct", str(scene), "--out", str(out), "--model", str(model), "--resolution", "256"]

    def rendering() -> bool:
        return out.parent.is_dir() and any(q.name.startswith(".s_renders.") for q in out.parent.iterdir())

    rc, err = _signal_when(cmd, tmp_path / "tmp", rendering, sig)
    _assert_clean_exit(rc, err, sig)
    left = sorted(q.name for q in out.parent.iterdir())
    assert not [n for n in left if n.startswith(".")], left  # no hidden temporary folder or file
    assert "s_renders" not in left  # the half-written renders never appear
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.slow
def test_sigterm_inside_sfm_no_cpp_stack_trace(tiny, tmp_path):
    """pycolmap installs glog's handler (a 35-line C++ stack trace on SIGTERM) and SfM runs
    in native code for seconds: the CLI must still exit 143 at once with one line."""
    root, _, scene = tiny
    folder = tmp_path / "photos"
    folder.mkdir()
    for q in sorted((scene / "images").glob("*.png")):
        (folder / q.name).write_bytes(q.read_bytes())
    tmp = tmp_path / "tmp"
    out = tmp_path / "out" / "f.ply"

    def in_sfm() -> bool:
        return tmp.is_dir() and any(q.name.startswith("diff3r_sfm_") for q in tmp.iterdir())

    t0 = time.monotonic()
    rc, err = _signal_when(["reconstruct", str(folder), "--out", str(out)], tmp, in_sfm, signal.SIGTERM)
    _assert_clean_exit(rc, err, signal.SIGTERM)
    assert time.monotonic() - t0 < 120
    assert list(tmp.iterdir()) == []  # the SfM work folder is gone too
    assert not out.parent.exists() or not [q for q in out.parent.iterdir() if q.name.startswith(".")]


def test_refine_interrupt_writes_best_iterate_marked_partial(tiny, tmp_path, monkeypatch):
    root, model, scene = tiny
    out = tmp_path / "s.ply"
    res = runner.invoke(app, ["reconstruct", str(scene), "--out", str(out), "--model", str(model), "--no-render"])
    assert res.exit_code == 0, res.output

    from diff3r_cli.engines.refine import BestIterate

    orig = BestIterate.__call__

    def interrupt_at_step_3(self, rec):
        orig(self, rec)
        if rec["step"] == 3:
            raise KeyboardInterrupt  # what the SIGINT handler raises between two steps

    monkeypatch.setattr(BestIterate, "__call__", interrupt_at_step_3)
    res = runner.invoke(app, ["refine", str(out), "--steps", "50"])
    assert res.exit_code == 130, res.output
    err = res.stderr.strip().splitlines()
    # the notice names the output and the step, then the one-line interrupt error comes last
    assert err[-1] == "error: interrupted (SIGINT)", res.stderr
    assert f"to {tmp_path / 's.refined.ply'} (marked partial in s.refined.json)" in err[-2], res.stderr
    refined = tmp_path / "s.refined.ply"
    doc = json.loads(refined.with_suffix(".json").read_text())
    assert doc["extras"]["partial"] is True and doc["extras"]["steps_done"] <= 3
    assert f"(step {doc['extras']['steps_done']} of 50)" in err[-2]
    from diff3r_cli.ply import read_ply

    g0, _ = read_ply(out)
    g1, _ = read_ply(refined)
    assert g1.num == g0.num and not torch.equal(g1.means, g0.means)  # a refined iterate, not θ0
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]

    monkeypatch.setattr(BestIterate, "__call__", orig)
    res = runner.invoke(app, ["refine", str(out), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(refined.with_suffix(".json").read_text())["extras"]["partial"] is False


def test_interrupted_train_exits_nonzero(tmp_path, monkeypatch):
    import sys as _sys
    import types

    m = types.ModuleType("diff3r_cli.train")
    m.train_main = lambda **kw: {"status": "interrupted", "step": 7, "signal": int(signal.SIGTERM), "out": str(kw["out"])}
    monkeypatch.setitem(_sys.modules, "diff3r_cli.train", m)
    res = runner.invoke(app, ["train", "--data", "synthetic", "--out", str(tmp_path / "run")])
    assert res.exit_code == 143
    assert "checkpoint at step 7" in res.stderr and "--resume" in res.stderr
    m.train_main = lambda **kw: {"status": "finished", "step": 7}
    assert runner.invoke(app, ["train", "--data", "synthetic", "--out", str(tmp_path / "run")]).exit_code == 0


def test_train_stop_flag_records_the_signal():
    from diff3r_cli.train import StopFlag

    f = StopFlag()
    f._handler(signal.SIGTERM, None)
    assert f.requested and f.signum == signal.SIGTERM


@pytest.mark.parametrize("umask,fmode,dmode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_output_modes_follow_umask(tmp_path, umask, fmode, dmode):
    from diff3r_cli.gaussians import Gaussians
    from diff3r_cli.fsio import atomic_dir
    from diff3r_cli.ply import write_ply

    old = os.umask(umask)
    try:
        g = Gaussians(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.zeros(2),
                      torch.zeros(2, 1, 3))
        p = write_ply(tmp_path / "a.ply", g)
        with atomic_dir(tmp_path / "d") as d:
            (d / "x.txt").write_text("x")
        cfg = PredictorConfig.preset("small", enc_channels=(8, 8), feat_dim=8, num_planes=8, refine_channels=8,
                                     head_channels=8, attn_layers=0)
        m = save_model(tmp_path / "m.safetensors", Predictor(cfg), {"resolution": 32})  # train's writer too
        from diff3r_cli.fsio import atomic_write_json

        atomic_write_json(tmp_path / "log.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == fmode
    assert stat.S_IMODE(Path(m).stat().st_mode) == fmode
    assert stat.S_IMODE((tmp_path / "log.json").stat().st_mode) == fmode
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == dmode


def test_pipeline_outputs_are_0644_and_0755(tiny, tmp_path):
    root, model, scene = tiny
    old = os.umask(0o022)
    try:
        out = tmp_path / "o" / "s.ply"
        res = runner.invoke(app, ["reconstruct", str(scene), "--out", str(out), "--model", str(model),
                                  "--resolution", "32"])
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    for q in [out, out.with_suffix(".json"), *sorted((tmp_path / "o" / "s_renders").iterdir())]:
        assert stat.S_IMODE(q.stat().st_mode) == 0o644, q
    for d in ("s_renders", "s_inputs"):
        assert stat.S_IMODE((tmp_path / "o" / d).stat().st_mode) == 0o755


@pytest.mark.parametrize("args,needle", [
    (["--views", "0,0"], "more than once"),
    (["--views", "1,2,1"], "more than once"),
    (["--resolution", "7"], "too small"),
    (["--resolution", "320x16"], "too small"),
])
def test_reconstruct_option_validation(tiny, tmp_path, args, needle):
    _, model, scene = tiny
    res = runner.invoke(app, ["reconstruct", str(scene), "--out", str(tmp_path / "s.ply"), "--model", str(model),
                              *args])
    assert res.exit_code == 2 and needle in res.stderr, res.output
    assert res.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("out", ["/proc/x.ply", "/proc/self/x.ply", "/sys/x.ply"])
def test_special_output_paths_are_one_line_errors(tiny, out):
    _, model, scene = tiny
    res = runner.invoke(app, ["reconstruct", str(scene), "--out", out, "--model", str(model)])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and "internal error" not in res.stderr
    assert out in res.stderr and res.stderr.strip().count("\n") == 0


def test_missing_sidecar_hint_is_actionable(tmp_path):
    from diff3r_cli.gaussians import Gaussians
    from diff3r_cli.ply import write_ply

    g = Gaussians(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.zeros(2),
                  torch.zeros(2, 1, 3))
    p = write_ply(tmp_path / "a.ply", g, torch.ones(2, 5))
    for cmd in (["render", str(p)], ["refine", str(p)], ["refine", str(p), "--images", str(tmp_path)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        assert "a.json" in res.stderr and "--images" not in res.stderr  # no dead-end hint
        assert "re-run `diff3r reconstruct`" in res.stderr


def test_mixed_sizes_notice_and_exact_intrinsics(caplog):
    from diff3r_cli.scene_io.images import crop_notice, stack_views

    land = torch.rand(30, 60, 3)   # 2:1
    port = torch.rand(40, 30, 3)   # 3:4
    K = lambda w, h: torch.tensor([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]], dtype=torch.float64)  # noqa: E731
    with caplog.at_level("WARNING"):
        imgs, cams = stack_views([port, land], [K(30, 40), K(60, 30)], [torch.eye(4)] * 2, 30, 40)
    msg = crop_notice([(30, 40), (60, 30)], 30, 40)
    assert msg is not None and "1 of 2 views" in msg and "width" in msg and "--resolution" in msg
    assert any(msg in r.getMessage() for r in caplog.records)
    # landscape 60x30 covered to 80x40 then 30 of 80 columns kept: 62% of the width cut
    assert "62% of the width" in msg
    # its own intrinsics follow exactly: scale 4/3, then crop 25 columns at the left
    k1 = cams.K[1]
    assert torch.allclose(k1[0, 0], torch.tensor(50.0 * 4 / 3, dtype=torch.float64))
    assert torch.allclose(k1[0, 2], torch.tensor(30 * 4 / 3 - 25, dtype=torch.float64))
    assert crop_notice([(30, 40), (60, 80)], 30, 40) is None  # same aspect: nothing cut, no notice
    caplog.clear()
    with caplog.at_level("WARNING"):
        stack_views([land, land], [K(60, 30)] * 2, [torch.eye(4)] * 2, 30, 40)  # one size: no notice
    assert not caplog.records
