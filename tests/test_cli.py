"""CLI tests: help texts, `inspect`, dispatch to engines, and bad input (one line, exit 2).

Engines are replaced by a fake module where the test is about the CLI layer itself (parsing,
error wrapper), so these tests do not depend on the state of the engines.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diff3r_cli import cli
from diff3r_cli.cli import app
from diff3r_cli.errors import NotBuiltError, NumericalError, UserError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.ply import write_ply

runner = CliRunner()

COMMANDS = [["reconstruct"], ["refine"], ["render"], ["train"], ["eval"], ["inspect"], ["data", "synth"]]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles: str, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr, res.exception)
    err = res.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, err
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in err, (n, err)
    return err


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def small_ply(path: Path, n: int = 10, degree: int = 1, lam: bool = True) -> Path:
    gen = torch.Generator().manual_seed(1)
    g = Gaussians(torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen) - 2,
                  torch.randn(n, 4, generator=gen), torch.randn(n, generator=gen),
                  torch.randn(n, (degree + 1) ** 2, 3, generator=gen))
    return write_ply(path, g, torch.rand(n, 5, generator=gen) if lam else None)


def write_png(path: Path, w: int, h: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def make_transforms(folder: Path, n_views: int = 3, w: int = 24, h: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """A transforms.json scene; returns K and the OpenCV w2c matrices computed here by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    fx, fy, cx, cy = 30.0, 31.0, 11.0, 8.5
    frames, w2cs = [], []
    for i in range(n_views):
        write_png(folder / f"v{i}.png", w, h, seed=i)
        a = 0.3 * i
        c2w_gl = np.eye(4)
        c2w_gl[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
        c2w_gl[:3, 3] = [0.5 * i, -0.2, 3.0 + i]
        frames.append({"file_path": f"v{i}.png", "transform_matrix": c2w_gl.tolist()})
        c2w_cv = c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV camera axes
        w2cs.append(np.linalg.inv(c2w_cv))
    meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), w2cs


def have_scene_io() -> bool:
    try:
        from diff3r_cli.scene_io import detect_format, load_scene  # noqa: F401
    except ImportError:
        return False
    return True


needs_scene_io = pytest.mark.skipif(not have_scene_io(), reason="diff3r_cli.scene_io not built yet")


class FakeEngine:
    """Stands in for an engine module: records the keyword arguments it was called with."""

    def __init__(self, result=None, exc: BaseException | None = None):
        self.calls: list[tuple[tuple, dict]] = []
        self.result, self.exc = result, exc

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.exc is not None:
            raise self.exc
        return self.result


@pytest.fixture
def fake_engines(monkeypatch):
    """Install fake pipeline/train/evaluate/synth modules; returns name -> FakeEngine."""
    engines = {n: FakeEngine({"ok": 1}) for n in
               ("reconstruct_command", "refine_command", "render_command", "train_main", "evaluate_main",
                "generate_dataset")}
    mods = {"diff3r_cli.pipeline": ["reconstruct_command", "refine_command", "render_command"],
            "diff3r_cli.train": ["train_main"], "diff3r_cli.evaluate": ["evaluate_main"],
            "diff3r_cli.data.synth": ["generate_dataset"]}
    for mod, names in mods.items():
        m = types.ModuleType(mod)
        for n in names:
            setattr(m, n, engines[n])
        monkeypatch.setitem(sys.modules, mod, m)
    return engines


# --- help ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0, res.stdout
    assert "Usage:" in res.stdout and len(res.stdout) > 300


def test_help_lists_declared_options():
    expect = {
        "reconstruct": ["--out", "--model", "--views", "--resolution", "--device", "--refine-steps",
                        "--no-uncertainty", "--render", "--no-render"],
        "refine": ["--steps", "--optimizer", "--no-uncertainty", "--images", "--out", "--in-place"],
        "render": ["--out", "--path", "--frames", "--video"],
        "train": ["--data", "--data-root", "--stage", "--steps", "--resolution", "--batch", "--out", "--resume",
                  "--init", "--outliers"],
        "eval": ["--data-root", "--data", "--model", "--ff-model", "--tto-steps", "--outliers", "--json"],
    }
    for cmd, opts in expect.items():
        out = run(cmd, "--help").stdout
        for o in opts:
            assert o in out, (cmd, o)
    out = run("data", "synth", "--help").stdout
    for o in ["--out", "--scenes", "--frames", "--resolution", "--seed"]:
        assert o in out


def test_version():
    res = run("--version")
    assert res.exit_code == 0 and res.stdout.startswith("diff3r ")


# --- inspect -------------------------------------------------------------------------------

