"""The `diff3r` command line: a thin Typer app that parses options, calls a library function,
and prints the result.

Every subcommand runs inside one error wrapper: a UserError (bad input, with the file and
the fix) or a NumericalError becomes one line ``error: ...`` on stderr and exit status 2,
never a traceback. SIGINT/SIGTERM become ``error: interrupted (SIGxxx)`` and exit
130/143 after temporary files are removed (diff3r_cli.interrupts). Engines are imported lazily inside each command, so `--help` and
`inspect` stay fast and a subcommand whose engine does not exist yet says so (exit 2)
instead of pretending.

Engine contract (keyword arguments each command passes; the engine may return a dict of
figures/paths, which is printed as a key/value table):

- reconstruct -> diff3r_cli.pipeline.reconstruct_command(path, out, model, views: list[int]|None,
  resolution: (W,H)|None, device: "auto"|"cpu"|"cuda", refine_steps, uncertainty: bool, render: bool,
  eval_all: bool, video: "mp4"|"gif"[, ply_layout="compact" only with --compact-ply])
- refine -> diff3r_cli.pipeline.refine_command(ply, steps, optimizer: "adam"|"lm", uncertainty: bool,
  images: Path|None, out: Path[, ply_layout])   (out == ply for --in-place; the .ply was already validated)
- render -> diff3r_cli.pipeline.render_command(ply, out: Path (folder), path: "interpolate"|"orbit"|"input",
  frames, video: False|True (MP4)|"gif")
- view -> diff3r_cli.viewer.view_command(ply, host, port)   (serves until interrupted)
- train -> diff3r_cli.train.train_main(data, data_root, stage, steps, resolution, batch, out, resume, init,
  outliers[, model_size, lr, inner_steps, seed only when given])
- eval -> diff3r_cli.evaluate.evaluate_main(data_root, data, model, ff_model, tto_steps: list[int], outliers,
  limit, device) -> dict (printed as JSON with --json)
- data synth -> diff3r_cli.data.synth.generate_dataset(out, scenes=, frames=, resolution=, seed=, split=,
  progress=True)
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from diff3r_cli import __version__
from diff3r_cli.errors import NotBuiltError, NumericalError, UserError
from diff3r_cli.render import ENV_BACKEND

app = typer.Typer(
    name="diff3r",
    help=("Feed-forward 3D Gaussian Splatting with uncertainty-aware test-time optimization (Diff3R).\n\n"
          "Typical use: [bold]diff3r reconstruct ./images --out scene.ply[/bold], then "
          "[bold]diff3r refine scene.ply[/bold] and [bold]diff3r render scene.ply[/bold]."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # unexpected errors are handled in main()
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Datasets: generate synthetic RE10K-format training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# --- error handling ------------------------------------------------------------------------

def _fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit. Plain print: Rich would wrap long lines."""
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _guarded(fn: Callable) -> Callable:
    """Run a command; UserError/NumericalError -> one-line message, exit 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _fail(e.one_line())
        except NumericalError as e:
            _fail(f"numerical failure: {e} — try fewer steps, --optimizer adam, or a smaller learning rate")
        except KeyboardInterrupt as e:
            from diff3r_cli.interrupts import exit_code, remove_temps, signal_name

            remove_temps()
            _fail(f"interrupted ({signal_name(e)})", exit_code(e))
    return wrapper


def _engine(command: str, module: str, name: str) -> Callable:
    """Import ``module.name`` lazily; NotBuiltError when that engine does not exist yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        # only the engine module itself missing means "not built"; a missing dependency
        # *inside* an existing engine is a real error and must surface
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise NotBuiltError(f"`diff3r {command}` is not built yet ({module}.{name} does not exist)",
                                None, "this build of diff3r cannot run it; see the README for what is available") from None
        raise
    fn = getattr(mod, name, None)
    if fn is None:
        raise NotBuiltError(f"`diff3r {command}` is not built yet ({module}.{name} does not exist)",
                            None, "this build of diff3r cannot run it; see the README for what is available")
    return fn


