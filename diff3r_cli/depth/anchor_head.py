"""A learned ranking of the TTO anchor Λ across Gaussians (issue 20 item 6).

The predictor's Λ rows are nearly constant within a parameter group, so the anchor holds every
Gaussian about equally. An oracle shows what a ranking is worth: on the real test split, Λ set per
Gaussian to 1/(θ_A − θ0)², with θ_A a plain TTO that also sees the *target* views, gains about
+0.5 dB on the novel views over the predicted Λ (docs/RESULTS.md "A learned ranking of the anchor").

The anchor head learns that ranking from what the anchored refine has anyway: θ0, the Gaussians
after the confidence pre-pass θ1 (``consistency.confident_start``), the context photos and their
pixel confidences. It is a small MLP over per-Gaussian features (:data:`FEATURES`) that predicts,
per parameter group, the log mean squared displacement that a TTO seeing more views would apply,
centred per scene. :func:`rerank` turns it into Λ ∝ 1/displacement with the predicted Λ's geometric
mean per group, so the head decides *which* Gaussians TTO may move, the predictor *how much* the
anchor holds overall. It is trained on the real corpus's train split
(``benchmarks/fit_anchor_head.py``; ``diff3r_cli.train.anchor_head_fit``) and bundled as
``models/anchor-head-real.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import GROUPS, Gaussians

FORMAT = "diff3r-anchor-head-1"
DEFAULT_HEAD = "anchor-head-real"
FEATURES = (
    "covisible",        # projects into another context view's frame
    "backdrop",         # no view's pixel Gaussian (depth/backdrop.py)
    "confidence",       # the pixel confidence of its source pixel
    "distrust",         # (1 - confidence)²
    "texture",          # |∇I| of the source pixel (sum over RGB of forward differences)
    "log_depth",        # log depth in its view, minus the scene's median
    "log_footprint",    # log of its largest scale in pixels of its view
    "opacity_logit",    # θ0's opacity logit
    "prepass_mean", "prepass_scale", "prepass_rotation", "prepass_opacity", "prepass_color",
                        # log mean squared change per group in the pre-pass, minus the scene's median
    "depth_edge",       # largest |Δ log depth| to a 4-neighbour pixel Gaussian of its view
    "prepass_residual",  # |R(θ1) − I| at its source pixel (3×3 mean)
    "border",           # distance to its view's frame edge over the short side
    "prepass_log_depth_change",  # log(z(θ1)/z(θ0)) in its view
    "prepass_opacity_logit",     # θ1's opacity logit
    "prepass_opacity_change",    # θ1's minus θ0's opacity logit
)


def group_change(g0: Gaussians, g1: Gaussians) -> torch.Tensor:
    """(N,5) mean squared change of each group's raw parameters from g0 to g1."""
    sizes = torch.tensor(g0.group_sizes(), dtype=g0.dtype, device=g0.device)
    return g0.reduce_groups((g1.flatten() - g0.flatten()) ** 2) / sizes


def centred_log_change(change: torch.Tensor) -> torch.Tensor:
    """log of a per-group change (N,5), minus its median over the Gaussians, clamped to ±20: how far
    each Gaussian moved relative to the scene's typical move (the pre-pass features)."""
    lc = (change.float() + 1e-12).log()
    return (lc - lc.median(0).values).clamp(-20, 20)


