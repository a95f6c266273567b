"""The one evaluation path: predict from context views, optionally TTO, render targets, PSNR/SSIM.

`diff3r eval`, training-time evaluation (diff3r_cli.train.evaluation) and
benchmarks/real_scenes.py all score a tuple of views here, so their numbers mean the same.

A configuration ("run") is (method name, model key, use the predicted Λ?, TTO steps). Each model
predicts once from the context views; each (model, Λ or not) pair runs TTO once, up to its
largest budget, keeping the iterates at the smaller budgets (Adam's path does not depend on the
budget, so this equals separate runs); every configuration's Gaussians then render the target
views, scored one view at a time on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import NumericalError
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.model.inference import predict_gaussians
from diff3r_cli.render import render_images
from diff3r_cli.metrics import SSIM_WINDOW, psnr, ssim

Run = tuple[str, str, bool, int]  # (method, model key, use the predicted Λ, TTO steps)
RENDER_CHUNK = 4  # cameras rendered at once: bounds memory on large target sets


@dataclass
class EvalViews:
    """One evaluation tuple: context views to predict (and refine) from, target views to score."""

    context_images: torch.Tensor  # (V,H,W,3) in [0,1]
    context_K: torch.Tensor       # (V,3,3) pixels
    context_w2c: torch.Tensor     # (V,4,4)
    target_images: torch.Tensor   # (T,H,W,3) in [0,1], same size as the context views
    target_K: torch.Tensor        # (T,3,3)
    target_w2c: torch.Tensor      # (T,4,4)
    near: float
    far: float
    ranges: Optional[dict] = None  # model key -> (near, far) where a model's convention differs
    sweep: bool = False            # correct θ0's depth by the photometric sweep (as `reconstruct` does)
    backdrop: bool = True          # with the sweep: the far blurred backdrop behind the scene (depth/backdrop.py)

    def range_for(self, name: str) -> tuple[float, float]:
        """near/far for the model ``name``."""
        if self.ranges and name in self.ranges:
            return tuple(self.ranges[name])
        return self.near, self.far

    @classmethod
    def from_sample(cls, sample: dict, near: Optional[float] = None, far: Optional[float] = None) -> "EvalViews":
        """From an RE10KDataset example; near/far default to the example's own."""
        return cls(sample["context_images"], sample["context_K"], sample["context_w2c"], sample["target_images"],
                   sample["target_K"], sample["target_w2c"], float(sample["near"] if near is None else near),
                   float(sample["far"] if far is None else far))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every view."""
        h, w = self.context_images.shape[1:3]
        return int(w), int(h)


@dataclass
class ViewScores:
    """One configuration's scores on one tuple."""

    psnr: list[float]              # per target view
    ssim: list[float]              # per target view; empty for images smaller than the SSIM window
    context_psnr: Optional[float]  # mean over the context views re-rendered (None when not asked)
    renders: torch.Tensor          # (T,H,W,3) target renders on the CPU, clamped to [0,1]
    compensated: bool = False      # the TTO ran with per-view exposure transforms

    def means(self) -> dict:
        """{"psnr", "ssim", "context_psnr", "compensated"}: means over the views (the per-scene row of
        `diff3r eval`)."""
        return {"psnr": sum(self.psnr) / len(self.psnr),
                "ssim": sum(self.ssim) / len(self.ssim) if self.ssim else None, "context_psnr": self.context_psnr,
                "compensated": self.compensated}


def predict(model: torch.nn.Module, views: EvalViews, device: torch.device,
            depth_range: Optional[tuple[float, float]] = None
            ) -> tuple[Gaussians, torch.Tensor, tuple[float, float]]:
    """θ0, Λ (N,5) and the (near, far) the final prediction ran with (the depth stage may re-set
    the range) of one model from the context views, without gradients (the one prediction entry);
    depth_range: (near, far) instead of the views' own."""
    w, h = views.size
    cams = Cameras(views.context_K, views.context_w2c, w, h)
    near, far = depth_range if depth_range is not None else (views.near, views.far)
    if views.sweep:
        from diff3r_cli.depth import predict_matched

        m = predict_matched(model, views.context_images, cams, near, far, device, backdrop=views.backdrop)
        return m.gaussians, m.lam, (m.near, m.far)
    g, lam = predict_gaussians(model, views.context_images, cams, near, far, device)
    return g, lam, (near, far)


