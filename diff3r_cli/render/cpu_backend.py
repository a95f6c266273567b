"""Compiled CPU backend: the torch backend's conventions in C++ (``csrc/rasterizer.cpp``).

Two stages, as gsplat names them: *projection* (one (camera, Gaussian) entry at a time:
EWA covariance, culling, SH colour) and *rasterization* (one pixel at a time over a
depth-sorted list of the entries whose footprint box touches its tile). Each stage is an
``autograd.Function`` with a hand-written backward and an exact forward-mode jvp, so
``backward``, ``torch.func.jvp`` and ``torch.autograd.forward_ad`` all work. The backward of
each stage is itself a Function whose own backward (with respect to the incoming gradient)
is the stage's jvp, so the double-vjp trick ``Jv = ∂/∂u ⟨Jᵀu, v⟩`` is exact too (as on the
torch backend, second derivatives with respect to the parameters are not provided).

The arithmetic per (pixel, Gaussian) pair is the torch backend's; the differences are
rounding only (colour, depth and alpha are accumulated in float64 per pixel). Work is split
over tiles with OpenMP using ``torch.get_num_threads()`` threads; results are bit-identical
from run to run at a fixed thread count.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import RenderOutput
from diff3r_cli.render import cpu_ext
from diff3r_cli.render.torch_backend import _empty_output, _prepare_background

# Square tiles of this many pixels per side group the entries each pixel looks at. Each pair
# is evaluated once whatever the size; larger tiles mean fewer (entry, tile) list items: 16
# was 5-8 % faster than 8 on 256² pixel-aligned scenes at 2 threads (32 no better).
DEFAULT_TILE = 16


def _ops():
    if not cpu_ext.load():
        raise RuntimeError(f"the compiled CPU rasterizer is not available ({cpu_ext.unavailable_reason()}); "
                           "use backend='torch'")
    return torch.ops.diff3r_cpu


def _zeros_if_none(t, like):
    return torch.zeros_like(like) if t is None else t.contiguous()


class _ProjectBackward(torch.autograd.Function):
    """vjp of the projection; its own backward (w.r.t. the incoming gradient) is the jvp."""

    @staticmethod
    def forward(g_geo, g_feat, params, cam_args, cam, gid):
        return tuple(_ops().project_backward(*params, *cam_args, cam, gid, g_geo.contiguous(),
                                             g_feat.contiguous()))

    @staticmethod
    def setup_context(ctx, inputs, output):
        g_geo, g_feat, params, cam_args, cam, gid = inputs
        ctx.params, ctx.cam_args, ctx.cam, ctx.gid = params, cam_args, cam, gid

    @staticmethod
    def backward(ctx, *v):
        P = ctx.params
        tangents = [_zeros_if_none(t, p) for t, p in zip(v, P)]
        dgeo, dfeat = _ops().project_jvp(*P, *ctx.cam_args, ctx.cam, ctx.gid, *tangents)
        return dgeo, dfeat, None, None, None, None


class _Project(torch.autograd.Function):
    """Gaussians -> per-entry geo (E,6) = mean2d, conic (a,b,c), opacity and feat (E,4) =
    rgb, depth, plus (no derivatives) cam, gid (E,) and the pixel box (E,4) x0,x1,y0,y1."""

    @staticmethod
    def forward(means, log_scales, quats, opacity_logits, sh, K, w2c, campos, width, height):
        geo, feat, cam, gid, box = _ops().project_forward(means, log_scales, quats, opacity_logits, sh,
                                                          K, w2c, campos, width, height)
        return geo, feat, cam, gid, box

    @staticmethod
    def setup_context(ctx, inputs, output):
        means, log_scales, quats, opacity_logits, sh, K, w2c, campos, width, height = inputs
        geo, feat, cam, gid, box = output
        ctx.mark_non_differentiable(cam, gid, box)
        ctx.save_for_backward(means, log_scales, quats, opacity_logits, sh, cam, gid)
        ctx.save_for_forward(means, log_scales, quats, opacity_logits, sh, cam, gid)
        ctx.cam_args = (K, w2c, campos, width, height)

    @staticmethod
    def backward(ctx, g_geo, g_feat, *_):
        means, log_scales, quats, opacity_logits, sh, cam, gid = ctx.saved_tensors
        params = (means.detach(), log_scales.detach(), quats.detach(), opacity_logits.detach(), sh.detach())
        if g_geo is None:
            g_geo = torch.zeros(cam.shape[0], 6, dtype=means.dtype)
        if g_feat is None:
            g_feat = torch.zeros(cam.shape[0], 4, dtype=means.dtype)
        grads = _ProjectBackward.apply(g_geo, g_feat, params, ctx.cam_args, cam, gid)
        return (*grads, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, dm, dl, dq, do, dsh, *_):
        means, log_scales, quats, opacity_logits, sh, cam, gid = ctx.saved_tensors
        P = (means, log_scales, quats, opacity_logits, sh)
        tangents = [_zeros_if_none(t, p) for t, p in zip((dm, dl, dq, do, dsh), P)]
        dgeo, dfeat = _ops().project_jvp(*P, *ctx.cam_args, cam, gid, *tangents)
        return dgeo, dfeat, None, None, None


class _RasterBackward(torch.autograd.Function):
    """vjp of the rasterization; its own backward (w.r.t. the pixel gradient) is the jvp."""

    @staticmethod
    def forward(grad, geo, feat, bins, state):
        return tuple(_ops().raster_backward(geo, feat, *bins, *state, grad.contiguous()))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, geo, feat, bins, state = inputs
        ctx.geo, ctx.feat, ctx.bins = geo, feat, bins

    @staticmethod
    def backward(ctx, vgeo, vfeat):
        vgeo = _zeros_if_none(vgeo, ctx.geo)
        vfeat = _zeros_if_none(vfeat, ctx.feat)
        return _ops().raster_jvp(ctx.geo, ctx.feat, *ctx.bins, vgeo, vfeat), None, None, None, None


class _Raster(torch.autograd.Function):
    """Front-to-back compositing: (geo, feat) -> (C·H·W, 5) = Σ w·rgb, Σ w·z, Σ w."""

    @staticmethod
    def forward(geo, feat, bins):
        out, t_final, last = _ops().raster_forward(geo, feat, *bins)
        return out, t_final, last

    @staticmethod
    def setup_context(ctx, inputs, output):
        geo, feat, bins = inputs
        out, t_final, last = output
        ctx.mark_non_differentiable(t_final, last)
        ctx.save_for_backward(geo, feat, t_final, last)
        ctx.save_for_forward(geo, feat)
        ctx.bins = bins

    @staticmethod
    def backward(ctx, grad, *_):
        geo, feat, t_final, last = ctx.saved_tensors
        ggeo, gfeat = _RasterBackward.apply(grad, geo.detach(), feat.detach(), ctx.bins, (t_final, last))
        return ggeo, gfeat, None

    @staticmethod
    def jvp(ctx, dgeo, dfeat, _):
        geo, feat = ctx.saved_tensors
        dout = _ops().raster_jvp(geo, feat, *ctx.bins, _zeros_if_none(dgeo, geo), _zeros_if_none(dfeat, feat))
        return dout, None, None


def _fused_forward_ad(geo: torch.Tensor, feat: torch.Tensor, bins: tuple) -> torch.Tensor | None:
    """Under torch.autograd.forward_ad with no reverse-mode graph to build, the composite and
    its tangent in one pass (the autograd.Function path would composite twice: once in
    forward, once in jvp). None when this does not apply."""
    if torch.is_grad_enabled() and (geo.requires_grad or feat.requires_grad):
        return None
    pg, tg = fwAD.unpack_dual(geo)
    pf, tf = fwAD.unpack_dual(feat)
    if tg is None and tf is None:
        return None
    out, tan = _ops().raster_forward_jvp(pg, pf, *bins, _zeros_if_none(tg, pg), _zeros_if_none(tf, pf))
    return fwAD.make_dual(out, tan)


def _fused_project_forward_ad(ts: list, K: torch.Tensor, w2c: torch.Tensor, campos: torch.Tensor, W: int,
                              H: int) -> tuple | None:
    """Under forward-mode AD with no reverse-mode graph to build, the projection and its tangent
    in one dual-number pass (the autograd.Function path would project twice: once in forward,
    once in jvp). None when this does not apply."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return None
    unpacked = [fwAD.unpack_dual(t) for t in ts]
    if all(tan is None for _, tan in unpacked):
        return None
    prim = [p.contiguous() for p, _ in unpacked]
    tans = [_zeros_if_none(tan, p) for p, tan in zip(prim, (tan for _, tan in unpacked))]
    geo, feat, cam, gid, box, tg, tf = _ops().project_forward_jvp(*prim, K, w2c, campos, W, H, *tans)
    return fwAD.make_dual(geo, tg), fwAD.make_dual(feat, tf), cam, gid, box