# --- small parsers and checks (shared by the commands) -------------------------------------

def _require_exists(path: Path, what: str = "input") -> Path:
    if not path.exists():
        raise UserError(f"{what} does not exist", path, "check the path")
    return path


def _check_output_file(path: Path) -> Path:
    """Fail early (before minutes of work) when an output file cannot be written."""
    if path.exists() and path.is_dir():
        raise UserError("output is a directory, expected a file path", path, "pass a file name, e.g. scene.ply")
    _check_writable_ancestor(path.parent, path)
    return path


def _check_output_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError("output exists and is not a directory", path, "pass a directory path")
    _check_writable_ancestor(path, path)
    return path


def _check_writable_ancestor(folder: Path, reported: Path) -> None:
    p = Path(os.path.abspath(folder))
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot create the output: {p} is a file, not a directory", reported,
                        "choose an output path in a writable directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {p} (permission denied)", reported,
                        "choose an output path in a writable directory")
    # os.access says yes for root on /proc, /sys and read-only mounts: try a real file there
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".diff3r-probe.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write into {p} ({e.strerror or e})", reported,
                        "choose an output path in a writable directory") from None


def _preflight_input(path: Path) -> None:
    """Recognise the input format before any model loads (cheap: no images decoded)."""
    try:
        from diff3r_cli.scene_io import detect_format
    except ImportError:
        return  # readers not built: the engine reports it
    if detect_format(path) == "ply":
        raise UserError("this is already a splat, not an input dataset", path,
                        "use `diff3r refine` or `diff3r render` on it")


def _parse_int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """'0,3,5' -> [0, 3, 5]; None stays None."""
    if text is None:
        return None
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UserError(f"{option} expects comma-separated integers, got {text!r}", None,
                        f"e.g. {option} 0,1") from None
    if not vals or any(v < 0 for v in vals):
        raise UserError(f"{option} expects non-negative integers, got {text!r}", None, f"e.g. {option} 0,1")
    dups = sorted({v for v in vals if vals.count(v) > 1})
    if dups:
        raise UserError(f"{option} lists {', '.join(map(str, dups))} more than once ({text!r})", None,
                        f"give each value once, e.g. {option} {','.join(map(str, sorted(set(vals))))}")
    return vals


MIN_RESOLUTION = 32  # the encoder downsamples by 16; below two cells per side there is no cost volume


def _parse_resolution(text: Optional[str]) -> Optional[int | tuple[int, int]]:
    """'256' -> 256 (the short side, native aspect); '320x240' -> (width 320, height 240)."""
    if text is None:
        return None
    try:
        parts = [int(t) for t in text.lower().split("x")]
        w, h = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        if len(parts) > 2 or w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--resolution expects N or WxH (positive integers), got {text!r}", None,
                        "e.g. --resolution 256 or --resolution 320x256") from None
    if min(w, h) < MIN_RESOLUTION:
        raise UserError(f"--resolution {text} is too small: the predictor needs at least {MIN_RESOLUTION} pixels "
                        "per side", None, "e.g. --resolution 256 or --resolution 320x256")
    return w if len(parts) == 1 else (w, h)


def _print_result(result: Any) -> None:
    """Print what an engine returned (a dict of figures/paths) as aligned key: value lines."""
    if result is None:
        return
    if isinstance(result, dict):
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, box=None)
        for k, v in result.items():
            t.add_row(f"[bold]{k}[/bold]", f"{v:.4g}" if isinstance(v, float) else str(v))
        Console().print(t)
    else:
        print(result)


# --- enums (choices) -----------------------------------------------------------------------

class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Optimizer(str, Enum):
    adam = "adam"
    lm = "lm"


class PathKind(str, Enum):
    interpolate = "interpolate"
    orbit = "orbit"
    input = "input"


class DataKind(str, Enum):
    re10k = "re10k"
    synthetic = "synthetic"


class Stage(str, Enum):
    ff = "ff"
    diff3r = "diff3r"


class Split(str, Enum):
    train = "train"
    test = "test"


