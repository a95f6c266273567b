"""Per-view exposure / white-balance compensation for test-time optimisation.

Photos from different people, cameras or moments differ in exposure and white balance. Plain
TTO can only explain that by changing the shared splat colours, which smears one photo's
exposure over the others. Here every context view v gets its own colour transform of the
rendered image, a per-channel gain and bias (the diagonal affine model):

    R'_v = R_v ⊙ g_v + b_v               a_v = (g_r, g_g, g_b, b_r, b_g, b_b), identity (1,1,1,0,0,0)

That plain form is what callers see (history, sidecar, :func:`apply_appearance`). The optimiser
works on (g_v, o_v) with R'_v = (R_v − m_v) ⊙ g_v + m_v + o_v, m_v the photo's mean colour
(b_v = o_v + m_v(1 − g_v)): about the mean, gain and offset are nearly uncorrelated, so Adam
moves them independently instead of zig-zagging.

The transforms used are centred over the views (mean gain 1, mean bias 0): a gain shared by all
views trades against the splat colours at no cost in the data term, and the weak pull of the
transforms toward the identity (½μ‖a_v − a_id‖²) did not stop that common mode from drifting. So
the splat keeps the context views' mean exposure, which is the best guess for a novel view. The transforms
are not baked into the splat: novel views render with the identity, and a context view
re-rendered for comparison with its photo applies its own transform (:func:`apply_appearance`).

``exposure_spread`` is the rule that switches compensation on by default: each context view is
rendered from the Gaussians predicted from the *other* context views and compared with its
photo by a per-channel least-squares gain; a spread of those gains above ``SPREAD_ON`` means the
inputs differ in exposure.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.optim.energy import Energy

PARAMS_PER_VIEW = 6                     # gain (3) + bias (3)
APPEARANCE_WEIGHT = 1e-4                # μ: far below the data term's curvature (~E[c²]/V per gain)
APPEARANCE_LR = 1e-2                    # Adam step of the gains and offsets (splat colours: 2.5e-3 on SH DC)
SPREAD_ON = 0.05                        # relative gain spread between views that switches "auto" on
COMPENSATION_MODES = ("auto", "on", "off")
OWNED_MIN = 0.5                         # share of pixel Gaussians (with a source view) that allows the split


def identity(views: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(views, 6) identity transforms."""
    a = torch.zeros(views, PARAMS_PER_VIEW, dtype=dtype, device=device)
    a[:, :3] = 1.0
    return a


