"""Jacobian-vector products Jv of the renderer: the one place that computes them.

Two ways, used both by :func:`render_jvp` (the render and its directional derivative along a
tangent Gaussians) and by the optimiser's Gauss-Newton products (``optim/linearization.py``):

* :func:`forward_jvp` — exact forward-mode AD with dual tensors
  (``torch.autograd.forward_ad``). The cpu and torch backends differentiate themselves;
  gsplat has no forward mode, so :func:`jvp_backend` hands its Jv to the torch backend on the
  same device (same images to float32 rounding).
* :func:`central_difference` — only when asked for by name:

      Jv ≈ (R(θ + h v) − R(θ − h v)) / (2h),   h = eps / max|v|

  i.e. the largest tangent component moves its parameter by ``eps`` (:data:`FD_STEP`:
  3e-4 in float32, 1e-6 in float64).

Accuracy of the central difference (measured with ``python benchmarks/jvp_fd.py``: torch
backend, float32, pixel-aligned 64² scene of benchmarks/render.py, tangent N(0,1) in every
parameter; error against the exact jvp over rgb and alpha):

    eps      rel. L2 error   median |error| / median |Jv|
    3e-5     43              1.5 %
    1e-4     16              0.5 %
    3e-4     7.1             0.26 %   <- FD_STEP
    1e-3     4.1             1.8 %
    1e-2     1.4             29 %
    1e-1     0.70            63 %

Typical pixels are accurate to a fraction of a percent, but the L2 error is dominated by
spikes: the renderer is discontinuous (a pair whose α crosses the 1/255 skip threshold jumps
by ≈ 0.004·colour·T), so a difference over 2h that straddles a crossing is off by
jump/(2h), and the number of crossings only shrinks like h. Larger steps trade spikes for
truncation error (the map is strongly non-linear in rotations and scales). In float64 with
eps = 1e-7 on a 32² scene the error was 2e-5 (rgb) and 7e-4 (alpha) relative L2. This is
why nothing picks the finite difference implicitly (DESIGN.md: Jv must be exact in training).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.autograd.forward_ad as fwAD

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import RenderOutput, render, resolve_backend

# Central-difference step per dtype (see the table above); other dtypes get 1e-3.
FD_STEP = {torch.float32: 3e-4, torch.float64: 1e-6}

Outputs = Union[torch.Tensor, tuple]


def fd_step(dtype: torch.dtype) -> float:
    """The central-difference step ``eps`` for parameters of this dtype."""
    return FD_STEP.get(dtype, 1e-3)


def jvp_backend(backend: str) -> str:
    """The backend that computes exact forward-mode Jv for ``backend``'s renders (gsplat has
    no forward mode: the torch backend, same conventions and device, stands in)."""
    return "torch" if backend == "gsplat" else backend


def forward_jvp(f: Callable[..., Outputs], primals: Sequence[torch.Tensor],
                tangents: Sequence[torch.Tensor]) -> tuple[Outputs, Outputs]:
    """``(f(*primals), J_f·tangents)`` by forward-mode AD; outputs shaped like ``f``'s (a tensor
    or a tuple of tensors). An output that does not depend on the primals gets a zero tangent."""
    # Dual tensors: measured ~25% cheaper than torch.func.jvp, and the compiled backend
    # composites primal and tangent in one pass under them.
    with fwAD.dual_level():
        out = f(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        single = isinstance(out, torch.Tensor)
        pairs = [fwAD.unpack_dual(o) for o in ((out,) if single else out)]
    values = [p.primal for p in pairs]
    derivs = [torch.zeros_like(p.primal) if p.tangent is None else p.tangent for p in pairs]
    return (values[0], derivs[0]) if single else (tuple(values), tuple(derivs))


@torch.no_grad()
def central_difference(f: Callable[..., Outputs], primals: Sequence[torch.Tensor],
                       tangents: Sequence[torch.Tensor], eps: Optional[float] = None) -> Optional[Outputs]:
    """``(f(x + h v) − f(x − h v)) / 2h`` with ``h = eps / max|v|`` (``eps`` defaults to
    :func:`fd_step` of the primals' dtype); None when the tangent is zero (Jv = 0, nothing to
    evaluate: the caller knows the output's shape)."""
    vmax = max((float(t.abs().max()) for t in tangents if t.numel()), default=0.0)
    if vmax == 0.0:
        return None
    h = (fd_step(primals[0].dtype) if eps is None else eps) / vmax
    plus = f(*(p + h * t for p, t in zip(primals, tangents)))
    minus = f(*(p - h * t for p, t in zip(primals, tangents)))
    if isinstance(plus, torch.Tensor):
        return (plus - minus) / (2 * h)
    return tuple((a - b) / (2 * h) for a, b in zip(plus, minus))


def _render_outputs(cameras, background, backend: str) -> Callable[..., tuple]:
    """Gaussian tensors -> (rgb, depth, alpha) through ``render``."""
    def f(*tensors: torch.Tensor) -> tuple:
        o = render(Gaussians(*tensors), cameras, background=background, backend=backend)
        return o.rgb, o.depth, o.alpha
    return f


def render_jvp(gaussians: Gaussians, cameras, tangent: Gaussians, backend: str = "auto",
               background=None, eps: float | None = None,
               exact: bool = True) -> tuple[RenderOutput, RenderOutput]:
    """Render and the directional derivative along ``tangent``: returns ``(out, d_out)``.

    Exact forward-mode AD by default on every backend (:func:`forward_jvp`, through
    :func:`jvp_backend`). ``exact=False`` asks, by name, for a central finite difference with
    step ``h = eps / max|tangent|`` through the chosen backend (:func:`fd_jvp`).
    """
    backend = resolve_backend(backend, gaussians.means)
    if not exact:
        return fd_jvp(gaussians, cameras, tangent, backend=backend, background=background, eps=eps)
    f = _render_outputs(cameras, background, jvp_backend(backend))
    out, dout = forward_jvp(f, gaussians.tensors(), tangent.tensors())
    return RenderOutput(*out), RenderOutput(*dout)


@torch.no_grad()
def fd_jvp(gaussians: Gaussians, cameras, tangent: Gaussians, backend: str = "torch",
           background=None, eps: float | None = None) -> tuple[RenderOutput, RenderOutput]:
    """Central finite-difference Jv for any backend (3 renders); see the module docstring."""
    out = render(gaussians, cameras, background=background, backend=backend)
    f = _render_outputs(cameras, background, backend)
    d = central_difference(f, gaussians.tensors(), tangent.tensors(), eps)
    if d is None:
        return out, RenderOutput(*(torch.zeros_like(t) for t in (out.rgb, out.depth, out.alpha)))
    return out, RenderOutput(*d)


__all__ = ["FD_STEP", "fd_step", "jvp_backend", "forward_jvp", "central_difference", "render_jvp", "fd_jvp"]
