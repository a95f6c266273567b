"""`diff3r refine`: uncertainty-weighted test-time optimisation of a reconstructed splat.

:func:`refine_gaussians` runs the optimiser (also used by reconstruct's ``--refine-steps``) and
keeps the best iterate seen, so that a Ctrl-C/SIGTERM still yields a result;
:func:`refine_splat` is the whole command: read the .ply and its sidecar, refine, write.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.depth.anchor_head import DEFAULT_HEAD, AnchorHead, resolve_head
from diff3r_cli.engines.progress import ProgressCallback, ProgressEvent, Reporter
from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import Gaussians


class BestIterate:
    """The optimiser's per-step callback: keeps the lowest-energy iterate and reports each step.

    Adam hands every iterate over when asked for snapshots (see :func:`refine_gaussians`); only
    the best one is kept, not the whole history.
    """

    def __init__(self, report: Reporter):
        self.report = report
        self.energy = float("inf")
        self.theta: Optional[torch.Tensor] = None
        self.step = -1

    def __call__(self, rec: dict) -> None:
        theta = rec.pop("theta", None)  # not kept in the history: one copy (the best) is enough
        e = rec.get("energy", float("nan"))
        if theta is not None and math.isfinite(e) and e < self.energy:
            self.energy, self.theta, self.step = e, theta, rec.get("step", 0)
        self.report.emit(ProgressEvent("iterate", n=rec.get("step", 0), energy=e))


class RefineInterrupted(KeyboardInterrupt):
    """A signal stopped refinement; ``best`` is the best iterate so far (None if none was seen).

    It carries the signal's ``signum``/``exit_code`` (130/143 for the CLI) like the interrupt
    it replaces; ``written`` is set by :func:`refine_splat` when it saved ``best`` (marked partial).
    """

    def __init__(self, cause: BaseException, best: Optional[Gaussians], step: int, energy: float, steps: int):
        super().__init__(str(cause))
        self.cause, self.best, self.step, self.energy, self.steps = cause, best, step, energy, steps
        self.signum = getattr(cause, "signum", 2)
        self.exit_code = getattr(cause, "exit_code", 130)
        self.written: Optional[Path] = None
        self.kept: Optional[torch.Tensor] = None  # which Gaussians ``best`` holds (see refine_gaussians)


@dataclass
class RefineResult:
    """What :func:`refine_splat` did: E and the photometric term at θ0 and at the result."""

    ply: Path
    steps_run: int
    energy: tuple[float, float]
    photometric: tuple[float, float]
    time_s: float
    compensation: Optional[dict] = None   # the sidecar's "appearance" entry

    @property
    def context_psnr(self) -> tuple[float, float]:
        """PSNR on the context views before and after, implied by the photometric term."""
        return photometric_psnr(self.photometric[0]), photometric_psnr(self.photometric[1])


def photometric_psnr(photometric: float) -> float:
    """PSNR implied by the TTO energy's photometric term 1/(2P)·Σ‖R−I‖² (3 channels per pixel)."""
    mse = 2.0 * photometric / 3.0
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def refine_gaussians(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
                     steps: int, optimizer: str = "adam", progress: Optional[ProgressCallback] = None,
                     compensation: str = "auto", confidence: bool = False, drop: bool = False,
                     anchor_head: "None | str | AnchorHead" = DEFAULT_HEAD
                     ) -> tuple[Gaussians, list[dict]]:
    """Uncertainty-weighted TTO (lam=None: plain TTO), NaN-guarded; returns (Gaussians, history).

    confidence (with lam, for at least ``depth.consistency.MIN_STEPS`` steps): the context pixels
    weighted by how far the other views confirm them (``depth.consistency.confident_start``); with
    ``drop`` also the Gaussians of contradicted pixels dropped first (an occluder in one photo stays
    out of the scene, but so does a surface only one photo sees: off by default, docs/RESULTS.md "Which photo
    pixels to trust"); with ``drop``, the last history record's "kept" (N,) bool says which of g0's
    Gaussians the result holds (Λ rows follow it). anchor_head (with the confidence): a bundled name,
    a path or a loaded head that re-ranks Λ across the Gaussians (``depth.anchor_head``); None or
    "none": Λ as predicted.

    compensation: per-view exposure/white-balance transforms ("auto": where the context views
    differ in exposure; see optim/appearance.py); the last history record says whether they ran
    ("compensation") and holds them ("appearance", V×6 gain/bias).

    On Ctrl-C/SIGTERM raises RefineInterrupted carrying the best iterate so far (Adam; LM keeps
    no iterates in its callback, so its partial result is None).
    """
    from diff3r_cli.optim.tto import optimize

    report = Reporter(progress)
    cams = cameras.to(g0.device, g0.dtype)
    imgs = images.to(g0.device, g0.dtype)
    # Adam's snapshots hand every iterate to the callback, which keeps only the best one
    extra = {"snapshots": set(range(steps + 1))} if optimizer == "adam" else {}
    weights, kept, reranked = None, None, None
    best = BestIterate(report)
    from diff3r_cli.depth.consistency import MIN_STEPS, confident_start

    try:
        if confidence and lam is not None and steps >= MIN_STEPS and len(cams) > 1:
            head = resolve_head(anchor_head, g0.device)
            with report.step("checking each photo against the other views", 1) as advance:
                g0, lam, weights, kept = confident_start(g0, lam, cams, imgs, drop=drop,
                                                         compensation=compensation, head=head)
                reranked = None if head is None else (anchor_head if isinstance(anchor_head, str) else "custom")
                kept = kept if drop else None  # nothing dropped: no subset for the Λ rows to follow
                advance()
        report.emit(ProgressEvent("optimize", f"refine ({optimizer})", steps))
        g, hist = optimize(g0, lam, cams, imgs, steps, optimizer=optimizer, progress=best, compensation=compensation,
                           pixel_weights=weights, **extra)
    except KeyboardInterrupt as e:
        partial = g0.detach().unflatten(best.theta) if best.theta is not None else None
        err = RefineInterrupted(e, partial, best.step, best.energy, steps)
        err.kept = kept
        raise err from None
    report.emit(ProgressEvent("optimized", f"refine ({optimizer})", steps))
    if not g.is_finite():
        raise NumericalError("refinement produced non-finite Gaussians")
    if kept is not None and hist:
        hist[-1]["kept"] = kept
    if reranked is not None and hist:
        hist[-1]["anchor_head"] = reranked  # which head re-ranked Λ (the .ply keeps the predicted Λ)
    return g, hist