def tto_states(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor,
               budgets: list[int], optimizer: str = "adam", backend: str = "auto", compensation: str = "off",
               appearance: Optional[dict] = None, pixel_weights: Optional[torch.Tensor] = None
               ) -> dict[int, Gaussians]:
    """Gaussians after each budget of TTO steps (0: θ0 itself). NumericalError propagates.

    compensation: per-view exposure transforms in the TTO ("off" | "on" | "auto", see
    optim/appearance.py); when ``appearance`` is a dict it receives, per budget, the context
    views' transforms (V,6; None where compensation did not run). pixel_weights: (V,H,W)
    confidences of the context pixels (``depth.consistency``).
    """
    from diff3r_cli.optim.tto import optimize

    states: dict[int, Gaussians] = {0: g0}
    app = appearance if appearance is not None else {}
    app[0] = None
    positive = sorted({s for s in budgets if s > 0})
    if not positive:
        return states
    if optimizer == "adam":
        g, hist = optimize(g0, lam, cameras, images, positive[-1], optimizer="adam", snapshots=set(positive),
                           backend=backend, compensation=compensation, pixel_weights=pixel_weights)
        for s in positive:
            states[s] = g0.unflatten(hist[s]["theta"]) if s < len(hist) else g
            app[s] = hist[s].get("appearance") if s < len(hist) else None
        states[positive[-1]] = g
        app[positive[-1]] = hist[-1].get("appearance")
    else:  # LM's iterates depend on the budget (its stopping rule): one run per budget
        for s in positive:
            states[s], hist = optimize(g0, lam, cameras, images, s, optimizer=optimizer, backend=backend,
                                       compensation=compensation, pixel_weights=pixel_weights)
            app[s] = hist[-1].get("appearance")
    return states


def psnr_per_view(pred: torch.Tensor, gt: torch.Tensor) -> list[float]:
    """PSNR (dB) of each view of a (C,H,W,3) stack."""
    return [float(psnr(pred[i], gt[i])) for i in range(len(gt))]


def score(g: Gaussians, views: EvalViews, backend: str = "auto", context: bool = True,
          appearance: Optional[torch.Tensor] = None) -> ViewScores:
    """Render the target views from g and score them (and the context views when ``context``).

    appearance: the context views' exposure transforms (V,6) from a compensated TTO: applied to
    the context renders before their PSNR; target (novel) views always render with the identity.
    """
    w, h = views.size
    pred = render_images(g, Cameras(views.target_K, views.target_w2c, w, h), backend, chunk=RENDER_CHUNK)
    gt = views.target_images.float().cpu()
    ss = [float(ssim(pred[i], gt[i])) for i in range(len(gt))] if min(w, h) >= SSIM_WINDOW else []
    ctx = None
    if context:
        ctx_pred = render_images(g, Cameras(views.context_K, views.context_w2c, w, h), backend, chunk=RENDER_CHUNK)
        if appearance is not None:
            from diff3r_cli.optim.appearance import apply_appearance

            ctx_pred = apply_appearance(ctx_pred, appearance.cpu()).clamp(0, 1)
        ctx_psnr = psnr_per_view(ctx_pred, views.context_images.float().cpu())
        ctx = sum(ctx_psnr) / len(ctx_psnr)
    return ViewScores(psnr_per_view(pred, gt), ss, ctx, pred)


CONFIDENCE_MODES = ("off", "unc", "all")  # which TTO runs get the context pixels' confidences


def _split_confident(groups: dict, confidence: str, min_steps: int) -> dict:
    """(model, unc) -> items becomes (model, unc, confident) -> items: the runs the confidence applies
    to (by ``confidence`` and a budget of at least ``min_steps``) apart from the rest, one TTO each."""
    out: dict = {}
    for (mname, unc), items in groups.items():
        wanted = confidence == "all" or (confidence == "unc" and unc)
        for method, s in items:
            out.setdefault((mname, unc, wanted and s >= min_steps), []).append((method, s))
    return out