def anchor_features(g0: Gaussians, g1: Gaussians, cameras: Cameras, images: torch.Tensor,
                    weights: torch.Tensor, owner: Optional[torch.Tensor] = None,
                    backend: str = "auto") -> torch.Tensor:
    """(N, len(FEATURES)) float32 features of θ0's Gaussians (see :data:`FEATURES`).

    g1: the same Gaussians after the pre-pass; images (V,H,W,3) in [0,1]; weights (V,H,W): the
    pixel confidences measured on g1; owner: ``source_views(g0, cameras)`` if already known.
    Scale-dependent features are centred per scene, so that the head ranks within a scene."""
    from diff3r_cli.depth.pixel_gaussians import project_to_view, source_views
    from diff3r_cli.render import render

    if len(g1) != len(g0):
        raise ValueError(f"the pre-pass has {len(g1)} Gaussians, θ0 has {len(g0)}")
    dev = g0.means.device
    n = len(g0)
    h, w = images.shape[1:3]
    imgs = images.to(dev, torch.float32)
    wts = weights.to(dev, torch.float32)
    with torch.no_grad():
        owner = source_views(g0, cameras) if owner is None else owner
        seen = torch.zeros(n, dtype=torch.bool, device=dev)
        for k in range(len(cameras)):
            _, _, _, inside = project_to_view(g0.means, cameras, k)
            seen |= inside & (owner != k) & (owner >= 0)
        gx = F.pad((imgs[:, :, 1:] - imgs[:, :, :-1]).abs().sum(-1), (0, 1))
        gy = F.pad((imgs[:, 1:] - imgs[:, :-1]).abs().sum(-1), (0, 0, 0, 1))
        texture_map = gx + gy
        res = (render(g1, cameras, backend=backend).rgb.to(torch.float32) - imgs).abs().mean(-1)
        res = F.avg_pool2d(res[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
        cols = {name: torch.zeros(n, device=dev) for name in
                ("confidence", "texture", "depth", "footprint", "depth_edge", "residual", "border", "dz")}
        cols["confidence"].fill_(1.0)
        cols["depth"].fill_(1.0)
        for j in range(len(cameras)):
            sel = (owner == j).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            z, u, v, _ = project_to_view(g0.means[sel], cameras, j)
            ui = u.floor().long().clamp(0, w - 1)
            vi = v.floor().long().clamp(0, h - 1)
            cols["confidence"][sel] = wts[j, vi, ui]
            cols["texture"][sel] = texture_map[j, vi, ui]
            cols["residual"][sel] = res[j, vi, ui]
            cols["depth"][sel] = z.float()
            f = float(cameras.K[j, 0, 0])
            big = g0.scales[sel].max(1).values
            cols["footprint"][sel] = (big * f / z.clamp_min(1e-6)).clamp_min(1e-6).log().float()
            logz = torch.full((h, w), float("nan"), device=dev)
            logz[vi, ui] = z.clamp_min(1e-6).log().float()
            p = F.pad(logz[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
            nb = torch.stack([p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]])
            cols["depth_edge"][sel] = (nb - logz[None]).abs().nan_to_num(0.0).amax(0)[vi, ui]
            cols["border"][sel] = (torch.minimum(torch.minimum(u, w - u), torch.minimum(v, h - v)) / min(h, w)).float()
            z1, _, _, _ = project_to_view(g1.means[sel], cameras, j)
            cols["dz"][sel] = (z1.clamp_min(1e-6) / z.clamp_min(1e-6)).log().float()
        pix = owner >= 0
        logd = cols["depth"].clamp_min(1e-6).log()
        if pix.any():
            logd = logd - logd[pix].median()
        pre = centred_log_change(group_change(g0, g1))
        op0 = g0.opacity_logits.reshape(-1).float()
        op1 = g1.opacity_logits.reshape(-1).float()
        conf = cols["confidence"]
        out = torch.cat([
            seen.float()[:, None], (~pix).float()[:, None], conf[:, None], ((1 - conf) ** 2)[:, None],
            cols["texture"][:, None], (logd * pix)[:, None], (cols["footprint"] * pix)[:, None],
            op0.clamp(-10, 10)[:, None], pre,
            cols["depth_edge"].clamp(0, 3)[:, None], cols["residual"][:, None], cols["border"].clamp(0, 0.5)[:, None],
            cols["dz"].clamp(-1, 1)[:, None], op1.clamp(-10, 10)[:, None], (op1 - op0).clamp(-10, 10)[:, None],
        ], 1)
    return out


class AnchorHead(torch.nn.Module):
    """MLP: standardised features (N, len(FEATURES)) -> (N,5) predicted log squared displacement per
    group (centred per scene in training; only its ranking within a scene is used)."""

    def __init__(self, n_features: int = len(FEATURES), hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(n_features))
        self.register_buffer("sd", torch.ones(n_features))
        self.net = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, len(GROUPS)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.mu) / self.sd)


def rerank(lam: torch.Tensor, log_disp: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Λ' = Λ · exp(−strength · (log_disp − its mean per group)): the head's ranking modulates the
    predicted anchor (and its covisible/single-view structure, ``covisible.py``) without changing its
    geometric mean per group. strength 0 gives Λ back."""
    if lam.shape != log_disp.shape:
        raise ValueError(f"Λ has shape {tuple(lam.shape)}, the head's output {tuple(log_disp.shape)}")
    y = log_disp.to(lam.dtype)
    y = (y - y.mean(0, keepdim=True)).clamp(-30, 30)
    return lam * torch.exp(-float(strength) * y)


def head_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bundled name -> <repo>/models/<name>.safetensors (the models' rule)."""
    from diff3r_cli.model.io import resolve_model_path

    return resolve_model_path(name_or_path)


def save_anchor_head(path: str | Path, head: AnchorHead, meta: Optional[dict] = None) -> Path:
    """Write the head's weights, its feature list and ``meta`` to ``path`` (atomic)."""
    from safetensors.torch import save as st_save

    from diff3r_cli.fsio import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    md = {"format": FORMAT, "features": json.dumps(list(FEATURES)),
          "hidden": str(head.net[0].out_features), "meta": json.dumps(meta or {})}
    path = Path(path)
    atomic_write_bytes(path, st_save(tensors, metadata=md))
    return path


def require_head(spec: "None | str | Path") -> None:
    """Raise the missing-file error of :func:`load_anchor_head` now (before any long work) unless
    ``spec`` is None, "none" or an existing file."""
    if spec is None or str(spec).lower() == "none":
        return
    path = head_path(spec)
    if not path.is_file():
        raise UserError("anchor head weights not found", path,
                        "pass a file written by benchmarks/fit_anchor_head.py, or --anchor-head none")


def load_anchor_head(name_or_path: str | Path = DEFAULT_HEAD, device: str | torch.device = "cpu") -> AnchorHead:
    """The head stored at ``name_or_path`` (a bundled name or a file from :func:`save_anchor_head`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = head_path(name_or_path)
    require_head(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise ValueError(f"format is {md.get('format')!r}, not {FORMAT!r}")
        if json.loads(md["features"]) != list(FEATURES):
            raise ValueError("it was trained on other features than this version computes")
        head = AnchorHead(len(FEATURES), int(md["hidden"]))
        head.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except Exception as e:
        raise UserError(f"not a readable anchor head ({type(e).__name__}: {str(e)[:200]})", path,
                        "re-fit it with benchmarks/fit_anchor_head.py, or pass --anchor-head none") from None
    return head.to(device).eval()


_LOADED: dict = {}


def resolve_head(spec: "None | str | Path | AnchorHead", device: str | torch.device = "cpu") -> Optional[AnchorHead]:
    """None for None or "none"; a head as given; else the file (bundled name or path), loaded once."""
    if spec is None or isinstance(spec, AnchorHead):
        return spec
    if str(spec).lower() == "none":
        return None
    key = (str(head_path(spec).resolve()), str(device))
    if key not in _LOADED:
        _LOADED[key] = load_anchor_head(spec, device)
    return _LOADED[key]


def head_meta(name_or_path: str | Path = DEFAULT_HEAD) -> dict:
    """The ``meta`` stored with a head (what it was trained on)."""
    from safetensors import safe_open

    with safe_open(str(head_path(name_or_path)), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))


__all__ = ["FEATURES", "DEFAULT_HEAD", "AnchorHead", "anchor_features", "centred_log_change", "group_change", "rerank", "save_anchor_head",
           "load_anchor_head", "head_meta", "head_path", "resolve_head",
           "require_head"]
