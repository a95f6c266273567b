"""The TTO energy and its derivative products, over the flat parameter vector θ.

    E(θ; θ0, Λ) = 1/(2P) Σ_views Σ_pixels ‖R(θ)_p − I_p‖²  +  ½ Σ_j λ_j (θ_j − θ0_j)²

θ is ``Gaussians.flatten()`` (raw parameters: means, log-scales, unnormalised quaternions,
opacity logits, SH). P = C·H·W is the number of pixels (the three colour channels of a
pixel are summed, not averaged). λ_j is the per-scalar expansion of the (N,5) group
weights (``Gaussians.expand_groups``). The residual is r(θ) = R(θ) − I, shape (C,H,W,3),
with Jacobian J = ∂r/∂θ, so ∇E = Jᵀr/P + Λ(θ−θ0) and the Gauss-Newton Hessian is
H ≈ JᵀJ/P + Λ.

Jv is computed by forward-mode AD (``jvp="forward"``, exact, needs a renderer that
supports it: the cpu and torch backends; on gsplat the torch backend supplies it), by a
central finite difference (``"fd"``, only when asked for by name), or by the double-vjp trick (``"reverse"``: Jv = ∂/∂u ⟨Jᵀu, v⟩, exact, needs a renderer whose
backward is differentiable). Jᵀu is an ordinary backward pass through a graph built once per linearisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.autograd.forward_ad as fwAD

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import GROUPS, Gaussians
from diff3r_cli.optim.pcg import estimate_jtj_diag

RenderFn = Callable[[Gaussians, Cameras, Optional[torch.Tensor], str], torch.Tensor]
JVP_MODES = ("auto", "forward", "fd", "reverse")
FD_STEP = {torch.float32: 3e-4, torch.float64: 1e-6}


def default_render_rgb(g: Gaussians, cameras: Cameras, background: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """RGB (C,H,W,3) from the project renderer."""
    from diff3r_cli.render import render

    return render(g, cameras, background=background, backend=backend).rgb


def resolve_backend(backend: str, g: Gaussians) -> str:
    """'auto' -> the backend render() would pick for these Gaussians."""
    from diff3r_cli.render import resolve_backend as _resolve

    return _resolve(backend, g.means)


def resolve_jvp(jvp: str, backend: str) -> str:
    """'auto' never means a finite difference (its Jv is wrong where a Gaussian crosses the α
    threshold: measured relative errors of 0.3-2 and PCG diverging). On gsplat, which has no
    forward mode and no differentiable backward, "forward": the torch backend supplies the
    exact Jv on the same device. Elsewhere "auto-exact": the double-vjp trick ("reverse",
    reuses the linearisation's graph: no re-binning) when it agrees with forward mode, else
    forward mode; a renderer with no forward mode gets "reverse" on its own.

    "reverse" needs the renderer's backward to be built from differentiable ops in its
    incoming gradient (it is linear in it); whether it is, is checked once per renderer and
    dtype against forward mode (``_JVP_VERDICT``), so a backward written with out= ops or
    detached tensors falls back to forward mode instead of giving a wrong Jv. "fd" only when
    asked for by name.
    """
    if jvp not in JVP_MODES:
        raise ValueError(f"unknown jvp mode {jvp!r} (use one of {', '.join(JVP_MODES)})")
    if jvp == "auto":
        return "forward" if backend == "gsplat" else "auto-exact"
    return jvp


# (render function, backend, dtype) -> "reverse" | "forward": the result of the one-time check.
_JVP_VERDICT: dict = {}


def check_inputs(g0: Gaussians, lam: Optional[torch.Tensor], cameras: Cameras, images: torch.Tensor) -> torch.Tensor:
    """Validate shapes and values; returns lam as an (N,5) tensor (zeros when None)."""
    n = g0.num
    if lam is None:
        lam = torch.zeros(n, len(GROUPS), dtype=g0.dtype, device=g0.device)
    if tuple(lam.shape) != (n, len(GROUPS)):
        raise UserError(f"uncertainty weights have shape {tuple(lam.shape)} but there are {n} Gaussians",
                        fix=f"pass lam with shape ({n}, {len(GROUPS)}) for groups {', '.join(GROUPS)}")
    if images.dim() != 4 or images.shape[-1] != 3:
        raise UserError(f"images have shape {tuple(images.shape)}", fix="pass context images as (C,H,W,3) floats in [0,1]")
    c, h, w, _ = images.shape
    if c != len(cameras) or h != cameras.height or w != cameras.width:
        raise UserError(f"images are {c}x{h}x{w} but cameras are {len(cameras)}x{cameras.height}x{cameras.width}",
                        fix="give one camera per image with the image's width and height")
    with torch.no_grad():
        if bool((lam.detach() < 0).any()):
            raise UserError("uncertainty weights must be >= 0", fix="clamp lam to be non-negative (e.g. softplus)")
    return lam


@dataclass
class EnergyTerms:
    """E and its two parts as Python floats."""

    energy: float
    photometric: float
    proximal: float


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
        render_fn: Optional[RenderFn] = None,
    ) -> None:
        self.template = template.detach()
        self.theta0 = theta0.detach()
        self.lam = lam_flat.detach().to(theta0.dtype)
        self.cameras = cameras
        self.images = images.detach().to(theta0.dtype)
        self.background = background
        self.backend = resolve_backend(backend, template)
        self.render_fn = render_fn or default_render_rgb
        self.num_pixels = int(images.shape[0] * images.shape[1] * images.shape[2])

    # --- values ---------------------------------------------------------------------
    def render(self, theta: torch.Tensor) -> torch.Tensor:
        return self.render_fn(self.template.unflatten(theta), self.cameras, self.background, self.backend)

    def residual(self, theta: torch.Tensor) -> torch.Tensor:
        """r(θ) = R(θ) − I, shape (C,H,W,3)."""
        return self.render(theta) - self.images

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
        with torch.no_grad():
            photo, prox = self.parts(theta)
        return EnergyTerms(float(photo + prox), float(photo), float(prox))

    def value_and_grad(self, theta: torch.Tensor, create_graph: bool = False) -> tuple[EnergyTerms, torch.Tensor]:
        """Energy terms and ∇E at θ (with create_graph the gradient stays differentiable)."""
        with torch.enable_grad():
            t = theta if (create_graph and theta.requires_grad) else theta.detach().requires_grad_(True)
            photo, prox = self.parts(t)
            e = photo + prox
            (grad,) = torch.autograd.grad(e, t, create_graph=create_graph)
        return EnergyTerms(float(e.detach()), float(photo.detach()), float(prox.detach())), grad

    # --- linear algebra -------------------------------------------------------------
    def linearize(self, theta: torch.Tensor, jvp: str = "auto") -> "Linearization":
        return Linearization(self, theta, resolve_jvp(jvp, self.backend))

    def exact_hessian(self, theta: torch.Tensor, mode: str = "fd") -> "ExactHessian":
        return ExactHessian(self, theta, mode)


class Linearization:
    """r, J and ∇E at a fixed θ; one forward pass kept for repeated vjps."""

    def __init__(self, energy: Energy, theta: torch.Tensor, jvp_mode: str) -> None:
        self.energy = energy
        self.theta = theta.detach()
        self.jvp_mode = jvp_mode
        self.num_pixels = energy.num_pixels
        with torch.enable_grad():
            self._t = self.theta.clone().requires_grad_(True)
            self._r = energy.residual(self._t)
        self.r = self._r.detach()
        self._vjp_u = None  # lazily built graph for the double-vjp trick
        self.grad = self.vjp(self.r) / self.num_pixels + energy.lam * (self.theta - energy.theta0)
        photo = 0.5 * float((self.r * self.r).sum()) / self.num_pixels
        d = self.theta - energy.theta0
        prox = 0.5 * float((energy.lam * d * d).sum())
        self.terms = EnergyTerms(photo + prox, photo, prox)
        self.jvp_count = 0
        self.vjp_count = 1

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀu for u shaped like the residual."""
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._r, self._t, u.reshape(self._r.shape), retain_graph=True, allow_unused=True)
        if g is None:  # nothing depends on θ (empty scene)
            g = torch.zeros_like(self.theta)
        self.vjp_count = getattr(self, "vjp_count", 0) + 1
        return g

    def _verdict_key(self):
        e = self.energy
        return (e.render_fn, e.backend, self.theta.dtype)

    def _choose_exact_mode(self, v: torch.Tensor) -> str:
        key = self._verdict_key()
        mode = _JVP_VERDICT.get(key)
        if mode is None:
            self.jvp_mode = "forward"
            try:
                ref = self.jvp(v)
            except (RuntimeError, NotImplementedError):
                ref = None  # the renderer has no forward mode
            finally:
                self.jvp_count -= 1
            mode = "forward"
            try:
                rev = self._jvp_reverse(v)
                tol = 1e-8 if self.theta.dtype == torch.float64 else 1e-3
                if ref is None or (float(torch.linalg.vector_norm(rev - ref))
                                   <= tol * float(torch.linalg.vector_norm(ref)) + 1e-30):
                    mode = "reverse"
            except RuntimeError as exc:
                if ref is None:
                    raise RuntimeError("no exact Jv for this renderer: it has neither forward-mode AD nor a "
                                       "backward differentiable in its incoming gradient; ask for "
                                       "jvp='fd' by name to use a finite difference") from exc
            _JVP_VERDICT[key] = mode
            self._vjp_u = None if mode == "forward" else self._vjp_u
            self.jvp_mode = mode
            return mode
        self.jvp_mode = mode
        return mode

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """Jv, shaped like the residual."""
        if self.jvp_mode == "auto-exact":
            self._choose_exact_mode(v)
        self.jvp_count += 1
        if self.jvp_mode == "forward":
            # Dual tensors (torch.autograd.forward_ad): measured ~25% cheaper than torch.func.jvp.
            # gsplat has no forward mode: there the torch backend (same images to float32
            # rounding, also on CUDA) supplies the exact Jv.
            backend = "torch" if self.energy.backend == "gsplat" else self.energy.backend
            with torch.no_grad(), fwAD.dual_level():
                dual = self.energy.template.unflatten(fwAD.make_dual(self.theta, v.to(self.theta.dtype)))
                out = self.energy.render_fn(dual, self.energy.cameras, self.energy.background, backend)
                tangent = fwAD.unpack_dual(out).tangent
            return torch.zeros_like(self.r) if tangent is None else tangent
        if self.jvp_mode == "fd":
            return self._jvp_fd(v)
        if self.jvp_mode == "reverse":
            return self._jvp_reverse(v)
        raise ValueError(f"unknown jvp mode {self.jvp_mode!r}")

    def _jvp_fd(self, v: torch.Tensor) -> torch.Tensor:
        # Central difference with h = FD_STEP / max|v|: the largest tangent component moves its
        # parameter by FD_STEP (3e-4 in float32, 1e-6 in float64). The renderer's own
        # measurement (render/jvp.py) found this the best trade between truncation error and
        # the α-threshold jumps that a difference straddling a crossing divides by 2h.
        vmax = float(v.abs().max()) if v.numel() else 0.0
        if vmax == 0.0:
            return torch.zeros_like(self.r)
        eps = FD_STEP.get(self.theta.dtype, 1e-3) / vmax
        with torch.no_grad():
            rp = self.energy.residual(self.theta + eps * v)
            rm = self.energy.residual(self.theta - eps * v)
        return (rp - rm) / (2 * eps)

    def _jvp_reverse(self, v: torch.Tensor) -> torch.Tensor:
        # Jᵀu is linear in u; differentiating ⟨Jᵀu, v⟩ w.r.t. u gives Jv, with one graph reused.
        with torch.enable_grad():
            if self._vjp_u is None:
                self._u = torch.zeros_like(self.r, requires_grad=True)
                (self._vjp_u,) = torch.autograd.grad(self._r, self._t, self._u, retain_graph=True, create_graph=True)
            (jv,) = torch.autograd.grad(self._vjp_u, self._u, v, retain_graph=True)
        return jv

    def gn_matvec(self, v: torch.Tensor, damping: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(JᵀJ/P + Λ [+ diag(damping)]) v."""
        out = self.vjp(self.jvp(v)) / self.num_pixels + self.energy.lam * v
        if damping is not None:
            out = out + damping * v
        return out

    def gn_diag(self, num_probes: int = 8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Stochastic estimate of diag(JᵀJ)/P + Λ (one vjp per ±1 probe)."""
        d = estimate_jtj_diag(self.vjp, self.r.shape, num_probes, self.r.dtype, self.r.device, generator)
        return d / self.num_pixels + self.energy.lam

    def release(self) -> None:
        """Drop the kept graph (frees the forward pass's memory)."""
        self._r = self._t = self._vjp_u = None


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


__all__ = ["Energy", "EnergyTerms", "Linearization", "ExactHessian", "check_inputs", "resolve_backend", "resolve_jvp",
           "default_render_rgb", "JVP_MODES"]