def test_inspect_ply_json_shape(tmp_path):
    p = small_ply(tmp_path / "s.ply", n=12, degree=2, lam=True)
    res = run("inspect", p, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "ply" and info["num_gaussians"] == 12
    assert info["sh_degree"] == 2 and info["has_uncertainty"] is True
    assert type(info["num_gaussians"]) is int and type(info["sh_degree"]) is int
    p2 = small_ply(tmp_path / "t.ply", n=3, degree=0, lam=False)
    info2 = json.loads(run("inspect", p2, "--json").stdout)
    assert info2["has_uncertainty"] is False and info2["sh_degree"] == 0
    # bounds match the means written
    from diff3r_cli.ply import read_ply
    g, _ = read_ply(p)
    assert info["bounds"]["min"] == g.means.min(0).values.tolist()


def test_inspect_ply_table(tmp_path):
    p = small_ply(tmp_path / "s.ply", n=7)
    res = run("inspect", p)
    assert res.exit_code == 0
    assert "7" in res.stdout and "SH degree" in res.stdout and "uncertainty" in res.stdout


@needs_scene_io
def test_inspect_transforms_json_matches_hand_computed_cameras(tmp_path):
    K, w2cs = make_transforms(tmp_path / "scene", n_views=3)
    res = run("inspect", tmp_path / "scene", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "transforms" and len(info["views"]) == 3
    for v, w2c in zip(info["views"], w2cs):
        assert set(v) >= {"image", "width", "height", "K", "w2c"}
        assert (v["width"], v["height"]) == (24, 16)
        assert np.asarray(v["K"]).shape == (3, 3) and np.asarray(v["w2c"]).shape == (4, 4)
        np.testing.assert_allclose(v["K"], K, atol=1e-9)
        np.testing.assert_allclose(v["w2c"], w2c, atol=1e-6)
        np.testing.assert_allclose(v["center"], np.linalg.inv(w2c)[:3, 3], atol=1e-6)
    table = run("inspect", tmp_path / "scene")
    assert table.exit_code == 0 and "transforms" in table.stdout and "v2.png" in table.stdout


@needs_scene_io
def test_inspect_bare_folder_lists_without_sfm(tmp_path, monkeypatch):
    import diff3r_cli.scene_io as sio

    for i in range(3):
        write_png(tmp_path / f"img{i}.jpg", 20, 10, seed=i)

    def no_sfm(*a, **k):
        raise AssertionError("inspect must not run SfM on a bare folder by default")
    monkeypatch.setattr(sio, "load_scene", no_sfm)
    res = run("inspect", tmp_path, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "folder" and len(info["views"]) == 3
    assert info["views"][0]["width"] == 20 and info["views"][0]["height"] == 10
    assert info["views"][0]["K"] is None
    text = run("inspect", tmp_path)
    assert "unposed (SfM on reconstruct)" in text.stdout


# --- dispatch ------------------------------------------------------------------------------

def test_reconstruct_dispatch_parses_options(tmp_path, fake_engines):
    make_transforms(tmp_path / "scene", 2)
    out = tmp_path / "o" / "x.ply"
    res = run("reconstruct", tmp_path / "scene", "--out", out, "--views", "0,1", "--resolution", "320x240",
              "--device", "cpu", "--refine-steps", "5", "--no-uncertainty", "--no-render")
    assert res.exit_code == 0, res.stderr
    (_, kw), = fake_engines["reconstruct_command"].calls
    assert kw == {"path": tmp_path / "scene", "out": out, "model": None, "views": [0, 1],
                  "resolution": (320, 240), "device": "cpu", "refine_steps": 5, "uncertainty": False,
                  "render": False, "eval_all": False, "video": "mp4"}
    assert "ok" in res.stdout
    assert run("reconstruct", tmp_path / "scene", "--out", out, "--eval-all", "--gif", "--compact-ply").exit_code == 0
    kw = fake_engines["reconstruct_command"].calls[-1][1]
    assert kw["eval_all"] is True and kw["video"] == "gif" and kw["ply_layout"] == "compact"


def test_refine_render_train_eval_synth_dispatch(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    assert run("refine", p, "--steps", "7", "--optimizer", "lm").exit_code == 0
    (_, kw), = fake_engines["refine_command"].calls
    assert kw["out"] == tmp_path / "s.refined.ply" and kw["steps"] == 7 and kw["optimizer"] == "lm"
    assert kw["uncertainty"] is True
    assert run("refine", p, "--in-place").exit_code == 0
    assert fake_engines["refine_command"].calls[-1][1]["out"] == p

    assert run("render", p, "--path", "orbit", "--frames", "3").exit_code == 0
    (_, kw), = fake_engines["render_command"].calls
    assert kw == {"ply": p, "out": tmp_path / "s_renders", "path": "orbit", "frames": 3, "video": False}
    assert run("render", p, "--video").exit_code == 0
    assert fake_engines["render_command"].calls[-1][1]["video"] is True  # MP4
    assert run("render", p, "--gif").exit_code == 0
    assert fake_engines["render_command"].calls[-1][1]["video"] == "gif"

    res = run("train", "--data", "synthetic", "--stage", "ff", "--steps", "3", "--out", tmp_path / "run",
              "--outliers", "0.25", "--lr", "0.001")
    assert res.exit_code == 0, res.stderr
    (_, kw), = fake_engines["train_main"].calls
    assert kw["data"] == "synthetic" and kw["stage"] == "ff" and kw["steps"] == 3 and kw["outliers"] == 0.25
    assert kw["lr"] == 0.001 and "seed" not in kw  # unset extras keep the trainer's defaults

    fake_engines["evaluate_main"].result = {"psnr": 20.5}
    res = run("eval", "--data-root", tmp_path, "--tto-steps", "0,10", "--json", tmp_path / "ev.json")
    assert res.exit_code == 0, res.stderr
    kw = fake_engines["evaluate_main"].calls[0][1]
    assert kw["tto_steps"] == [0, 10] and kw["json_out"] == tmp_path / "ev.json"

    res = run("data", "synth", "--out", tmp_path / "ds", "--scenes", "2", "--frames", "4", "--resolution", "32")
    assert res.exit_code == 0, res.stderr
    (args, kw), = fake_engines["generate_dataset"].calls
    assert args == (tmp_path / "ds",) and kw["scenes"] == 2 and kw["frames"] == 4 and kw["resolution"] == 32 and kw["progress"] is True


def test_engine_errors_become_one_line(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    fake_engines["refine_command"].exc = NumericalError("energy became NaN at step 12")
    assert_one_line_error(run("refine", p), "NaN at step 12")
    fake_engines["refine_command"].exc = UserError("image file not found", tmp_path / "a.png", "pass --images")
    assert_one_line_error(run("refine", p), str(tmp_path / "a.png"), "--images")
    assert tree(tmp_path) == {"s.ply"}


def test_not_built_engine(tmp_path, monkeypatch):
    with pytest.raises(NotBuiltError, match="not built yet"):
        cli._engine("x", "diff3r_cli.no_such_engine_module", "f")
    with pytest.raises(NotBuiltError, match="not built yet"):
        cli._engine("x", "diff3r_cli.errors", "no_such_function")
    # a missing dependency *inside* an existing engine is a real error, not "not built"
    (tmp_path / "broken_engine_a2.py").write_text("import no_such_dependency_a2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_a2"):
        cli._engine("x", "broken_engine_a2", "f")


def test_not_built_command_exits_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diff3r_cli.pipeline", types.ModuleType("diff3r_cli.pipeline"))
    make_transforms(tmp_path / "scene", 2)
    err = assert_one_line_error(run("reconstruct", tmp_path / "scene", "--out", tmp_path / "o.ply"), "not built yet")
    assert "reconstruct_command" in err
    assert not (tmp_path / "o.ply").exists()


# --- bad input -----------------------------------------------------------------------------

def test_missing_paths(tmp_path, fake_engines):
    missing = tmp_path / "nope"
    for args in (["reconstruct", missing], ["refine", missing], ["render", missing], ["inspect", missing],
                 ["eval", "--data-root", missing], ["train", "--data-root", missing],
                 ["train", "--init", missing]):
        assert_one_line_error(run(*args), str(missing))
    assert not any(e.calls for e in fake_engines.values())  # failed before any engine ran
    assert tree(tmp_path) == set()


def test_corrupt_and_truncated_ply(tmp_path, fake_engines):
    good = small_ply(tmp_path / "good.ply", n=50).read_bytes()
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"definitely not a ply\n" * 5)
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(good[: len(good) // 2])
    (tmp_path / "good.ply").unlink()
    before = tree(tmp_path)
    for p in (bad, trunc):
        for cmd in ("inspect", "refine", "render"):
            assert_one_line_error(run(cmd, p), str(p), "ply")
    assert not any(e.calls for e in fake_engines.values())
    assert tree(tmp_path) == before  # no partial outputs (no .refined.ply, no _renders/)


def test_unwritable_outputs(tmp_path, fake_engines):
    make_transforms(tmp_path / "scene", 2)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    p = small_ply(tmp_path / "s.ply")
    before = tree(tmp_path)
    cases = [(["reconstruct", tmp_path / "scene", "--out", blocker / "x.ply"], blocker / "x.ply"),
             (["reconstruct", tmp_path / "scene", "--out", tmp_path / "scene"], tmp_path / "scene"),
             (["refine", p, "--out", blocker / "r.ply"], blocker / "r.ply"),
             (["render", p, "--out", blocker], blocker),
             (["data", "synth", "--out", blocker / "ds"], blocker / "ds"),
             (["train", "--out", blocker / "run"], blocker / "run")]
    for args, named in cases:
        assert_one_line_error(run(*args), str(named))
    assert not any(e.calls for e in fake_engines.values())
    assert tree(tmp_path) == before


def test_bad_option_values(tmp_path, fake_engines):
    make_transforms(tmp_path / "scene", 2)
    assert_one_line_error(run("reconstruct", tmp_path / "scene", "--views", "a,b"), "--views")
    assert_one_line_error(run("reconstruct", tmp_path / "scene", "--resolution", "0x3"), "--resolution")
    assert_one_line_error(run("reconstruct", tmp_path / "scene", "--out", tmp_path / "x.obj"), "x.obj")
    p = small_ply(tmp_path / "s.ply")
    assert_one_line_error(run("refine", p, "--in-place", "--out", tmp_path / "y.ply"), "--in-place")
    assert_one_line_error(run("eval", "--data-root", tmp_path, "--tto-steps", "1,x"), "--tto-steps")
    assert not any(e.calls for e in fake_engines.values())


@needs_scene_io
def test_corrupt_image_and_too_few_views(tmp_path):
    make_transforms(tmp_path / "scene", 3)
    (tmp_path / "scene" / "v1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert_one_line_error(run("inspect", tmp_path / "scene"), "v1.png")
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "a.png", 8, 8)
    (folder / "b.png").write_bytes(b"garbage")
    assert_one_line_error(run("inspect", folder), "b.png")
    make_transforms(tmp_path / "one", 1)
    assert_one_line_error(run("inspect", tmp_path / "one"), "transforms.json", "2")


@needs_scene_io
def test_reconstruct_fewer_than_two_views(tmp_path):
    """End to end through the real pipeline; skipped while the pipeline is not built."""
    make_transforms(tmp_path / "one", 1)
    res = run("reconstruct", tmp_path / "one", "--out", tmp_path / "o.ply", "--no-render")
    if "not built yet" in res.stderr:
        pytest.skip("diff3r_cli.pipeline not built yet")
    assert_one_line_error(res, "one")
    assert not (tmp_path / "o.ply").exists() and not (tmp_path / "o.json").exists()


def test_python_m_entry_point_one_line_error(tmp_path):
    """The real process: `python -m diff3r_cli` exits 2 with a single stderr line."""
    missing = tmp_path / "missing.ply"
    proc = subprocess.run([sys.executable, "-m", "diff3r_cli", "inspect", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_main_turns_unexpected_errors_into_one_line(monkeypatch, capsys):
    def boom(**kw):
        raise RuntimeError("kaboom\nsecond line")
    mod = types.ModuleType("diff3r_cli.evaluate")
    mod.evaluate_main = boom
    monkeypatch.setitem(sys.modules, "diff3r_cli.evaluate", mod)
    monkeypatch.delenv("DIFF3R_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ei:
        cli.main(["eval", "--data-root", "."])
    assert ei.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "RuntimeError: kaboom second line" in err


@pytest.mark.parametrize("argv, needle", [
    (["inspect"], "Missing argument"),
    (["inspect", "x", "--bogus"], "--bogus"),
    (["refine", "x.ply", "--optimizer", "sgd"], "sgd"),
    (["frobnicate"], "frobnicate"),
])
def test_main_usage_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    assert ei.value.code == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err and "--help" in err


def test_main_help_and_success_exit_0(tmp_path, capsys):
    for argv in ([], ["--help"], ["data"], ["--version"]):
        with pytest.raises(SystemExit) as ei:
            cli.main(argv)
        assert ei.value.code == 0, argv
    assert "reconstruct" in capsys.readouterr().out
    p = small_ply(tmp_path / "s.ply")
    with pytest.raises(SystemExit) as ei:
        cli.main(["inspect", str(p), "--json"])
    assert ei.value.code == 0 and json.loads(capsys.readouterr().out)["num_gaussians"] == 10


@needs_scene_io
def test_reconstruct_refuses_a_ply_as_input(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    assert_one_line_error(run("reconstruct", p, "--out", tmp_path / "o.ply"), str(p), "refine")
    assert not fake_engines["reconstruct_command"].calls
