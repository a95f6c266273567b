"""`diff3r reconstruct`: posed (or SfM-posed) images -> Gaussians in one network pass, optionally
refined, written as a .ply + sidecar + the network inputs, and rendered.

The steps, each a named function: read the input, choose the context views and the working
size, predict (load model, resample, depth range, network), refine, write, render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.depth.anchor_head import DEFAULT_HEAD
from diff3r_cli.engines.outputs import NamedViews, RenderFolder, save_png, write_renders
from diff3r_cli.engines.progress import ProgressCallback, Reporter
from diff3r_cli.fsio import atomic_dir
from diff3r_cli.gaussians import Gaussians

PATH_FRAMES = 24        # reconstruct's camera path: a 2 s clip at 12 fps (rendering dominates the run time)


@dataclass
class ReconstructResult:
    """What :func:`reconstruct_scene` produced and how long each part took (seconds)."""

    ply: Path
    gaussians: int
    context: list[int]
    interp: list[int]           # unseen views between or near the context cameras
    extrap: list[int]           # every other unseen view
    width: int
    height: int
    near: float
    far: float
    depth_range_from: str
    device: str
    load_s: float
    predict_s: float
    refine_s: float
    total_s: float = 0.0
    renders: Optional[RenderFolder] = None
    compensation: Optional[dict] = None  # the sidecar's "appearance" entry (when refined)


@dataclass
class _Prediction:
    scene: object               # the scene at the working resolution
    gaussians: Gaussians
    lam: torch.Tensor
    near: float
    far: float
    range_from: str
    seconds: float
    sweep_accepted: Optional[float] = None  # share of pixels whose depth the photometric sweep set
    backdrop: int = 0                        # backdrop Gaussians appended last (depth/backdrop.py)


def _read_input(path: Path, report: Reporter):
    """Load the input scene; a bare image folder runs SfM, which shows its own progress."""
    from diff3r_cli.scene_io import detect_format, load_scene

    if detect_format(path) == "folder":
        return load_scene(path, progress=report.enabled)
    with report.step("read images"):
        return load_scene(path)


def _predict(scene, context: list[int], model_path: Path, size: tuple[int, int], dev: torch.device,
             report: Reporter, sweep: bool = True, backdrop: bool = True) -> _Prediction:
    """Load the model, resample the views to the working size, find the depth range, predict, and
    (sweep) take the depth from photometric matching between the context views, the range included
    (diff3r_cli.depth.predict_matched), with the far blurred backdrop behind the scene (backdrop)."""
    from diff3r_cli.depth import predict_matched
    from diff3r_cli.engines.policy import estimate_depth_range
    from diff3r_cli.model.inference import predict_gaussians
    from diff3r_cli.model.io import load_model
    from diff3r_cli.scene_io.images import resize_scene

    with report.step("load model"):
        net = load_model(model_path, device="cpu")
    if (size[0], size[1]) != (scene.width, scene.height):
        with report.step(f"resample {len(scene)} views to {size[0]}x{size[1]}"):
            scene = resize_scene(scene, size[0], size[1])
    with report.step("depth range"):
        near, far, range_src = estimate_depth_range(scene, context, convention=net.cfg.depth_range)
    t0 = time.perf_counter()
    accepted, n_back = None, 0
    if sweep:
        with report.step(f"predict Gaussians from {len(context)} views, depth matched across them"):
            m = predict_matched(net, scene.images[context], scene.cameras[context], near, far, dev,
                                backdrop=backdrop)
        g, lam, accepted, n_back = m.gaussians, m.lam, m.accepted, m.backdrop
        if m.near != near:  # predict_matched re-set the range from the matched depths
            range_src += f"; re-set from matched depths to {m.near:.3g}..{m.far:.3g}"
            near, far = m.near, m.far
    else:
        with report.step(f"predict Gaussians from {len(context)} views"):
            g, lam = predict_gaussians(net, scene.images[context], scene.cameras[context], near, far, dev)
    if getattr(net, "last_scene_scale", 1.0) != 1.0:  # a released backbone ran the scene at its training scale
        range_src += f"; scene x{net.last_scene_scale:.3g} for the checkpoint"
    return _Prediction(scene, g, lam, near, far, range_src, time.perf_counter() - t0, accepted, n_back)


def _write_splat(out: Path, scene, context: list[int], g: Gaussians, lam: Optional[torch.Tensor], info: dict,
                 ply_layout: str, report: Reporter) -> None:
    """The .ply + sidecar, and exactly what the network saw (resized/cropped/undistorted) in
    <stem>_inputs/, so refine re-uses it bit for bit."""
    from diff3r_cli.sidecar import write_splat

    with report.step("write .ply, sidecar and network inputs"):
        inputs_dir = out.with_name(out.stem + "_inputs")
        with atomic_dir(inputs_dir) as tmp:
            for k, i in enumerate(context):
                save_png(tmp / f"context_{k:02d}.png", scene.images[i])
        info["context_images"] = [str(inputs_dir / f"context_{k:02d}.png") for k in range(len(context))]
        write_splat(out, g, lam, info, layout=ply_layout)


def _render(out: Path, scene, context: list[int], interp: list[int], extrap: list[int], g: Gaussians,
            frames: int, video: str, report: Reporter, appearance: Optional[torch.Tensor] = None) -> RenderFolder:
    """<stem>_renders/: context, interpolation (and extrapolation) views with ground truth, and a path.
    appearance: the context views' exposure transforms (compensation), applied to their renders only."""
    from diff3r_cli.engines.render_path import camera_path

    ctx_cams = scene.cameras[context]
    named = {"context": NamedViews(ctx_cams, scene.images[context], context, appearance)}
    if interp:
        named["interp"] = NamedViews(scene.cameras[interp], scene.images[interp], interp)
    if extrap:
        named["extrap"] = NamedViews(scene.cameras[extrap], scene.images[extrap], extrap)
    return write_renders(out.with_name(out.stem + "_renders"), g, camera_path("interpolate", ctx_cams, g, frames),
                         video=video, named=named, report=report)


