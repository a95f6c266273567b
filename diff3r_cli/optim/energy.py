"""The TTO energy over the flat parameter vector θ, and its exact Hessian-vector products.

    E(θ; θ0, Λ) = 1/(2P) Σ_views Σ_pixels w_p ‖R(θ)_p − I_p‖²  +  ½ Σ_j λ_j (θ_j − θ0_j)²

θ is ``Gaussians.flatten()`` (raw parameters: means, log-scales, unnormalised quaternions,
opacity logits, SH). P = C·H·W is the number of pixels (the three colour channels of a
pixel are summed, not averaged). w_p ∈ [0,1] are optional per-pixel confidences of the photos
(1 when not given; see ``depth/consistency.py``): the residual carries √w_p, so J, the Gauss-Newton
model and the layer's solves all see the weighted term. λ_j is the per-scalar expansion of the (N,5) group
weights (``Gaussians.expand_groups``). The residual is r(θ) = R(θ) − I, shape (C,H,W,3),
with Jacobian J = ∂r/∂θ, so ∇E = Jᵀr/P + Λ(θ−θ0) and the Gauss-Newton Hessian is
H ≈ JᵀJ/P + Λ. Products with J and Jᵀ at a fixed θ live in ``linearization.py``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import GROUPS, Gaussians
from diff3r_cli.optim.linearization import Linearization
from diff3r_cli.optim.stats import EnergyTerms
from diff3r_cli.render import resolve_backend

RenderFn = Callable[[Gaussians, Cameras, Optional[torch.Tensor], str], torch.Tensor]


class RgbRenderer:
    """A render function ``(gaussians, cameras, background, backend) -> rgb (C,H,W,3)`` and
    what has been learnt about its Jv.

    ``jvp_verdicts`` maps (backend, dtype) to the exact Jv mode that the automatic choice
    settled on for this renderer ("reverse" when its backward is differentiable in its
    incoming gradient, else "forward"; see ``linearization.py``). The verdict is measured
    once and kept here, on the object: energies that share a renderer (the default one, or
    one the caller passes to several optimisations) share it; a plain function passed as
    ``render_fn`` gets a fresh renderer, so it is checked once per energy.
    """

    def __init__(self, fn: RenderFn) -> None:
        self.fn = fn
        self.jvp_verdicts: dict[tuple[str, torch.dtype], str] = {}

    def __call__(self, g: Gaussians, cameras: Cameras, background: Optional[torch.Tensor], backend: str) -> torch.Tensor:
        return self.fn(g, cameras, background, backend)

    @classmethod
    def wrap(cls, fn: Union[None, RenderFn, "RgbRenderer"]) -> "RgbRenderer":
        """The default renderer for None, ``fn`` itself if it is one, else a new one around it."""
        if fn is None:
            return DEFAULT_RENDERER
        return fn if isinstance(fn, RgbRenderer) else cls(fn)


def _project_render_rgb(g: Gaussians, cameras: Cameras, background: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """RGB (C,H,W,3) from the project renderer."""
    from diff3r_cli.render import render

    return render(g, cameras, background=background, backend=backend).rgb


DEFAULT_RENDERER = RgbRenderer(_project_render_rgb)


def check_inputs(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor) -> torch.Tensor:
    """Validate shapes and values; returns lam as an (N,5) tensor (zeros when None).

    Shape mismatches are programmer errors (ValueError). Negative weights stay a UserError:
    they reach here from a user's .ply through ``diff3r refine``, which stores Λ as read.
    """
    n = g0.num
    if lam is None:
        lam = torch.zeros(n, len(GROUPS), dtype=g0.dtype, device=g0.device)
    if tuple(lam.shape) != (n, len(GROUPS)):
        raise ValueError(f"uncertainty weights have shape {tuple(lam.shape)} but there are {n} Gaussians "
                         f"(expected ({n}, {len(GROUPS)}) for groups {', '.join(GROUPS)})")
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (C,H,W,3) floats in [0,1]")
    c, h, w, _ = images.shape
    if c != len(cameras) or h != cameras.height or w != cameras.width:
        raise ValueError(f"images are {c}x{h}x{w} but cameras are {len(cameras)}x{cameras.height}x{cameras.width}")
    with torch.no_grad():
        if bool((lam.detach() < 0).any()):
            raise UserError("uncertainty weights must be >= 0", fix="clamp lam to be non-negative (e.g. softplus)")
    return lam


def check_pixel_weights(w: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel confidences (C,H,W) in [0,1] for images (C,H,W,3), detached; ValueError otherwise."""
    if tuple(w.shape) != tuple(images.shape[:3]):
        raise ValueError(f"pixel weights have shape {tuple(w.shape)}; expected {tuple(images.shape[:3])} (C,H,W)")
    w = w.detach().to(device=images.device)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w > 1).any()):
        raise ValueError("pixel weights must be finite and in [0, 1]")
    return w