def _version(value: bool) -> None:
    if value:
        print(f"diff3r {__version__}")
        raise typer.Exit()


class RenderBackend(str, Enum):
    auto = "auto"
    cpu = "cpu"
    torch = "torch"
    gsplat = "gsplat"


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          backend: Annotated[RenderBackend, typer.Option(
              "--backend", help="Rasterizer for every command: auto = gsplat on CUDA, the compiled C++ "
                                "kernel on the CPU (torch if it cannot be built); cpu, torch or gsplat to "
                                "force one. Same as DIFF3R_RENDER_BACKEND.")] = RenderBackend.auto) -> None:
    """Feed-forward 3D Gaussian Splatting with uncertainty-aware test-time optimization."""
    if backend != RenderBackend.auto:
        # render(backend="auto") reads the variable, so every engine (and DDP workers, which
        # inherit the environment) uses the chosen rasterizer.
        os.environ[ENV_BACKEND] = backend.value


# --- reconstruct ---------------------------------------------------------------------------

@app.command()
@_guarded
def reconstruct(
    path: Annotated[Path, typer.Argument(help="Input: a folder of images (posed by SfM), a COLMAP dataset, "
                                              "a transforms.json (or its folder), or an RE10K root/chunk.",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output splat (.ply); a sidecar <stem>.json with "
                                                          "cameras and image paths is written next to it.")] = Path("scene.ply"),
    model: Annotated[Optional[str], typer.Option(help="Bundled model name or path to a .safetensors "
                                                      "checkpoint. Default: the bundled default model.")] = None,
    views: Annotated[Optional[str], typer.Option(help="Comma-separated view indices to use as context, "
                                                      "e.g. 0,5 (at least 2, each once). Default: the input's "
                                                      "own context hint, else the most central camera and its "
                                                      "2 nearest neighbours.")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="Working resolution: N = the short side at the "
                                                           "images' own aspect ratio (sides cropped to a multiple "
                                                           "of 16), or WxH (scaled to cover, centre-cropped); "
                                                           "intrinsics follow exactly; at least 32. Default: the "
                                                           "native aspect ratio, long side capped at 256.")] = None,
    device: Annotated[Device, typer.Option(help="Where to run: auto picks CUDA when available.")] = Device.auto,
    refine_steps: Annotated[int, typer.Option(min=0, help="Uncertainty-weighted test-time optimization steps "
                                                          "after prediction (0 = none).")] = 0,
    no_uncertainty: Annotated[bool, typer.Option("--no-uncertainty", help="Refine without the predicted "
                                                 "uncertainty (plain TTO) and do not store it in the .ply.")] = False,
    render: Annotated[bool, typer.Option("--render/--no-render", help="Also render into <stem>_renders/: "
                                                                      "the context views, the unseen views between "
                                                                      "or near them (psnr_interp), and a camera path "
                                                                      "(PNG frames + path.mp4).")] = True,
    eval_all: Annotated[bool, typer.Option("--eval-all", help="Also render every other input view (far from the "
                                                              "context cameras) and report psnr_extrap.")] = False,
    gif: Annotated[bool, typer.Option("--gif", help="Write the camera path as path.gif instead of "
                                                    "path.mp4.")] = False,
    compact_ply: Annotated[bool, typer.Option("--compact-ply", help="Store SH at its own degree with Λ in the "
                                              "vertex element (smaller; the reference SIBR viewer cannot read it). "
                                              "Default: the 62-property layout every viewer reads.")] = False,
) -> None:
    """Predict a 3DGS scene from posed (or SfM-posed) images in one network pass.

    Writes OUT (a standard 3DGS .ply every splat viewer reads; the uncertainty Λ rides in a separate element that viewers skip) and its sidecar .json, then optionally refines and renders (see --render). Needs at least 2 views.
    """
    _require_exists(path)
    _check_output_file(out)
    if out.suffix.lower() != ".ply":
        raise UserError("output must end in .ply", out, "e.g. --out scene.ply")
    _preflight_input(path)
    fn = _engine("reconstruct", "diff3r_cli.pipeline", "reconstruct_command")
    _print_result(fn(path=path, out=out, model=model, views=_parse_int_list(views, "--views"),
                     resolution=_parse_resolution(resolution), device=device.value, refine_steps=refine_steps,
                     uncertainty=not no_uncertainty, render=render, eval_all=eval_all,
                     video="gif" if gif else "mp4", **({"ply_layout": "compact"} if compact_ply else {})))


