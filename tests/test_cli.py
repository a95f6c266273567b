"""CLI tests: help texts, `inspect`, dispatch to engines, and bad input (one line, exit 2).

Engines are replaced by fakes where the test is about the CLI layer itself (parsing, error
wrapper, presentation), so these tests do not depend on what the engines compute.
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
from diff3r_cli.engines.outputs import RenderFolder
from diff3r_cli.engines.reconstruct import ReconstructResult
from diff3r_cli.engines.refine import RefineResult
from diff3r_cli.errors import NumericalError, UserError
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


RENDERS = RenderFolder(Path("r"), frames=6, video=Path("r/path.mp4"), psnr={"context": 21.234567},
                       views={"context": [0, 2]})
RECONSTRUCTED = ReconstructResult(Path("x.ply"), 123, [0, 2], [1], [3, 4], 64, 48, 0.51234, 12.5, "scene", "cpu",
                                  0.123, 4.5678, 0.0, 7.891, RENDERS)
REFINED = RefineResult(Path("s.refined.ply"), 7, (0.0123456, 0.0045678), (0.01, 0.001), 3.14159)


@pytest.fixture
def fake_engines(monkeypatch):
    """Replace the engines the commands call by recording fakes; returns name -> FakeEngine.

    reconstruct/refine/render are patched where the commands import them from; train, eval and
    synth are fake modules (their packages are restructured elsewhere)."""
    engines = {"reconstruct_scene": FakeEngine(RECONSTRUCTED), "refine_splat": FakeEngine(REFINED),
               "render_splat": FakeEngine(RenderFolder(Path("r"), frames=3)), "train_main": FakeEngine({"ok": 1}),
               "evaluate_main": FakeEngine({"ok": 1}), "generate_dataset": FakeEngine({"ok": 1})}
    for mod, name in (("diff3r_cli.engines.reconstruct", "reconstruct_scene"),
                      ("diff3r_cli.engines.refine", "refine_splat"),
                      ("diff3r_cli.engines.render_path", "render_splat")):
        monkeypatch.setattr(f"{mod}.{name}", engines[name])
    for mod, name in (("diff3r_cli.train", "train_main"), ("diff3r_cli.evaluate", "evaluate_main"),
                      ("diff3r_cli.data.synth", "generate_dataset")):
        m = types.ModuleType(mod)
        setattr(m, name, engines[name])
        monkeypatch.setitem(sys.modules, mod, m)
    return engines


def without_progress(kw: dict) -> dict:
    """The keyword arguments an engine got, less the progress callback (checked on its own)."""
    from diff3r_cli.cli.progress import RichProgress

    assert isinstance(kw.pop("progress"), RichProgress)
    return kw


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
    from diff3r_cli import __version__

    res = run("--version")
    assert res.exit_code == 0 and res.stdout == f"diff3r {__version__}\n"
    assert f'version = "{__version__}"' in (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


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


def table_rows(text: str) -> dict[str, str]:
    """A rich table printed as text -> {first cell: second cell} (box characters stripped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def test_inspect_ply_table(tmp_path):
    gen = torch.Generator().manual_seed(3)
    means = torch.tensor([[-1.5, 0.25, 2.0], [0.5, -0.75, 3.0], [1.0, 0.5, 4.5]] + [[0.0, 0.0, 3.0]] * 4)
    g = Gaussians(means, torch.full((7, 3), -2.0), torch.randn(7, 4, generator=gen), torch.zeros(7),
                  torch.randn(7, 4, 3, generator=gen))
    lam = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]).repeat(7, 1) * torch.arange(1, 8.0)[:, None]
    p = write_ply(tmp_path / "s.ply", g, lam)
    res = CliRunner().invoke(app, ["inspect", str(p)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = table_rows(res.stdout)
    assert rows["gaussians"] == "7" and rows["SH degree"] == "1"
    assert rows["bounds min"] == "(-1.5, -0.75, 2)" and rows["bounds max"] == "(1, 0.5, 4.5)"
    assert rows["median size"] == f"{math.exp(-2.0):.3g}" and rows["mean opacity"] == "0.500"
    # mean λ per group: (1..7).mean() = 4 times 1..5
    assert rows["uncertainty"] == "yes (mean λ mean 4, scale 8, rotation 12, opacity 16, color 20)"
    assert rows["sidecar"] == "none"
    p0 = write_ply(tmp_path / "t.ply", g)  # no Λ stored
    rows0 = table_rows(CliRunner().invoke(app, ["inspect", str(p0)], env={"COLUMNS": "200"}).stdout)
    assert rows0["uncertainty"] == "no" and rows0["gaussians"] == "7"


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
              "--device", "cpu", "--refine-steps", "5", "--no-uncertainty", "--no-render", "--no-sweep",
              "--no-backdrop", "--no-pixel-confidence")
    assert res.exit_code == 0, res.stderr
    (_, kw), = fake_engines["reconstruct_scene"].calls
    assert without_progress(kw) == {"path": tmp_path / "scene", "out": out, "model": None, "views": [0, 1],
                                    "resolution": (320, 240), "device": "cpu", "refine_steps": 5,
                                    "uncertainty": False, "render": False, "eval_all": False, "video": "mp4",
                                    "anchor": False, "sweep": False, "backdrop": False, "compensation": "auto",
                                    "confidence": False, "drop": False, "anchor_head": "anchor-head-real"}
    assert run("reconstruct", tmp_path / "scene", "--out", out, "--eval-all", "--gif", "--compact-ply",
               "--compensate", "off").exit_code == 0
    kw = fake_engines["reconstruct_scene"].calls[-1][1]
    assert kw["eval_all"] is True and kw["video"] == "gif" and kw["ply_layout"] == "compact"
    assert kw["compensation"] == "off"
    # the defaults: a short plain refine after the photometric depth correction
    assert kw["refine_steps"] == 15 and kw["anchor"] is False and kw["sweep"] is True and kw["backdrop"] is True
    assert kw["confidence"] is True and kw["drop"] is False
    assert run("reconstruct", tmp_path / "scene", "--out", out, "--anchor", "--drop-contradicted").exit_code == 0
    assert fake_engines["reconstruct_scene"].calls[-1][1]["anchor"] is True
    assert fake_engines["reconstruct_scene"].calls[-1][1]["drop"] is True
    assert run("reconstruct", tmp_path / "scene", "--out", out, "--anchor", "--anchor-head", "none").exit_code == 0
    assert fake_engines["reconstruct_scene"].calls[-1][1]["anchor_head"] == "none"
    n = len(fake_engines["reconstruct_scene"].calls)
    res = run("reconstruct", tmp_path / "scene", "--out", out, "--anchor-head", tmp_path / "nope.safetensors")
    assert_one_line_error(res, "anchor head weights not found", "--anchor-head none")
    assert len(fake_engines["reconstruct_scene"].calls) == n  # refused before any work


def test_refine_render_train_eval_synth_dispatch(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    assert run("refine", p, "--steps", "7", "--optimizer", "lm").exit_code == 0
    (_, kw), = fake_engines["refine_splat"].calls
    assert kw["out"] == tmp_path / "s.refined.ply" and kw["steps"] == 7 and kw["optimizer"] == "lm"
    assert kw["uncertainty"] is True and kw["compensation"] == "auto" and kw["drop"] is False
    assert kw["anchor_head"] == "anchor-head-real"
    assert_one_line_error(run("refine", p, "--anchor-head", "no-such-head"), "anchor head weights not found")
    assert run("refine", p, "--in-place", "--compensate", "on", "--drop-contradicted").exit_code == 0
    assert fake_engines["refine_splat"].calls[-1][1]["compensation"] == "on"
    assert fake_engines["refine_splat"].calls[-1][1]["drop"] is True
    assert fake_engines["refine_splat"].calls[-1][1]["out"] == p

    assert run("render", p, "--path", "orbit", "--frames", "3").exit_code == 0
    (_, kw), = fake_engines["render_splat"].calls
    assert without_progress(kw) == {"ply": p, "out": tmp_path / "s_renders", "path": "orbit", "frames": 3,
                                    "video": False}
    assert run("render", p, "--video").exit_code == 0
    assert fake_engines["render_splat"].calls[-1][1]["video"] is True  # MP4
    assert run("render", p, "--gif").exit_code == 0
    assert fake_engines["render_splat"].calls[-1][1]["video"] == "gif"

    res = run("train", "--data", "synthetic", "--stage", "ff", "--steps", "3", "--out", tmp_path / "run",
              "--outliers", "0.25", "--lr", "0.001")
    assert res.exit_code == 0, res.stderr
    (_, kw), = fake_engines["train_main"].calls
    assert kw["data"] == "synthetic" and kw["stage"] == "ff" and kw["steps"] == 3 and kw["outliers"] == 0.25
    from diff3r_cli.train.config import TrainConfig

    # omitted options are the trainer's own defaults (one set, TrainConfig())
    assert kw["lr"] == 0.001 and kw["seed"] == TrainConfig().seed and kw["inner_steps"] == TrainConfig().inner.steps
    assert "warmup" not in kw and "view_sampler" not in kw  # derived by the trainer when omitted
    assert "lam_floor" not in kw  # omitted: the model keeps its own

    fake_engines["evaluate_main"].result = {"psnr": 20.5}
    res = run("eval", "--data-root", tmp_path, "--tto-steps", "0,10", "--json", tmp_path / "ev.json")
    assert res.exit_code == 0, res.stderr
    kw = fake_engines["evaluate_main"].calls[0][1]
    assert kw["tto_steps"] == [0, 10] and kw["json_out"] == tmp_path / "ev.json"
    assert kw["confidence"] == "unc" and kw["drop"] is False  # weights on, no dropping (README: paired runs)
    assert kw["anchor_head"] == "anchor-head-real"
    assert_one_line_error(run("eval", "--data-root", tmp_path, "--anchor-head", "no-such-head"),
                          "anchor head weights not found")
    assert len(fake_engines["evaluate_main"].calls) == 1

    res = run("data", "synth", "--out", tmp_path / "ds", "--scenes", "2", "--frames", "4", "--resolution", "32")
    assert res.exit_code == 0, res.stderr
    (args, kw), = fake_engines["generate_dataset"].calls
    assert args == (tmp_path / "ds",) and kw["scenes"] == 2 and kw["frames"] == 4 and kw["resolution"] == 32 and kw["progress"] is True


def test_engine_errors_become_one_line(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    fake_engines["refine_splat"].exc = NumericalError("energy became NaN at step 12")
    assert_one_line_error(run("refine", p), "NaN at step 12")
    fake_engines["refine_splat"].exc = UserError("image file not found", tmp_path / "a.png", "pass --images")
    assert_one_line_error(run("refine", p), str(tmp_path / "a.png"), "--images")
    assert tree(tmp_path) == {"s.ply"}


def test_results_are_presented_as_before(tmp_path, fake_engines):
    """The typed results are printed as the key/value tables the dict-returning engines printed."""
    make_transforms(tmp_path / "scene", 2)
    res = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "scene"), "--out", str(tmp_path / "x.ply")],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [ln.rstrip().split(None, 1) for ln in res.stdout.strip().splitlines()]
    assert rows == [["gaussians", "123"], ["views", "2 context (0,2), 1 interpolation, 2 extrapolation"],
                    ["resolution", "64x48"], ["depth_range", "0.512..12.5 (scene)"], ["device", "cpu"],
                    ["load_s", "0.12"], ["predict_s", "4.57"], ["refine_s", "0"], ["ply", "x.ply"],
                    ["psnr_context", "21.23"], ["context_views", "0,2"], ["video", str(Path("r/path.mp4"))],
                    ["renders", "r"], ["frames", "6"], ["total_s", "7.89"]]
    p = small_ply(tmp_path / "s.ply")
    res = CliRunner().invoke(app, ["refine", str(p)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [ln.rstrip().split(None, 1) for ln in res.stdout.strip().splitlines()]
    assert rows == [["steps_run", "7"], ["energy", "0.012346 -> 0.0045678"],
                    ["context_psnr", "21.76 -> 31.76 dB"], ["time_s", "3.14"], ["ply", "s.refined.ply"]]
    res = CliRunner().invoke(app, ["render", str(p)], env={"COLUMNS": "200"})
    assert [ln.rstrip().split(None, 1) for ln in res.stdout.strip().splitlines()] == [["renders", "r"], ["frames", "3"]]


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


def test_reconstruct_fewer_than_two_views(tmp_path):
    """End to end through the real engine: the input is refused before any model loads."""
    make_transforms(tmp_path / "one", 1)
    res = run("reconstruct", tmp_path / "one", "--out", tmp_path / "o.ply", "--no-render")
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


def test_reconstruct_refuses_a_ply_as_input(tmp_path, fake_engines):
    p = small_ply(tmp_path / "s.ply")
    assert_one_line_error(run("reconstruct", p, "--out", tmp_path / "o.ply"), str(p), "refine")
    assert not fake_engines["reconstruct_scene"].calls


def test_openmp_policy_is_set_by_the_cli_entry_not_by_importing_the_package():
    """Importing diff3r_cli (or its CLI package) changes nothing in the process; the CLI entry sets
    OMP_WAIT_POLICY=PASSIVE before torch is imported, and a user's own value wins."""
    code = ("import os, sys\n"
            "import diff3r_cli, diff3r_cli.cli\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
            "seen = []\n"
            "import builtins\n"
            "real = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'torch' and not seen:\n"
            "        seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = spy\n"
            "try:\n"
            "    diff3r_cli.cli.main(['--version'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(seen[0], os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "None False"         # no side effect, no torch on import
    assert lines[-1] == "PASSIVE PASSIVE"   # set before the first `import torch`
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip().splitlines()[-1] == "ACTIVE ACTIVE"


def test_rich_progress_adapter_shows_steps_and_the_optimiser(capsys):
    from diff3r_cli.cli.progress import RichProgress
    from diff3r_cli.engines.progress import ProgressEvent as E

    with RichProgress() as p:
        p(E("begin", "load model"))
        p(E("end", "load model"))
        p(E("begin", "render views", 4))
        p(E("advance", "render views", 4, 4))
        p(E("end", "render views", 4))
        p(E("optimize", "refine (adam)", 5))
        for k in range(6):
            p(E("iterate", n=k, energy=1.0 / (k + 1)))
        p(E("optimized", "refine (adam)", 5))
        p(E("begin", "write"))
        p(E("end", "write"))
    err = capsys.readouterr().err
    assert "load model" in err and "render views" in err and "4/4" in err and "write" in err
    assert "refine (adam)" in err and "5/5" in err and "E=0.16667" in err  # capped at the total
    assert p.steps is None and p.opt is None  # every display closed

    with pytest.raises(RuntimeError):
        with RichProgress() as p:
            p(E("begin", "predict"))
            raise RuntimeError("boom")
    assert "predict" not in capsys.readouterr().err  # an error leaves only its own one-line message
    with pytest.raises(KeyboardInterrupt):
        with RichProgress() as p:
            p(E("optimize", "refine (lm)", 9))
            p(E("iterate", n=3, energy=0.5))
            raise KeyboardInterrupt
    assert "3/9" in capsys.readouterr().err  # an interrupt keeps the bar: how far it got