def score_runs(models: dict[str, torch.nn.Module], runs: list[Run], views: EvalViews, device: torch.device,
               optimizer: str = "adam", backend: str = "auto", context: bool = True,
               compensation: str = "off", ranges_used: Optional[dict] = None,
               confidence: str = "off", drop: bool = False, anchor_head=None
               ) -> tuple[dict[str, Optional[ViewScores]], int]:
    """Every configuration of ``runs`` on one tuple: ({"<method>@<steps>": scores}, numerical failures).

    A TTO run that fails numerically counts once and leaves None for its configurations with
    steps > 0 (θ0 is still scored). compensation: see :func:`tto_states`. ranges_used: when a dict
    is given, it receives model key -> the (near, far) each model's prediction finally used.
    confidence: which TTO runs weight the context pixels by how far the other views confirm them
    ("unc": the uncertainty-anchored runs, "all", "off"; see ``depth.consistency.confident_start``, with
    ``drop``), for budgets of at least ``depth.consistency.MIN_STEPS`` (smaller budgets run without it,
    in a TTO of their own). anchor_head: with the confidence, the Λ re-ranking of the anchored runs
    (``depth.anchor_head.resolve_head``: a bundled name, a path, a head, or None).
    """
    if confidence not in CONFIDENCE_MODES:
        raise ValueError(f"unknown confidence mode {confidence!r} (use one of {', '.join(CONFIDENCE_MODES)})")
    dev = torch.device(device)
    w, h = views.size
    ctx_images = views.context_images.to(dev)
    ctx_cams = Cameras(views.context_K.to(dev), views.context_w2c.to(dev), w, h)
    preds = {}
    for name, net in models.items():
        g, lam, used = predict(net, views, dev, views.range_for(name))
        preds[name] = (g, lam)
        if ranges_used is not None:
            ranges_used[name] = used
    groups: dict[tuple[str, bool], list[tuple[str, int]]] = {}
    for method, mname, unc, s in runs:
        groups.setdefault((mname, unc), []).append((method, s))
    out: dict[str, Optional[ViewScores]] = {}
    failures = 0
    from diff3r_cli.depth.anchor_head import resolve_head
    from diff3r_cli.depth.consistency import MIN_STEPS, confident_start

    for (mname, unc, confident), items in _split_confident(groups, confidence, MIN_STEPS).items():
        g0, lam = preds[mname]
        app: dict = {}
        weights, g_start, lam_start = None, g0, lam
        try:
            if confident:
                g_start, lam_start, weights, _ = confident_start(g0, lam, ctx_cams, ctx_images, drop,
                                                              compensation=compensation, backend=backend,
                                                              head=resolve_head(anchor_head, dev) if unc else None)
            states = tto_states(g_start, lam_start if unc else None, ctx_cams, ctx_images, [s for _, s in items],
                                optimizer, backend, compensation, app, weights)
            states[0] = g0
        except NumericalError:
            failures += 1
            states = {0: g0}
        for method, s in items:
            out[f"{method}@{s}"] = score(states[s], views, backend, context, app.get(s)) if s in states else None
            if s in states and app.get(s) is not None:
                out[f"{method}@{s}"].compensated = True
    return out, failures


def evaluate_views(models: dict, runs: list[Run], ctx_images: torch.Tensor, ctx_K: torch.Tensor,
                   ctx_w2c: torch.Tensor, tgt_images: torch.Tensor, tgt_K: torch.Tensor, tgt_w2c: torch.Tensor,
                   near: float, far: float, device: torch.device, optimizer: str = "adam",
                   renders: Optional[dict] = None, ranges: Optional[dict] = None,
                   compensation: str = "off", sweep: bool = False,
                   ranges_used: Optional[dict] = None, backdrop: bool = True, confidence: str = "off",
                   drop: bool = False, anchor_head=None) -> tuple[dict, int]:
    """`score_runs` with the per-scene means of `diff3r eval`: ({"<method>@<steps>": {"psnr", "ssim",
    "context_psnr"} or None}, failures). context_psnr: the context views re-rendered from the same
    Gaussians (high with a low target PSNR = overfitting). renders: when a dict is given, the target
    renders (T,H,W,3) are stored in it under "<method>@<steps>". ranges: model key -> (near, far)
    for models that take another depth range than near/far. compensation: see :func:`tto_states`.
    sweep: every model's θ0 gets the photometric depth stage of `reconstruct` (diff3r_cli.depth);
    backdrop: and the far blurred backdrop of that stage. ranges_used, confidence, drop, anchor_head: see
    :func:`score_runs`.
    """
    views = EvalViews(ctx_images, ctx_K, ctx_w2c, tgt_images, tgt_K, tgt_w2c, float(near), float(far), ranges,
                      sweep, backdrop)
    scores, failures = score_runs(models, runs, views, device, optimizer, compensation=compensation,
                                  ranges_used=ranges_used, confidence=confidence, drop=drop,
                                  anchor_head=anchor_head)
    if renders is not None:
        renders.update({k: v.renders for k, v in scores.items() if v is not None})
    return {k: None if v is None else v.means() for k, v in scores.items()}, failures


__all__ = ["CONFIDENCE_MODES", "EvalViews", "ViewScores", "Run", "predict", "tto_states",
           "psnr_per_view", "score", "score_runs", "evaluate_views"]