# --- refine --------------------------------------------------------------------------------

@app.command()
@_guarded
def refine(
    ply: Annotated[Path, typer.Argument(help="A .ply written by `diff3r reconstruct` (its sidecar .json "
                                             "gives the input views and cameras).", show_default=False)],
    steps: Annotated[int, typer.Option(min=1, help="Optimization steps (at the scene's saved resolution; "
                                                   "Ctrl-C writes the best iterate so far, marked partial).")] = 200,
    optimizer: Annotated[Optimizer, typer.Option(help="adam (first order) or lm (Gauss-Newton / "
                                                      "Levenberg-Marquardt with PCG).")] = Optimizer.adam,
    no_uncertainty: Annotated[bool, typer.Option("--no-uncertainty", help="Ignore the stored uncertainty "
                                                 "weights (plain TTO, no proximal anchor).")] = False,
    images: Annotated[Optional[Path], typer.Option(help="Folder holding the input images, used when the "
                                                        "saved network inputs (<stem>_inputs/) are gone and the "
                                                        "images moved since reconstruct. Default: the sidecar's "
                                                        "paths.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .ply. Default: "
                                                                    "<stem>.refined.ply next to the input.")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Overwrite the input .ply (atomically).")] = False,
    compact_ply: Annotated[bool, typer.Option("--compact-ply", help="Store SH at its own degree with Λ in the "
                                              "vertex element (smaller; SIBR cannot read it).")] = False,
) -> None:
    """Refine a predicted scene on its input views by uncertainty-weighted test-time optimization.

    Minimises the photometric error on the context views plus the proximal term ½Σλ‖θ−θ0‖² (λ read from the .ply); writes the refined .ply and its sidecar.
    """
    from diff3r_cli.ply import read_ply

    if in_place and out is not None:
        raise UserError("--in-place and --out are mutually exclusive", None, "pass only one of them")
    read_ply(_require_exists(ply, ".ply"))  # validate before loading any engine
    if images is not None:
        _require_exists(images, "images folder")
    dest = ply if in_place else (out if out is not None else ply.with_name(ply.stem + ".refined.ply"))
    _check_output_file(dest)
    fn = _engine("refine", "diff3r_cli.pipeline", "refine_command")
    _print_result(fn(ply=ply, steps=steps, optimizer=optimizer.value, uncertainty=not no_uncertainty,
                     images=images, out=dest, **({"ply_layout": "compact"} if compact_ply else {})))


# --- render --------------------------------------------------------------------------------

@app.command("render")
@_guarded
def render_cmd(
    ply: Annotated[Path, typer.Argument(help="A .ply (its sidecar .json gives the cameras).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder for PNG frames. "
                                                                    "Default: <stem>_renders/ next to the .ply.")] = None,
    path: Annotated[PathKind, typer.Option("--path", help="Camera path: interpolate between the input "
                                                          "cameras, orbit around the scene, or the input views.")] = PathKind.interpolate,
    frames: Annotated[int, typer.Option(min=1, help="Number of frames (ignored for --path input).")] = 60,
    video: Annotated[bool, typer.Option("--video", help="Also encode the frames as path.mp4 (H.264) "
                                                        "in the output folder.")] = False,
    gif: Annotated[bool, typer.Option("--gif", help="Also write the frames as path.gif.")] = False,
) -> None:
    """Render novel views of a .ply along a camera path into PNG frames (and optionally a video)."""
    from diff3r_cli.ply import read_ply

    read_ply(_require_exists(ply, ".ply"))
    dest = out if out is not None else ply.with_name(ply.stem + "_renders")
    _check_output_dir(dest)
    fn = _engine("render", "diff3r_cli.pipeline", "render_command")
    if video and gif:
        raise UserError("--video and --gif are mutually exclusive", None, "pass only one of them")
    _print_result(fn(ply=ply, out=dest, path=path.value, frames=frames, video="gif" if gif else video))


# --- view ----------------------------------------------------------------------------------

@app.command()
@_guarded
def view(
    ply: Annotated[Path, typer.Argument(help="A splat .ply (its sidecar .json, when present, adds the input "
                                             "cameras and their images).", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on. The default serves this machine only; "
                                           "0.0.0.0 lets others on the network see the scene.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (the next free one is taken when it is "
                                                             "busy; 0 = any free port).")] = 8080,
) -> None:
    """Open an interactive viewer in the browser (viser): the splats, the input cameras with their images,
    colouring by the predicted uncertainty Λ per group, and a button that saves the current view as a PNG.

    Prints the local URL and serves until Ctrl-C.
    """
    from diff3r_cli.ply import read_ply

    read_ply(_require_exists(ply, ".ply"))  # validate before starting a server
    fn = _engine("view", "diff3r_cli.viewer", "view_command")
    fn(ply=ply, host=host, port=port)


# --- train ---------------------------------------------------------------------------------

@app.command()
@_guarded
def train(
    data: Annotated[DataKind, typer.Option(help="Training data: RE10K-format chunks (re10k) or the "
                                                "synthetic generator's output (synthetic).")] = DataKind.re10k,
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset root holding train/ and test/ "
                                                           "(RE10K layout).")] = None,
    stage: Annotated[Stage, typer.Option(help="ff: train the feed-forward predictor alone; diff3r: train "
                                              "through the optimization layer (usually with --init).")] = Stage.diff3r,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 20000,
    resolution: Annotated[int, typer.Option(min=16, help="Short side of the training images; each scene keeps "
                                                         "its aspect ratio (batches grouped by size).")] = 256,
    batch: Annotated[int, typer.Option(min=1, help="Scenes per step (per process under torchrun).")] = 4,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, logs.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Initial weights (e.g. a stage-ff checkpoint).")] = None,
    outliers: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability of corrupting a context "
                                                                   "view with outliers (targets stay clean).")] = 0.0,
    model_size: Annotated[Optional[str], typer.Option(help="Predictor size: small or base. "
                                                           "Default: the trainer's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate. Default: the trainer's.")] = None,
    inner_steps: Annotated[Optional[int], typer.Option(help="TTO steps inside the layer (stage diff3r). "
                                                            "Default: the trainer's.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed. Default: the trainer's.")] = None,
    lam_lr: Annotated[Optional[float], typer.Option(help="Learning rate of Λ's per-group log-scale. "
                                                         "Default: the trainer's.")] = None,
    ff_weight: Annotated[Optional[float], typer.Option(help="Stage diff3r: weight of the feed-forward loss on θ0 "
                                                            "added to the loss on θ*. Default: the trainer's.")] = None,
    pcg_max_iter: Annotated[Optional[int], typer.Option(help="Stage diff3r: PCG iteration cap of the IFT "
                                                             "backward. Default: the trainer's.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up steps of the cosine schedule.")] = None,
    ckpt_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps (and on Ctrl-C).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate target-view PSNR on the test split every "
                                                           "N steps (0 = never).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per process (1 is fastest on a busy "
                                                        "CPU).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop with a checkpoint after this many seconds "
                                                             "(resume later with --resume).")] = None,
    view_sampler: Annotated[Optional[str], typer.Option(help="Context pairs: angle (15-30 deg apart with shared "
                                                             "content, else by frame gap; real sequences) or gap "
                                                             "(by frame gap). Default: angle for re10k, gap for "
                                                             "synthetic.")] = None,
) -> None:
    """Train the predictor (multi-GPU: torchrun --nproc_per_node K -m diff3r_cli train ...).

    Writes OUT/log.jsonl (metrics, time per step), OUT/ckpt-*.{safetensors,pt}, OUT/model.safetensors; Ctrl-C checkpoints, --resume continues exactly.
    """
    if data_root is not None:
        _require_exists(data_root, "data root")
    if init is not None:
        _require_exists(init, "--init checkpoint")
    _check_output_dir(out)
    fn = _engine("train", "diff3r_cli.train", "train_main")
    extra = {k: v for k, v in dict(model_size=model_size, lr=lr, inner_steps=inner_steps, seed=seed, lam_lr=lam_lr,
                                   ff_weight=ff_weight, pcg_max_iter=pcg_max_iter, warmup=warmup,
                                   ckpt_every=ckpt_every, eval_every=eval_every, threads=threads,
                                   time_limit=time_limit, view_sampler=view_sampler).items()
             if v is not None}  # let the trainer's own defaults stand
    result = fn(data=data.value, data_root=data_root, stage=stage.value, steps=steps, resolution=resolution,
                batch=batch, out=out, resume=resume, init=init, outliers=outliers, **extra)
    _print_result(result)
    if isinstance(result, dict) and result.get("status") == "interrupted":
        # the checkpoint is written; a script must still see that the run did not finish
        import signal as _signal

        signum = int(result.get("signal") or _signal.SIGINT)
        _fail(f"interrupted ({_signal.Signals(signum).name}) after the checkpoint at step {result.get('step')}; "
              f"continue with --resume --out {out}", 128 + signum)