def reconstruct_scene(path: Path, out: Path, model: Optional[str] = None, views: Optional[list[int]] = None,
                      resolution: Optional[int | tuple[int, int]] = None, device: str = "auto",
                      refine_steps: Optional[int] = None, uncertainty: bool = True, render: bool = True,
                      optimizer: str = "adam", anchor: bool = False,
                      frames: int = PATH_FRAMES, eval_all: bool = False, video: str = "mp4",
                      progress: Optional[ProgressCallback] = None, ply_layout: str = "viewer",
                      sweep: bool = True, compensation: str = "auto", backdrop: bool = True,
                      confidence: bool = True, drop: bool = False,
                      anchor_head: "None | str" = DEFAULT_HEAD) -> ReconstructResult:
    """Load posed images, predict Gaussians, optionally refine, write .ply + sidecar (+ renders).

    resolution: the short side (int, native aspect), (W, H), or None (native, long side capped).
    Renders (render=True): the context views, the unseen views between or near them
    (``split_unseen``), a camera path through the context cameras (PNG frames and path.mp4, or
    path.gif with video="gif", none with video=""); with eval_all also every other unseen view.
    refine_steps: TTO steps on the context views after prediction (None: DEFAULT_REFINE_STEPS; 0: none).
    anchor: anchor that refine to the prediction by Λ (the paper's uncertainty-weighted TTO); default
    plain TTO (see policy.DEFAULT_REFINE_STEPS). uncertainty=False also leaves Λ out of the .ply.
    sweep: correct the predicted depth by a photometric (ZNCC) sweep between the context views
    (diff3r_cli.depth) where matching decides it; the prediction's depth elsewhere. backdrop (with
    sweep): append a far, blurred backdrop that fills what no Gaussian covers (depth/backdrop.py).
    compensation: per-view exposure/white-balance transforms in the refinement ("auto" | "on" |
    "off"); stored in the sidecar (extras.appearance) and applied to the context views' renders
    (their PSNR) only, never baked into the splat. confidence (with anchor): the anchored refine also
    weights each context pixel by how far the other views confirm it, and with ``drop`` starts
    without the Gaussians of contradicted pixels, and ``anchor_head`` re-ranks Λ (``refine_gaussians``).
    """
    from diff3r_cli.engines.policy import (DEFAULT_MODEL, DEFAULT_REFINE_STEPS, context_views, pick_device,
                                           split_unseen, working_resolution)
    from diff3r_cli.engines.refine import refine_gaussians
    from diff3r_cli.model.io import resolve_model_path
    from diff3r_cli.sidecar import scene_info

    t_start = time.perf_counter()
    report = Reporter(progress)
    dev = pick_device(device)
    model_path = resolve_model_path(model or DEFAULT_MODEL)
    t0 = time.perf_counter()
    scene = _read_input(path, report)  # input errors first: they are the user's most likely mistake
    t_load = time.perf_counter() - t0
    context = context_views(scene, views, path)
    size = working_resolution(scene.width, scene.height, resolution)
    p = _predict(scene, context, model_path, size, dev, report, sweep=sweep, backdrop=backdrop)
    scene, g = p.scene, p.gaussians
    t_ref, appearance, comp, dropped, head_used = 0.0, None, None, None, None
    refine_steps = DEFAULT_REFINE_STEPS if refine_steps is None else int(refine_steps)
    if refine_steps > 0:
        from diff3r_cli.optim.appearance import from_sidecar, sidecar_record

        t0 = time.perf_counter()
        g, hist = refine_gaussians(g, p.lam if uncertainty and anchor else None, scene.cameras[context].to(dev),
                                   scene.images[context].to(dev), refine_steps, optimizer, progress=progress,
                                   compensation=compensation, confidence=confidence, drop=drop,
                                   anchor_head=anchor_head)
        if "kept" in hist[-1]:  # Gaussians of contradicted pixels were dropped: their Λ rows go too
            p.lam = p.lam[hist[-1]["kept"].to(p.lam.device)]
            dropped = int((~hist[-1]["kept"]).sum())
        head_used = hist[-1].get("anchor_head")  # the head that re-ranked Λ inside the refine, if any
        t_ref = time.perf_counter() - t0
        comp = sidecar_record(hist[-1])
        appearance = from_sidecar({"extras": {"appearance": comp}})
    g = g.detach().to("cpu")
    held = [i for i in range(len(scene)) if i not in context]
    interp, extrap = split_unseen(scene.cameras, context)
    info = scene_info(scene, context_views=context, model=model_path.stem,
                      extras={"input": str(Path(path).resolve()), "format": scene.format, "near": p.near,
                              "far": p.far, "depth_range_from": p.range_from, "refine_steps": refine_steps,
                              "refine_anchored": bool(refine_steps > 0 and uncertainty and anchor),
                              **({"dropped_contradicted": dropped} if dropped is not None else {}),
                              **({"anchor_head": head_used} if head_used is not None else {}),
                              "uncertainty": uncertainty, "held_out_views": held, "interp_views": interp,
                              "depth_sweep_accepted": p.sweep_accepted, "backdrop_gaussians": p.backdrop,
                              **({"appearance": comp} if comp is not None else {}),
                              **({"frame": scene.extras["frame"]} if scene.extras.get("frame") else {})})
    _write_splat(out, scene, context, g, p.lam.detach().cpu() if uncertainty else None, info, ply_layout, report)
    result = ReconstructResult(out, len(g), context, interp, extrap, scene.width, scene.height, p.near, p.far,
                               p.range_from, str(dev), t_load, p.seconds, t_ref, compensation=comp)
    if render:
        result.renders = _render(out, scene, context, interp, extrap if eval_all else [], g, frames, video, report,
                                 appearance)
    result.total_s = time.perf_counter() - t_start
    return result


__all__ = ["PATH_FRAMES", "ReconstructResult", "reconstruct_scene"]