class Energy:
    """E(θ; θ0, Λ) for fixed cameras, images, θ0 and Λ (all detached)."""

    def __init__(
        self,
        template: Gaussians,
        theta0: torch.Tensor,
        lam_flat: torch.Tensor,
        cameras: Cameras,
        images: torch.Tensor,
        background: Optional[torch.Tensor] = None,
        backend: str = "auto",
        render_fn: Union[None, RenderFn, RgbRenderer] = None,
        pixel_weights: Optional[torch.Tensor] = None,
    ) -> None:
        self.template = template.detach()
        self.theta0 = theta0.detach()
        self.lam = lam_flat.detach().to(theta0.dtype)
        self.cameras = cameras
        self.images = images.detach().to(theta0.dtype)
        self.background = background
        self.backend = resolve_backend(backend, template.means)
        self.renderer = RgbRenderer.wrap(render_fn)
        self.num_pixels = int(images.shape[0] * images.shape[1] * images.shape[2])
        self.pixel_weights = None if pixel_weights is None else check_pixel_weights(pixel_weights, images)
        # √w, shaped to broadcast over the colour channels of the residual
        self.residual_scale = None if self.pixel_weights is None else self.pixel_weights.to(theta0.dtype).sqrt()[..., None]

    # --- values ---------------------------------------------------------------------
    def render(self, theta: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
        """R(θ), shape (C,H,W,3), on this energy's backend unless ``backend`` is given."""
        return self.renderer(self.template.unflatten(theta), self.cameras, self.background, backend or self.backend)

    def residual(self, theta: torch.Tensor) -> torch.Tensor:
        """r(θ) = √w ⊙ (R(θ) − I), shape (C,H,W,3) (w = 1 without pixel weights)."""
        r = self.render(theta) - self.images
        return r if self.residual_scale is None else r * self.residual_scale

    def parts(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(photometric, proximal) as differentiable scalars."""
        r = self.residual(theta)
        photo = 0.5 * (r * r).sum() / self.num_pixels
        d = theta - self.theta0
        prox = 0.5 * (self.lam * d * d).sum()
        return photo, prox

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        photo, prox = self.parts(theta)
        return photo + prox

    def terms(self, theta: torch.Tensor) -> EnergyTerms:
        """E and its parts at θ as floats (no graph)."""
        with torch.no_grad():
            photo, prox = self.parts(theta)
        return EnergyTerms(float(photo + prox), float(photo), float(prox))

    def value_and_grad(self, theta: torch.Tensor, create_graph: bool = False) -> tuple[EnergyTerms, torch.Tensor]:
        """Energy terms and ∇E at θ (with create_graph the gradient stays differentiable)."""
        if not create_graph:
            return self._value_and_grad_fast(theta)
        with torch.enable_grad():
            t = theta if theta.requires_grad else theta.detach().requires_grad_(True)
            photo, prox = self.parts(t)
            e = photo + prox
            (grad,) = torch.autograd.grad(e, t, create_graph=True)
        return EnergyTerms(float(e.detach()), float(photo.detach()), float(prox.detach())), grad

    def _value_and_grad_fast(self, theta: torch.Tensor) -> tuple[EnergyTerms, torch.Tensor]:
        # The same values with autograd only through the renderer: the quadratic terms'
        # gradients are written out (r/P into the render's backward, Λ⊙(θ−θ0) added after),
        # which saves several passes over the (N·14)-long vectors per TTO step.
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            r = self.residual(t)
            rd = r.detach()
            (grad,) = torch.autograd.grad(r, t, grad_outputs=rd / self.num_pixels)
        photo = 0.5 * float((rd * rd).sum()) / self.num_pixels
        d = theta.detach() - self.theta0
        ld = self.lam * d
        prox = 0.5 * float(torch.dot(ld, d))
        grad.add_(ld)
        return EnergyTerms(photo + prox, photo, prox), grad

    # --- linear algebra -------------------------------------------------------------
    def linearize(self, theta: torch.Tensor, jvp: str = "auto") -> Linearization:
        """r, J and ∇E at θ (``jvp``: "auto" | "forward" | "fd" | "reverse")."""
        return Linearization(self, theta, jvp)

    def exact_hessian(self, theta: torch.Tensor, mode: str = "fd") -> "ExactHessian":
        """Products with the full ∇²E at θ (``mode``: "fd" | "autograd")."""
        return ExactHessian(self, theta, mode)


class ExactHessian:
    """Hessian-vector products of the full energy E at θ (not the Gauss-Newton model).

    mode "fd" (default): central difference of exact reverse-mode gradients,
    Hv ≈ (∇E(θ+εv) − ∇E(θ−εv)) / 2ε with ε ~ u^(1/3) scaled to θ and v (relative error
    ~1e-10 in float64, ~1e-4 in float32); needs only first derivatives of the renderer.
    mode "autograd": double backward through a graph built once; valid only when the
    renderer's backward is itself differentiable (not the case for a hand-written,
    first-order-only backward such as the torch backend's compositing kernel).
    """

    def __init__(self, energy: Energy, theta: torch.Tensor, mode: str = "fd") -> None:
        if mode not in ("fd", "autograd"):
            raise ValueError(f"unknown exact-Hessian mode {mode!r} (use fd or autograd)")
        self.energy = energy
        self.mode = mode
        self.theta = theta.detach()
        if mode == "autograd":
            with torch.enable_grad():
                self._t = self.theta.clone().requires_grad_(True)
                e = energy(self._t)
                (self._g,) = torch.autograd.grad(e, self._t, create_graph=True)
            self.grad = self._g.detach()
        else:
            self.grad = energy.value_and_grad(self.theta)[1]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.mode == "autograd":
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(self._g, self._t, v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(v) if hv is None else hv
        n = v.numel()
        v_rms = float(torch.linalg.vector_norm(v)) / math.sqrt(n)
        if v_rms == 0.0:
            return torch.zeros_like(v)
        u = torch.finfo(v.dtype).eps
        t_rms = float(torch.linalg.vector_norm(self.theta)) / math.sqrt(n)
        eps = u ** (1.0 / 3.0) * (1.0 + t_rms) / v_rms
        gp = self.energy.value_and_grad(self.theta + eps * v)[1]
        gm = self.energy.value_and_grad(self.theta - eps * v)[1]
        return (gp - gm) / (2.0 * eps)


__all__ = ["Energy", "EnergyTerms", "ExactHessian", "RgbRenderer", "DEFAULT_RENDERER", "check_inputs", "check_pixel_weights"]
