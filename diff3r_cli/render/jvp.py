"""Forward-mode products Jv of the renderer (for Gauss-Newton products Hv = Jᵀ(Jv)/P + Λv).

``render_jvp(g, cameras, tangent)`` returns the render and its directional derivative
along ``tangent`` (a Gaussians of the same shapes), exactly (``torch.func.jvp`` through the
cpu or torch backend's analytic jvp; on gsplat, which has no forward mode, through the torch
backend on the same device). Only when asked for by name (``exact=False``) is it a central
finite difference

    Jv ≈ (R(θ + h v) − R(θ − h v)) / (2h),   h = eps / max|v|

i.e. the largest tangent component moves its parameter by ``eps``. Default eps = 3e-4 in
float32 (1e-6 in float64).

Accuracy (measured with ``python -m diff3r_cli.render.jvp``: torch backend, float32,
pixel-aligned 64² scene of benchmarks/render.py, tangent N(0,1) in every parameter; error of
the central difference against the exact jvp over rgb and alpha):

    eps      rel. L2 error   median |error| / median |Jv|
    3e-5     43              1.5 %
    1e-4     16              0.5 %
    3e-4     7.1             0.26 %   <- default
    1e-3     4.1             1.8 %
    1e-2     1.4             29 %
    1e-1     0.70            63 %

Typical pixels are accurate to a fraction of a percent, but the L2 error is dominated by
spikes: the renderer is discontinuous (a pair whose α crosses the 1/255 skip threshold jumps
by ≈ 0.004·colour·T), so a difference over 2h that straddles a crossing is off by
jump/(2h), and the number of crossings only shrinks like h. Larger steps trade spikes for
truncation error (the map is strongly non-linear in rotations and scales). In float64 with
eps = 1e-7 on a 32² scene the error was 2e-5 (rgb) and 7e-4 (alpha) relative L2. For
Gauss-Newton products on CUDA prefer ``exact=True``: the torch backend's exact jvp runs on
CUDA too and matches gsplat's renders to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import RenderOutput, render

DEFAULT_EPS = {torch.float32: 3e-4, torch.float64: 1e-6}

def _outputs(o: RenderOutput):
    return o.rgb, o.depth, o.alpha


def render_jvp(gaussians: Gaussians, cameras, tangent: Gaussians, backend: str = "auto",
               background=None, eps: float | None = None,
               exact: bool = True) -> tuple[RenderOutput, RenderOutput]:
    """Render and the directional derivative along ``tangent``: returns ``(out, d_out)``.

    Exact forward-mode AD by default on every backend: "cpu" and "torch" differentiate
    themselves; gsplat has no forward mode, so the torch backend (same conventions, same
    device) supplies the derivative. ``exact=False`` asks, by name, for a central finite
    difference with step ``h = eps / max|tangent|`` through the chosen backend.
    """
    from diff3r_cli.render import resolve_backend

    backend = resolve_backend(backend, gaussians.means)
    if not exact:
        return fd_jvp(gaussians, cameras, tangent, backend=backend, background=background, eps=eps)
    ad_backend = "torch" if backend == "gsplat" else backend
    # Dual tensors (torch.autograd.forward_ad): cheaper than torch.func.jvp, and the compiled
    # backend composites primal and tangent in one pass there.
    with fwAD.dual_level():
        dual = Gaussians(*(fwAD.make_dual(t, v) for t, v in zip(gaussians.tensors(), tangent.tensors())))
        o = render(dual, cameras, background=background, backend=ad_backend)
        pairs = [fwAD.unpack_dual(t) for t in _outputs(o)]
    out = [p.primal for p in pairs]
    dout = [torch.zeros_like(p.primal) if p.tangent is None else p.tangent for p in pairs]
    return RenderOutput(*out), RenderOutput(*dout)


@torch.no_grad()
def fd_jvp(gaussians: Gaussians, cameras, tangent: Gaussians, backend: str = "torch",
           background=None, eps: float | None = None) -> tuple[RenderOutput, RenderOutput]:
    """Central finite-difference Jv for any backend (3 renders); see the module docstring."""
    if eps is None:
        eps = DEFAULT_EPS.get(gaussians.dtype, 1e-3)
    vmax = max((t.abs().max() for t in tangent.tensors() if t.numel()), default=None)
    out = render(gaussians, cameras, background=background, backend=backend)
    if vmax is None or float(vmax) == 0.0:
        zero = RenderOutput(*(torch.zeros_like(t) for t in _outputs(out)))
        return out, zero
    h = eps / float(vmax)
    plus = Gaussians(*(p + h * v for p, v in zip(gaussians.tensors(), tangent.tensors())))
    minus = Gaussians(*(p - h * v for p, v in zip(gaussians.tensors(), tangent.tensors())))
    op = _outputs(render(plus, cameras, background=background, backend=backend))
    om = _outputs(render(minus, cameras, background=background, backend=backend))
    d = [(a - b) / (2 * h) for a, b in zip(op, om)]
    return out, RenderOutput(*d)


def _measure(size: int = 64, eps_list=(3e-5, 1e-4, 3e-4, 1e-3, 1e-2, 1e-1)) -> dict[float, tuple]:
    """Errors of the float32 central difference against the exact jvp (torch backend):
    {eps: (relative L2, median |error| / median |Jv|)} over rgb and alpha."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from render import pixel_aligned_scene  # type: ignore

    g, cams = pixel_aligned_scene(size, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    tan = g.map(lambda t: torch.randn(t.shape, generator=gen))
    _, exact = render_jvp(g, cams, tan, backend="torch")
    ex = torch.cat([exact.rgb.reshape(-1), exact.alpha.reshape(-1)])
    res = {}
    for eps in eps_list:
        _, fd = fd_jvp(g, cams, tan, backend="torch", eps=eps)
        v = torch.cat([fd.rgb.reshape(-1), fd.alpha.reshape(-1)])
        err = (v - ex).abs()
        res[eps] = (float((v - ex).norm() / ex.norm()), float(err.median() / ex.abs().median()))
    return res


if __name__ == "__main__":
    torch.set_num_threads(2)
    for e, (l2, med) in _measure().items():
        print(f"eps={e:g}  relative L2 error {l2:.3g}  median relative error {100 * med:.2f} %")