# --- eval ----------------------------------------------------------------------------------

@app.command("eval")
@_guarded
def eval_cmd(
    data_root: Annotated[Path, typer.Option(help="Dataset root with a test/ split (RE10K layout).",
                                            show_default=False)],
    data: Annotated[DataKind, typer.Option(help="Dataset kind (re10k or synthetic).")] = DataKind.re10k,
    model: Annotated[Optional[str], typer.Option(help="Diff3R model (bundled name or checkpoint). "
                                                      "Default: the bundled default.")] = None,
    ff_model: Annotated[Optional[str], typer.Option(help="Feed-forward baseline model to compare against "
                                                         "(bundled name or checkpoint). Default: the bundled "
                                                         "ff-small when present.")] = None,
    tto_steps: Annotated[str, typer.Option(help="Comma-separated TTO step counts to evaluate.")] = "0,50,200",
    outliers: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability that a test scene's context "
                                                                   "views get occluders / exposure changes "
                                                                   "(robustness evaluation; targets stay clean).")] = 0.0,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate at most this many test scenes.")] = None,
    resolution: Annotated[Optional[int], typer.Option(min=16, help="Short side; each scene keeps its aspect "
                                                                   "ratio. Default: the model's training resolution.")] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="TTO optimizer.")] = Optimizer.adam,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.auto,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results (summary and "
                                                                    "per-scene rows) to this JSON file.")] = None,
) -> None:
    """Evaluate PSNR/SSIM on held-out target views, after 0..K test-time optimization steps.

    Compares ff (feed-forward baseline), ff+TTO, diff3r, diff3r+TTO with uncertainty and without, on the fixed views of <data-root>/evaluation_index.json; prints a table.
    """
    _require_exists(data_root, "data root")
    steps = _parse_int_list(tto_steps, "--tto-steps")
    if json_out is not None:
        _check_output_file(json_out)
    fn = _engine("eval", "diff3r_cli.evaluate", "evaluate_main")
    result = fn(data_root=data_root, data=data.value, model=model, ff_model=ff_model, tto_steps=steps,
                outliers=outliers, limit=limit, device=device.value, resolution=resolution,
                optimizer=optimizer.value, json_out=json_out)
    if isinstance(result, dict) and "summary" in result:
        from diff3r_cli.evaluate.report import print_summary

        print_summary(result)