def render_cpu(gaussians: Gaussians, cameras, background=None, tile: int = DEFAULT_TILE, **kw) -> RenderOutput:
    """Render with the compiled CPU kernel. Same outputs and meaning as ``render_torch``.

    CPU tensors, float32 or float64 (cameras are cast to the Gaussians' dtype); works under
    autograd (first order, plus the double-vjp trick) and forward-mode AD.
    """
    if kw:
        raise TypeError(f"render_cpu got unexpected keyword arguments {sorted(kw)}")
    g = gaussians
    if g.means.device.type != "cpu":
        raise ValueError("the compiled 'cpu' backend needs CPU tensors; use backend='gsplat' or 'torch'")
    if g.means.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the 'cpu' backend renders float32 or float64, not {g.means.dtype}")
    ops = _ops()
    dt = g.means.dtype
    K = cameras.K.to(dtype=dt).contiguous()
    w2c = cameras.w2c.to(dtype=dt).contiguous()
    C, H, W = K.shape[0], cameras.height, cameras.width
    bg = _prepare_background(background, C, g.means)
    if g.num == 0:
        return _empty_output(C, H, W, bg, g.means)
    campos = torch.linalg.inv(w2c)[:, :3, 3].contiguous()
    ts = [t.contiguous() for t in g.tensors()]
    projected = _fused_project_forward_ad(ts, K, w2c, campos, W, H)
    if projected is None:
        projected = _Project.apply(*ts, K, w2c, campos, W, H)
    geo, feat, cam, gid, box = projected
    if cam.numel() == 0:
        return _empty_output(C, H, W, bg, g.means + 0 * sum(t.sum() for t in g.tensors()))
    with torch.no_grad():
        # per-tile entry lists in compositing order: (camera, depth), ties by entry index
        offsets, entries = ops.bin_tiles(box, cam, feat.detach(), C, W, H, tile)
    bins = (box, offsets, entries, C, W, H, tile)
    acc = _fused_forward_ad(geo, feat, bins)
    if acc is None:
        acc = _Raster.apply(geo, feat, bins)[0]
    acc = acc.view(C, H, W, 5)
    alpha = acc[..., 4]
    rgb = acc[..., :3]
    if bg is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * bg[:, None, None, :]
    depth = acc[..., 3] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha)


__all__ = ["render_cpu", "DEFAULT_TILE"]