def apply_appearance(rgb: torch.Tensor, appearance: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply per-view transforms (V,6: gain, bias) to renders (V,H,W,3): rgb·gain + bias; None is
    the identity."""
    if appearance is None:
        return rgb
    a = appearance.to(rgb.dtype).to(rgb.device).reshape(-1, 1, 1, PARAMS_PER_VIEW)
    return rgb * a[..., :3] + a[..., 3:]


class CompensatedEnergy(Energy):
    """E over θ = [θ_gaussians, a_1 … a_V]: the renders pass through each view's transform, and
    the transforms' proximal weight μ pulls them toward the identity (θ0's tail)."""

    def __init__(self, base: Energy, weight: float = APPEARANCE_WEIGHT) -> None:
        views = len(base.cameras)
        a0 = identity(views, base.theta0.dtype, base.theta0.device).reshape(-1)
        mu = torch.full_like(a0, float(weight))
        super().__init__(base.template, torch.cat([base.theta0, a0]), torch.cat([base.lam, mu]), base.cameras,
                         base.images, base.background, base.backend, base.renderer, base.pixel_weights)
        self.num_gaussian_params = base.theta0.numel()
        self.views = views
        # (V,3): each photo's mean colour, over its trusted pixels where it has pixel weights (an
        # occluder's colour must not move the transforms' parametrisation)
        if self.pixel_weights is None:
            self.pivot = self.images.mean(dim=(1, 2))
        else:
            w = self.pixel_weights.to(self.images.dtype)[..., None]
            self.pivot = (self.images * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1e-12)

    def _parts(self, theta: torch.Tensor) -> torch.Tensor:
        """The transforms (V,6) in the plain (gain, bias) form from θ's tail (pivot form, free), centred
        over the views: mean gain 1, mean bias 0.

        A gain and bias common to every view trade against the splat colours at no cost in the
        data term, and novel views render with the identity, so that common mode must not drift (it
        did: 200 Adam steps on two clean views moved both gains to ~1.12 together, and the unseen
        views lost 1 dB). Centred, the splat keeps the context views' mean exposure; the free
        transforms' own common mode touches only the proximal term, which holds it at the identity.
        """
        n = self.num_gaussian_params
        a = theta[n:].reshape(self.views, PARAMS_PER_VIEW)
        gain = a[:, :3]
        bias = a[:, 3:] + self.pivot * (1 - gain)
        return torch.cat([gain - gain.mean(0, keepdim=True) + 1, bias - bias.mean(0, keepdim=True)], dim=1)

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(θ of the Gaussians, transforms (V,6) in the plain gain/bias form) of an extended θ."""
        return theta[:self.num_gaussian_params], self._parts(theta)

    def render(self, theta: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
        tg = theta[:self.num_gaussian_params]
        rgb = self.renderer(self.template.unflatten(tg), self.cameras, self.background, backend or self.backend)
        return apply_appearance(rgb, self._parts(theta))

    def lr_tail(self, lr: float = APPEARANCE_LR) -> torch.Tensor:
        """Adam learning rates of the transforms (appended to the Gaussians')."""
        return torch.full((self.views * PARAMS_PER_VIEW,), float(lr), dtype=self.theta0.dtype,
                          device=self.theta0.device)


def _ls_gains(pred: torch.Tensor, img: torch.Tensor, mask: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-channel least-squares gain g minimising ‖g·pred − img‖² over mask; None if too few pixels."""
    if int(mask.sum()) < 0.05 * mask.numel():
        return None
    p, i = pred[mask], img[mask]
    return (p * i).sum(0) / (p * p).sum(0).clamp_min(1e-8)


def exposure_spread(g0: Gaussians, cameras: Cameras, images: torch.Tensor, backend: str = "auto") -> float:
    """How much the context views disagree in exposure: max over channels of (max − min)/mean of the
    per-view gains between each photo and its render from the other views' Gaussians.

    Each view is compared with the Gaussians of the other views: pixel Gaussians are attributed to
    their views by where they project (``depth.source_views``: exact even after fusion dropped some,
    when the view-major blocks are no longer equal); Gaussians of no view (the depth stage's
    backdrop) render no view, since a view's own backdrop reproduces its exposure. When most
    Gaussians have no view: view-major blocks when N = V·H·W, otherwise every Gaussian renders every
    view (a weaker test). 0 when fewer than two views can be compared.
    """
    from diff3r_cli.depth.pixel_gaussians import source_views
    from diff3r_cli.render import render

    v = len(cameras)
    n = g0.num
    owner = None
    if v > 1:
        with torch.no_grad():
            owner = source_views(g0, cameras)
        if float((owner >= 0).float().mean()) < OWNED_MIN:
            per = cameras.width * cameras.height
            owner = torch.arange(n, device=g0.means.device) // per if n == v * per else None
    gains = []
    with torch.no_grad():
        for k in range(v):
            gk = g0[(owner >= 0) & (owner != k)] if owner is not None else g0
            out = render(gk, cameras[k:k + 1], backend=backend)
            img = images[k].to(out.rgb.dtype)
            gain = _ls_gains(out.rgb[0], img, out.alpha[0] > 0.5)
            if gain is not None:
                gains.append(gain)
    if len(gains) < 2:
        return 0.0
    G = torch.stack(gains).clamp_min(1e-6)
    spread = (G.max(0).values - G.min(0).values) / G.mean(0)
    val = float(spread.max())
    return val if math.isfinite(val) else 0.0


def decide(mode: str, g0: Gaussians, cameras: Cameras, images: torch.Tensor,
           backend: str = "auto") -> tuple[bool, Optional[float]]:
    """(compensate?, measured spread or None) for mode "on" | "off" | "auto" (on when the spread
    exceeds SPREAD_ON)."""
    if mode not in COMPENSATION_MODES:
        raise ValueError(f"unknown compensation mode {mode!r} (use one of {', '.join(COMPENSATION_MODES)})")
    if mode != "auto":
        return mode == "on", None
    if len(cameras) < 2:
        return False, 0.0
    s = exposure_spread(g0, cameras, images, backend)
    return s > SPREAD_ON, s


def sidecar_record(last: dict) -> dict:
    """The sidecar's "appearance" entry from the final TTO history record."""
    comp = last.get("compensation") or {"on": False, "spread": None}
    rec: dict = {"compensation": "on" if comp["on"] else "off", "exposure_spread": comp.get("spread"),
                 "rule": f"auto: on when the context views' exposure gains spread by more than {SPREAD_ON:.0%}"}
    if "appearance" in last:
        a = last["appearance"].detach().cpu().double()
        rec.update(model="rgb' = rgb * gain + bias per context view (diagonal affine; regularised toward "
                         "identity; not in the splat colours: novel views render with the identity)",
                   gain=[[round(float(x), 5) for x in row] for row in a[:, :3]],
                   bias=[[round(float(x), 5) for x in row] for row in a[:, 3:]])
    return rec


def from_sidecar(doc: dict) -> Optional[torch.Tensor]:
    """The context views' transforms (V,6) stored by :func:`sidecar_record`, or None."""
    rec = (doc.get("extras") or {}).get("appearance") or {}
    if "gain" not in rec:
        return None
    return torch.cat([torch.tensor(rec["gain"], dtype=torch.float32, device="cpu"), torch.tensor(rec["bias"], dtype=torch.float32, device="cpu")], 1)


__all__ = ["CompensatedEnergy", "sidecar_record", "from_sidecar", "apply_appearance", "identity", "exposure_spread", "decide", "PARAMS_PER_VIEW",
           "APPEARANCE_WEIGHT", "APPEARANCE_LR", "SPREAD_ON", "COMPENSATION_MODES"]