# --- data synth ----------------------------------------------------------------------------

@data_app.command("synth")
@_guarded
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset root (RE10K layout: "
                                                          "<out>/<split>/*.torch + index.json).", show_default=False)],
    scenes: Annotated[int, typer.Option(min=1, help="Number of scenes.")] = 100,
    frames: Annotated[int, typer.Option(min=2, help="Frames per scene (24 at 128² keeps 2,000 scenes under an hour on 2 cores; 40 at 256² takes ~5 h).")] = 24,
    resolution: Annotated[int, typer.Option(min=8, help="Image size (square).")] = 128,
    seed: Annotated[int, typer.Option(help="First scene seed (test scenes use a disjoint seed range).")] = 0,
    split: Annotated[Split, typer.Option(help="Which split to write.")] = Split.train,
) -> None:
    """Generate synthetic indoor scenes (exact ray casting) as RE10K-format chunks."""
    _check_output_dir(out)
    fn = _engine("data synth", "diff3r_cli.data.synth", "generate_dataset")
    _print_result(fn(out, scenes=scenes, frames=frames, resolution=resolution, seed=seed, split=split.value,
                     progress=True))


# --- inspect -------------------------------------------------------------------------------

def _fmt_vec(v, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(x):.{digits}g}" for x in v) + ")"