def _refined_info(doc: dict, ply: Path, steps: int, optimizer: str, uncertainty: bool) -> dict:
    """The refined splat's sidecar: the input's, with what refine did added to its extras."""
    info = {k: v for k, v in doc.items() if k != "diff3r_sidecar"}
    info["extras"] = dict(info.get("extras") or {})
    info["extras"].update({"refined_from": str(ply.resolve()), "refine_steps": steps, "optimizer": optimizer,
                           "uncertainty": uncertainty, "partial": False})
    return info


def refine_splat(ply: Path, steps: int = 200, optimizer: str = "adam", uncertainty: bool = True,
                 images: Optional[Path] = None, out: Optional[Path] = None, device: str = "auto",
                 progress: Optional[ProgressCallback] = None, ply_layout: str = "viewer",
                 compensation: str = "auto", confidence: bool = True, drop: bool = False,
                 anchor_head: "None | str" = DEFAULT_HEAD) -> RefineResult:
    """Uncertainty-weighted TTO of a reconstructed .ply on its context views; writes `out` atomically.

    confidence: with the uncertainty, each context pixel weighted by how far the other views confirm
    it; drop: contradicted pixels' Gaussians dropped too; anchor_head: the Λ re-ranking (see
    :func:`refine_gaussians`).

    Works at the scene's saved resolution (the network inputs stored by reconstruct). Ctrl-C or
    SIGTERM writes the best iterate so far to `out` (sidecar extras.partial = true) and raises
    RefineInterrupted with ``written`` set. Per-view exposure transforms (compensation) go to the
    sidecar's extras.appearance, never into the splat colours.
    """
    from diff3r_cli.engines.policy import pick_device
    from diff3r_cli.engines.splat_inputs import context_cameras, context_images
    from diff3r_cli.optim.appearance import sidecar_record
    from diff3r_cli.ply import read_ply
    from diff3r_cli.sidecar import read_sidecar, sidecar_path, write_splat

    ply = Path(ply)
    out = Path(out) if out is not None else ply.with_name(ply.stem + ".refined.ply")
    g0, lam = read_ply(ply)
    doc = read_sidecar(ply)
    sc = sidecar_path(ply)
    cams = context_cameras(doc, sc)
    imgs = context_images(doc, sc, images, cams)
    if len(imgs) != len(cams):
        raise UserError(f"{len(imgs)} images for {len(cams)} context cameras", sc, "pass --images with the input views")
    if uncertainty and lam is None:
        raise UserError("this .ply stores no uncertainty weights", ply, "pass --no-uncertainty for plain TTO")
    dev = pick_device(device)
    g0 = g0.to(dev, torch.float32)
    lam_used = lam.to(dev, torch.float32) if uncertainty else None
    lam_out = lam.cpu() if lam is not None else None  # Λ travels unchanged
    info = _refined_info(doc, ply, steps, optimizer, uncertainty)
    t0 = time.perf_counter()
    try:
        g, hist = refine_gaussians(g0, lam_used, cams, imgs.to(dev), steps, optimizer, progress=progress,
                                   compensation=compensation, confidence=confidence, drop=drop,
                                   anchor_head=anchor_head)
    except RefineInterrupted as e:
        # keep the work done so far: the best iterate, written atomically and marked partial
        if e.best is not None and e.best.is_finite():
            info["extras"].update({"partial": True, "steps_done": e.step, "energy": e.energy})
            if e.kept is not None and lam_out is not None:
                lam_out = lam_out[e.kept.cpu()]
            write_splat(out, e.best.to("cpu"), lam_out, info, layout=ply_layout)
            e.written = out
        raise
    dt = time.perf_counter() - t0
    first, last = hist[0], hist[-1]  # history holds E at θ0 and at every iterate, final included
    info["extras"]["appearance"] = sidecar_record(last)
    if "anchor_head" in last:
        info["extras"]["anchor_head"] = last["anchor_head"]
    if "kept" in last:  # Gaussians of contradicted pixels were dropped: their Λ rows go with them
        info["extras"]["dropped_contradicted"] = int((~last["kept"]).sum())
        lam_out = lam_out[last["kept"].cpu()] if lam_out is not None else None
    write_splat(out, g.to("cpu"), lam_out, info, layout=ply_layout)
    return RefineResult(ply=out, steps_run=len(hist) - 1, energy=(first["energy"], last["energy"]),
                        photometric=(first["photometric"], last["photometric"]), time_s=dt,
                        compensation=info["extras"]["appearance"])


__all__ = ["BestIterate", "RefineInterrupted", "RefineResult", "photometric_psnr", "refine_gaussians",
           "refine_splat"]
