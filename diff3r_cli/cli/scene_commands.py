"""The commands on scenes: `reconstruct` (images -> splat), `refine` (TTO of a splat), `render`
(a camera path through a splat) and `view` (the browser viewer). Each checks its paths and
options, calls its engine under a progress display, and prints the engine's result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from diff3r_cli.cli.checks import (check_output_dir, check_output_file, check_splat, parse_int_list,
                                   parse_resolution, preflight_input, require_exists)
from diff3r_cli.cli.guard import guarded
from diff3r_cli.cli.options import Compensation, Device, Optimizer, PathKind
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, require_head
from diff3r_cli.cli.present import print_result
from diff3r_cli.cli.progress import RichProgress
from diff3r_cli.engines.policy import DEFAULT_REFINE_STEPS
from diff3r_cli.errors import UserError

_CompensateOpt = Annotated[Compensation, typer.Option(help="Per-view exposure/white-balance compensation in "
                                                           "refinement (a gain and bias per input view, kept in the "
                                                           "sidecar, not in the splat): auto = when the input views "
                                                           "differ in exposure.")]

_ConfidenceOpt = Annotated[bool, typer.Option("--pixel-confidence/--no-pixel-confidence",
                                              help="With the uncertainty anchor: weight each input pixel by how "
                                                   "far the other input views confirm it (an occluder in one "
                                                   "photo gets a low weight).")]

_DropOpt = Annotated[bool, typer.Option("--drop-contradicted/--keep-contradicted",
                                        help="With --pixel-confidence: also start without the Gaussians of "
                                             "contradicted pixels. Helps photo sets with occluders (people, "
                                             "cars); costs views where only one photo sees a surface.")]

_HeadOpt = Annotated[str, typer.Option("--anchor-head", help="With --pixel-confidence: the learned ranking "
                                       "of the anchor across Gaussians (a bundled name or a .safetensors "
                                       "from benchmarks/fit_anchor_head.py); none = Λ as predicted.")]


@guarded
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
    refine_steps: Annotated[int, typer.Option(min=0, help="Test-time optimization steps on the context views "
                                                          "after prediction (0 = none).")] = DEFAULT_REFINE_STEPS,
    anchor: Annotated[bool, typer.Option("--anchor/--no-anchor", help="Anchor that refine to the prediction by "
                                         "the predicted uncertainty (the paper's uncertainty-weighted TTO), held where only a "
                                         "Gaussian's own photo sees it. Off by default: it pays over 200 steps "
                                         "(real test split +0.28 dB over plain) but not over the default 15 "
                                         "(fox: 21.90 against 22.06 dB unseen).")] = False,
    no_uncertainty: Annotated[bool, typer.Option("--no-uncertainty", help="Do not store the predicted "
                                                 "uncertainty in the .ply (and never anchor by it).")] = False,
    render: Annotated[bool, typer.Option("--render/--no-render", help="Also render into <stem>_renders/: "
                                                                      "the context views, the unseen views between "
                                                                      "or near them (psnr_interp), and a camera path "
                                                                      "(PNG frames + path.mp4).")] = True,
    eval_all: Annotated[bool, typer.Option("--eval-all", help="Also render every other input view (far from the "
                                                              "context cameras) and report psnr_extrap.")] = False,
    gif: Annotated[bool, typer.Option("--gif", help="Write the camera path as path.gif instead of "
                                                    "path.mp4.")] = False,
    sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Correct the predicted depth by photometric "
                                                               "matching (ZNCC plane sweep) between the context "
                                                               "views where the photos decide it.")] = True,
    backdrop: Annotated[bool, typer.Option("--backdrop/--no-backdrop", help="With --sweep: add a far, blurred "
                                                                     "backdrop behind the scene, so unseen views "
                                                                     "show the scene's colour instead of black "
                                                                     "where no Gaussian covers them (part of the "
                                                                     ".ply; --no-backdrop for a bare object).")] = True,
    compact_ply: Annotated[bool, typer.Option("--compact-ply", help="Store SH at its own degree with Λ in the "
                                              "vertex element (smaller; the reference SIBR viewer cannot read it). "
                                              "Default: the 62-property layout every viewer reads.")] = False,
    compensate: _CompensateOpt = Compensation.auto,
    pixel_confidence: _ConfidenceOpt = True,
    drop_contradicted: _DropOpt = False,
    anchor_head: _HeadOpt = DEFAULT_HEAD,
) -> None:
    """Predict a 3DGS scene from posed (or SfM-posed) images in one network pass.

    Writes OUT (a standard 3DGS .ply every splat viewer reads; the uncertainty Λ rides in a separate element that viewers skip) and its sidecar .json, then optionally refines and renders (see --render). Needs at least 2 views.
    """
    from diff3r_cli.cli.present import reconstruct_rows
    from diff3r_cli.engines.reconstruct import reconstruct_scene

    require_exists(path)
    check_output_file(out)
    if out.suffix.lower() != ".ply":
        raise UserError("output must end in .ply", out, "e.g. --out scene.ply")
    preflight_input(path)
    require_head(anchor_head)
    with RichProgress() as progress:
        result = reconstruct_scene(path=path, out=out, model=model, views=parse_int_list(views, "--views"),
                                   resolution=parse_resolution(resolution), device=device.value,
                                   refine_steps=refine_steps, uncertainty=not no_uncertainty, render=render,
                                   anchor=anchor,
                                   eval_all=eval_all, video="gif" if gif else "mp4", progress=progress, sweep=sweep,
                                   backdrop=backdrop, compensation=compensate.value, confidence=pixel_confidence,
                                   drop=drop_contradicted, anchor_head=anchor_head,
                                   **({"ply_layout": "compact"} if compact_ply else {}))
    print_result(reconstruct_rows(result))


@guarded
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
    compensate: _CompensateOpt = Compensation.auto,
    pixel_confidence: _ConfidenceOpt = True,
    drop_contradicted: _DropOpt = False,
    anchor_head: _HeadOpt = DEFAULT_HEAD,
) -> None:
    """Refine a predicted scene on its input views by uncertainty-weighted test-time optimization.

    Minimises the photometric error on the context views plus the proximal term ½Σλ‖θ−θ0‖² (λ read from the .ply); writes the refined .ply and its sidecar.
    """
    from diff3r_cli.cli.present import refine_interrupted_notice, refine_rows
    from diff3r_cli.engines.refine import RefineInterrupted, refine_splat

    if in_place and out is not None:
        raise UserError("--in-place and --out are mutually exclusive", None, "pass only one of them")
    check_splat(ply)  # validate before loading any engine
    if images is not None:
        require_exists(images, "images folder")
    dest = ply if in_place else (out if out is not None else ply.with_name(ply.stem + ".refined.ply"))
    check_output_file(dest)
    require_head(anchor_head)
    try:
        with RichProgress() as progress:
            result = refine_splat(ply=ply, steps=steps, optimizer=optimizer.value, uncertainty=not no_uncertainty,
                                  images=images, out=dest, progress=progress, compensation=compensate.value,
                                  confidence=pixel_confidence, drop=drop_contradicted, anchor_head=anchor_head,
                                  **({"ply_layout": "compact"} if compact_ply else {}))
    except RefineInterrupted as e:
        notice = refine_interrupted_notice(e)
        if notice:
            print(notice, file=sys.stderr, flush=True)
        raise  # the guard reports the interrupt (exit 130/143)
    print_result(refine_rows(result))


@guarded
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
    from diff3r_cli.cli.present import render_rows
    from diff3r_cli.engines.render_path import render_splat

    check_splat(ply)
    dest = out if out is not None else ply.with_name(ply.stem + "_renders")
    check_output_dir(dest)
    if video and gif:
        raise UserError("--video and --gif are mutually exclusive", None, "pass only one of them")
    with RichProgress() as progress:
        result = render_splat(ply=ply, out=dest, path=path.value, frames=frames, video="gif" if gif else video,
                              progress=progress)
    print_result(render_rows(result))


@guarded
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
    from diff3r_cli.viewer import serve_until_interrupted, start_viewer

    check_splat(ply)  # validate before starting a server
    server, url = start_viewer(ply, host=host, port=port)
    print(f"diff3r viewer for {ply}: open {url} in a browser (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}; anyone who can reach this machine can see the scene", flush=True)
    serve_until_interrupted(server)


__all__ = ["reconstruct", "refine", "render_cmd", "view"]