def inspect_ply(path: Path) -> dict:
    """Summary of a splat .ply: counts, SH degree, bounds, uncertainty statistics."""
    from diff3r_cli.gaussians import GROUPS
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import sidecar_path

    g, lam = read_ply(path)
    info: dict[str, Any] = {"format": "ply", "path": str(path), "num_gaussians": g.num,
                            "sh_degree": g.sh_degree, "has_uncertainty": lam is not None}
    if g.num:
        info["bounds"] = {"min": g.means.min(0).values.tolist(), "max": g.means.max(0).values.tolist()}
        info["median_scale"] = float(g.scales.max(1).values.median())
        info["mean_opacity"] = float(g.opacities.mean())
        if lam is not None:
            info["uncertainty_mean"] = {k: float(v) for k, v in zip(GROUPS, lam.mean(0))}
    sc = sidecar_path(path)
    info["sidecar"] = str(sc) if sc.exists() else None
    return info


def inspect_input(path: Path, sfm: bool = False) -> dict:
    """Summary of an input dataset; a bare image folder is listed without running SfM unless sfm."""
    from diff3r_cli.scene_io import detect_format, load_scene

    fmt = detect_format(path)
    if fmt == "ply":
        return inspect_ply(path)
    if fmt == "folder" and not sfm:
        from diff3r_cli.scene_io.images import IMAGE_EXTENSIONS, image_size

        def images_in(d: Path) -> list[Path]:
            return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) if d.is_dir() else []

        files = images_in(path) or images_in(path / "images")  # same rule as detect_format
        views = []
        for p in files:
            w, h = image_size(p)
            views.append({"image": str(p), "width": w, "height": h, "K": None, "w2c": None})
        return {"format": fmt, "posed": False, "note": "unposed (SfM on reconstruct)", "views": views}
    scene = load_scene(path)
    K, w2c, centers = scene.cameras.K, scene.cameras.w2c, scene.cameras.centers
    views = [{"image": str(scene.paths[i]), "width": scene.width, "height": scene.height,
              "K": K[i].tolist(), "w2c": w2c[i].tolist(), "center": centers[i].tolist()}
             for i in range(len(scene))]
    return {"format": scene.format, "posed": True, "views": views}


def _print_inspect(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if info["format"] == "ply":
        t = Table(title=info["path"], show_header=False)
        t.add_row("gaussians", str(info["num_gaussians"]))
        t.add_row("SH degree", str(info["sh_degree"]))
        if "bounds" in info:
            t.add_row("bounds min", _fmt_vec(info["bounds"]["min"]))
            t.add_row("bounds max", _fmt_vec(info["bounds"]["max"]))
            t.add_row("median size", f"{info['median_scale']:.3g}")
            t.add_row("mean opacity", f"{info['mean_opacity']:.3f}")
        unc = info.get("uncertainty_mean")
        t.add_row("uncertainty", "no" if not info["has_uncertainty"] else
                  "yes" + ("" if not unc else " (mean λ " + ", ".join(f"{k} {v:.3g}" for k, v in unc.items()) + ")"))
        t.add_row("sidecar", info.get("sidecar") or "none")
        con.print(t)
        return
    views = info["views"]
    sizes = sorted({(v["width"], v["height"]) for v in views})
    con.print(f"[bold]format[/bold] {info['format']}   [bold]views[/bold] {len(views)}   "
              f"[bold]resolution[/bold] {', '.join(f'{w}x{h}' for w, h in sizes)}")
    if not info.get("posed", True):
        con.print(info.get("note", "unposed"))
        t = Table("#", "image", "size")
        for i, v in enumerate(views):
            t.add_row(str(i), Path(v["image"]).name, f"{v['width']}x{v['height']}")
        con.print(t)
        return
    t = Table("#", "image", "fx", "fy", "cx", "cy", "centre (world)")
    for i, v in enumerate(views):
        K = v["K"]
        t.add_row(str(i), Path(v["image"]).name, f"{K[0][0]:.1f}", f"{K[1][1]:.1f}", f"{K[0][2]:.1f}",
                  f"{K[1][2]:.1f}", _fmt_vec(v["center"]))
    con.print(t)


@app.command()
@_guarded
def inspect(
    path: Annotated[Path, typer.Argument(help="A .ply splat, or an input (image folder, COLMAP dataset, "
                                              "transforms.json, RE10K root).", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    sfm: Annotated[bool, typer.Option("--sfm", help="For a bare image folder, run SfM to show poses "
                                                    "(slow). Default: just list the images.")] = False,
) -> None:
    """Show what diff3r sees in PATH (an input dataset or a .ply).

    For an input: format, views, resolution, intrinsics and camera centres (a bare image folder is listed without SfM unless --sfm). For a .ply: Gaussian count, SH degree, bounds, and whether uncertainty is stored.
    """
    _require_exists(path)
    if path.is_file() and path.suffix.lower() == ".ply":
        info = inspect_ply(path)
    else:
        try:
            info = inspect_input(path, sfm=sfm)
        except ImportError as e:
            if getattr(e, "name", None) and str(e.name).startswith("diff3r_cli"):
                raise NotBuiltError("input readers are not built yet (diff3r_cli.scene_io)", path,
                                    "inspect a .ply instead") from None
            raise
    if json_out:
        print(json.dumps(info, indent=1))
    else:
        _print_inspect(info)


# --- entry point ---------------------------------------------------------------------------

# click's exception base, found through Typer's public BadParameter so it works whether Typer
# bundles click or depends on it
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: run the app; every failure is one line on stderr.

    Bad input and usage errors exit 2; unexpected errors (bugs) exit 1 with one line unless
    DIFF3R_DEBUG=1, which shows the traceback.
    """
    from diff3r_cli.interrupts import exit_code, install, remove_temps, signal_name

    install()  # SIGINT/SIGTERM -> Interrupted: clean-up runs, exit 130/143, no foreign stack traces
    try:
        rc = app(args=argv, prog_name="diff3r", standalone_mode=False)
    except _ClickException as e:  # usage errors: unknown option, bad choice, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `diff3r` / `diff3r data`: show the help
            ctx = getattr(e, "ctx", None)
            print(ctx.get_help() if ctx is not None else e.format_message())
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {' '.join(e.format_message().split())}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:  # outside a command's own handler (e.g. while importing)
        remove_temps()
        print(f"error: interrupted ({signal_name(e)})", file=sys.stderr)
        sys.exit(exit_code(e))
    except typer.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # click turns Ctrl-C in a prompt into Abort
            remove_temps()
            print(f"error: interrupted ({signal_name(e.__context__)})", file=sys.stderr)
            sys.exit(exit_code(e.__context__))
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except (UserError, NumericalError) as e:  # raised outside a command (should not happen)
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a bug, not bad input: keep it short but findable
        if os.environ.get("DIFF3R_DEBUG"):
            traceback.print_exc()
        else:
            print(f"error: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
                  f"(set DIFF3R_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
