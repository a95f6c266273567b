"""The torch and compiled cpu rasterizers vs an independent brute-force reference (every
pixel x every Gaussian, float64, sequential front-to-back loop with gsplat's classic-mode
rules), plus autograd, forward-mode AD and finite-difference checks. Tests taking a
``backend`` run on both backends (``cpu`` skips only where no C++ compiler exists)."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.gaussians import Gaussians
from diff3r_cli.render import render
from diff3r_cli.render.sh import sh_basis
from diff3r_cli.render.torch_backend import render_torch

from render_backends import BACKENDS, renderer




# ---------------------------------------------------------------------------------------
# Independent reference
# ---------------------------------------------------------------------------------------


def _ref_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (w,x,y,z) -> rotation via R = (w²-|v|²)I + 2vvᵀ + 2w[v]x."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, v = q[:, 0], q[:, 1:]
    eye = torch.eye(3, dtype=q.dtype).expand(len(q), 3, 3)
    cross = torch.zeros(len(q), 3, 3, dtype=q.dtype)
    cross[:, 0, 1], cross[:, 0, 2] = -v[:, 2], v[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = v[:, 2], -v[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -v[:, 1], v[:, 0]
    return ((w * w - (v * v).sum(1))[:, None, None] * eye + 2 * v[:, :, None] * v[:, None, :]
            + 2 * w[:, None, None] * cross)


def _ref_sh(deg: int, d: torch.Tensor) -> torch.Tensor:
    """Real SH (3DGS sign convention) written with unit-sphere simplified polynomials."""
    d = d / d.norm(dim=-1, keepdim=True)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.5 / math.sqrt(math.pi))]
    if deg >= 1:
        c1 = math.sqrt(3 / (4 * math.pi))
        out += [-c1 * y, c1 * z, -c1 * x]
    if deg >= 2:
        c = math.sqrt(15 / (4 * math.pi))
        c20 = math.sqrt(5 / (16 * math.pi))
        out += [c * x * y, -c * y * z, c20 * (3 * z * z - 1), -c * x * z, 0.5 * c * (x * x - y * y)]
    if deg >= 3:
        a = math.sqrt(35 / (32 * math.pi))
        b = math.sqrt(105 / (4 * math.pi))
        e = math.sqrt(21 / (32 * math.pi))
        f = math.sqrt(7 / (16 * math.pi))
        out += [-a * y * (3 * x * x - y * y), b * x * y * z, -e * y * (5 * z * z - 1),
                f * z * (5 * z * z - 3), -e * x * (5 * z * z - 1), 0.5 * b * z * (x * x - y * y),
                -a * x * (x * x - 3 * y * y)]
    return torch.stack(out, -1)


def ref_render(g: Gaussians, cams: Cameras, bg=None, cutoff: bool = True):
    """Brute force: dense α for every pixel and Gaussian, then gsplat's sequential loop."""
    g = g.to(dtype=torch.float64)
    K, w2c = cams.K.double(), cams.w2c.double()
    W, H = cams.width, cams.height
    C = len(K)
    rgbs, depths, alphas = [], [], []
    Rg = _ref_rotmat(g.quats)
    S2 = torch.diag_embed(torch.exp(2 * g.log_scales))
    cov_w = Rg @ S2 @ Rg.transpose(1, 2)
    opac = torch.sigmoid(g.opacity_logits)
    deg = g.sh_degree
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    pix = torch.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5], -1)  # (P,2)
    for ci in range(C):
        R, t = w2c[ci, :3, :3], w2c[ci, :3, 3]
        fx, fy, cx, cy = K[ci, 0, 0], K[ci, 1, 1], K[ci, 0, 2], K[ci, 1, 2]
        pc = g.means @ R.T + t
        x, y, z = pc.unbind(-1)
        vis = (z >= 0.01) & (z <= 1e10)
        zs = torch.where(vis, z, torch.ones_like(z))
        u = (x / zs).clamp(-(cx / fx + 0.15 * W / fx), (W - cx) / fx + 0.15 * W / fx)
        v = (y / zs).clamp(-(cy / fy + 0.15 * H / fy), (H - cy) / fy + 0.15 * H / fy)
        n = len(z)
        J = torch.zeros(n, 2, 3, dtype=torch.float64)
        J[:, 0, 0] = fx / zs
        J[:, 0, 2] = -fx * u / zs
        J[:, 1, 1] = fy / zs
        J[:, 1, 2] = -fy * v / zs
        cov2 = J @ (R @ cov_w @ R.T) @ J.transpose(1, 2) + 0.3 * torch.eye(2, dtype=torch.float64)
        inv = torch.linalg.inv(cov2)
        mu = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
        campos = -R.T @ t
        col = (_ref_sh(deg, g.means - campos)[:, :, None] * g.sh).sum(1) + 0.5
        col = col.clamp_min(0)
        d = pix[:, None, :] - mu[None]  # (P,N,2)
        q = torch.einsum("pni,nij,pnj->pn", d, inv, d)
        al = (opac[None] * torch.exp(-0.5 * q)).clamp_max(0.999)
        al = torch.where(vis[None], al, torch.zeros_like(al))
        order = torch.sort(z, stable=True).indices
        P = pix.shape[0]
        T = torch.ones(P, dtype=torch.float64)
        done = torch.zeros(P, dtype=torch.bool)
        rgb = torch.zeros(P, 3, dtype=torch.float64)
        dep = torch.zeros(P, dtype=torch.float64)
        acc = torch.zeros(P, dtype=torch.float64)
        for j in order.tolist():
            a = al[:, j]
            use = (~done) & (a >= 1 / 255)
            nt = T * (1 - a)
            stop = use & (nt <= 1e-4) & cutoff
            done |= stop
            use &= ~stop
            wgt = torch.where(use, a * T, torch.zeros_like(a))
            rgb += wgt[:, None] * col[j]
            dep += wgt * z[j]
            acc += wgt
            T = torch.where(use, nt, T)
        if bg is not None:
            rgb += T[:, None] * torch.as_tensor(bg, dtype=torch.float64)
        dep = torch.where(acc > 0, dep / acc.clamp_min(1e-300), torch.zeros_like(dep))
        rgbs.append(rgb.reshape(H, W, 3))
        depths.append(dep.reshape(H, W))
        alphas.append(acc.reshape(H, W))
    return torch.stack(rgbs), torch.stack(depths), torch.stack(alphas)


# ---------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------


def _look_at(eye, target) -> torch.Tensor:
    """w2c of an OpenCV camera at eye looking at target (y down)."""
    eye, target = torch.as_tensor(eye, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    f = target - eye
    f = f / f.norm()
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    r = torch.linalg.cross(f, up)
    r = r / r.norm()
    d = torch.linalg.cross(f, r)
    R = torch.stack([r, d, f])  # rows: camera axes in world
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def make_cams(W=37, H=29, n=2) -> Cameras:
    K = torch.tensor([[30.0, 0, W / 2 + 0.7], [0, 33.0, H / 2 - 1.1], [0, 0, 1]], dtype=torch.float64)
    eyes = [(0.0, 0.0, -3.0), (1.6, -0.4, -2.5), (-1.0, 0.5, -2.8)]
    w2c = torch.stack([_look_at(eyes[i], (0.0, 0.0, 0.0)) for i in range(n)])
    return Cameras(K[None].repeat(n, 1, 1), w2c, W, H)


def make_scene(n=60, deg=3, seed=0, dtype=torch.float64) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    means = r(n, 3) * 0.8
    means[: n // 10, 2] = -3.5 + 0.3 * r(n // 10)     # behind / at the first camera
    means[n // 10: n // 5, 0] += 2.5                   # partly off-screen
    log_scales = r(n, 3) * 0.4 - 2.3
    log_scales[-1] = torch.tensor([0.3, 0.2, 0.1])     # one huge Gaussian
    log_scales[-2] = -30.0                              # degenerate (zero size)
    quats = r(n, 4)
    opac = r(n) * 1.5 + 0.5
    sh = r(n, (deg + 1) ** 2, 3) * 0.4
    g = Gaussians(means, log_scales, quats, opac, sh)
    return g.to(dtype=dtype)


def _check(g, cams, bg, tol, backend="torch"):
    ref = ref_render(g, cams, bg)
    out = renderer(backend)(g, cams.to(dtype=g.dtype), background=None if bg is None else torch.as_tensor(bg, dtype=g.dtype))
    for got, want, name in zip((out.rgb, out.depth, out.alpha), ref, ("rgb", "depth", "alpha")):
        assert got.shape == want.shape, name
        err = (got.double() - want).abs().max().item()
        # depth is in scene units (~3): compare relative to its scale
        scale = 4.0 if name == "depth" else 1.0
        assert err < tol * scale, f"{name}: max abs error {err}"
    return ref


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_scene_sh3_two_cameras_background(dtype, tol, seed, backend):
    g = make_scene(n=60, deg=3, seed=seed, dtype=dtype)
    ref = _check(g, make_cams(37, 29, 2), (0.2, 0.5, 0.9), tol, backend)
    # the scene must actually exercise things: covered pixels and empty pixels
    assert (ref[2] > 0.5).any() and (ref[2] < 0.2).any()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sh0_three_cameras_no_background(dtype, tol, backend):
    g = make_scene(n=50, deg=0, seed=3, dtype=dtype)
    _check(g, make_cams(20, 33, 3), None, tol, backend)


def _opaque_stack(dtype, opacity_logit: float = 4.0):
    # 12 large, opaque layers in front of the camera: each pixel stops after a few layers.
    # With opacity_logit = 8 (σ = 0.9997) the α cap of 0.999 decides the result.
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(-1.0, 1.0, n)
    means[:, :2] = 0.05 * torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    log_scales = torch.full((n, 3), math.log(0.5), dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    opac = torch.full((n,), opacity_logit, dtype=torch.float64)  # σ(4) = 0.982
    sh = torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return Gaussians(means, log_scales, quats, opac, sh).to(dtype=dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opacity_logit", [4.0, 8.0])
def test_opaque_stack_transmittance_cutoff(dtype, tol, backend, opacity_logit):
    g = _opaque_stack(dtype, opacity_logit)
    cams = make_cams(24, 16, 1)
    ref = _check(g, cams, (1.0, 0.0, 0.0), tol, backend)
    # the cut-off really fires: centre pixels saturate without background showing
    assert ref[2].max() > 0.999
    # ... and it matters: without the cut-off the result differs by far more than the tolerance
    no_cut = ref_render(g, cams, (1.0, 0.0, 0.0), cutoff=False)
    out = renderer(backend)(g.to(dtype=torch.float64), cams,
                            background=torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert (no_cut[0] - out.rgb).abs().max() > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gaussians_render_background(backend):
    g = make_scene(n=10, seed=0)[:0]
    cams = make_cams(8, 6, 2)
    out = renderer(backend)(g, cams, background=torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert out.rgb.shape == (2, 6, 8, 3)
    assert torch.equal(out.rgb[0, 3, 4], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_behind_camera_is_background_and_backward_works(backend):
    g = make_scene(n=10, seed=0)
    g.means[:, 2] = -10.0
    g = g.map(lambda t: t.clone().requires_grad_(True))
    out = renderer(backend)(g, make_cams(8, 6, 1), background=torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(out.rgb, torch.ones_like(out.rgb))
    out.rgb.sum().backward()
    assert g.means.grad is not None and g.means.grad.abs().max() == 0


@pytest.mark.parametrize("scene", ["random", "opaque"])
def test_chunked_binning_matches_unchunked(scene):
    if scene == "random":
        g, cams = make_scene(n=60, seed=2), make_cams(37, 29, 2)
    else:
        g, cams = _opaque_stack(torch.float64), make_cams(24, 16, 1)
    a = render_torch(g, cams)
    b = render_torch(g, cams, chunk=97)               # small candidate grids
    c = render_torch(g, cams, max_candidates=300)     # front-to-back depth chunks
    for o in (b, c):
        for name in ("rgb", "depth", "alpha"):
            assert torch.allclose(getattr(a, name), getattr(o, name), atol=1e-12), name
    # gradients through the depth-chunked path are the same too
    grads = []
    for mc in (None, 300):
        p = g.map(lambda t: t.clone().requires_grad_(True))
        kw = {} if mc is None else {"max_candidates": mc}
        o = render_torch(p, cams, **kw)
        (o.rgb.sum() + o.depth.sum()).backward()
        grads.append(torch.cat([t.grad.reshape(-1) for t in p.tensors()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_depth_chunks_skip_pixels_that_are_done():
    # 40 opaque full-screen layers: with depth chunks, the layers behind the cut-off are
    # never paired with the saturated pixels.
    from diff3r_cli.render import torch_backend as tb
    n = 40
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(2.0, 6.0, n)
    g = Gaussians(means, torch.full((n, 3), 1.5, dtype=torch.float64),
                  torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1),
                  torch.full((n,), 6.0, dtype=torch.float64), torch.rand(n, 1, 3, dtype=torch.float64))
    cams = make_cams(16, 12, 1)
    cams = Cameras(cams.K, torch.eye(4, dtype=torch.float64)[None], 16, 12)
    ent = tb.project_gaussians(g, cams.K, cams.w2c, 16, 12)
    full = tb.bin_pairs(ent, 1, 16, 12)
    chunked = tb.bin_pairs(ent, 1, 16, 12, max_candidates=2 * 16 * 12)
    assert torch.equal(full.entry, chunked.entry) and torch.equal(full.pixel, chunked.pixel)
    assert torch.allclose(full.transmittance, chunked.transmittance, atol=1e-12)
    assert full.num <= 4 * 16 * 12                   # ~3 layers per pixel survive the cut-off
    assert full.depth_chunks == 1 and chunked.depth_chunks >= 10
    assert full.pairs_sorted == n * 16 * 12           # every layer covers every pixel
    assert chunked.pairs_sorted <= 8 * 16 * 12   # ... but done pixels take no more pairs


def test_sh_basis_orthonormal_and_matches_reference():
    # Quadrature on the sphere (Gauss-Legendre in cos θ x uniform φ) is exact for degree <= 6.
    import numpy as np
    nodes, weights = np.polynomial.legendre.leggauss(12)
    ct = torch.tensor(nodes, dtype=torch.float64)
    wt = torch.tensor(weights, dtype=torch.float64)
    phi = torch.arange(24, dtype=torch.float64) * (2 * math.pi / 24)
    st = (1 - ct ** 2).sqrt()
    d = torch.stack([st[:, None] * phi.cos()[None], st[:, None] * phi.sin()[None],
                     ct[:, None].expand(-1, 24)], -1).reshape(-1, 3)
    w = (wt[:, None] * (2 * math.pi / 24)).expand(-1, 24).reshape(-1)
    Y = sh_basis(3, d)
    gram = (Y * w[:, None]).T @ Y
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Y, _ref_sh(3, d), atol=1e-12)


# ---------------------------------------------------------------------------------------
# Derivatives
# ---------------------------------------------------------------------------------------


def _tiny_scene():
    gen = torch.Generator().manual_seed(11)
    n = 5
    means = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.3
    log_scales = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.2 - 1.6
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    opac = torch.randn(n, generator=gen, dtype=torch.float64) * 0.5
    sh = torch.randn(n, 4, 3, generator=gen, dtype=torch.float64) * 0.3
    return Gaussians(means, log_scales, quats, opac, sh), make_cams(9, 7, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field", ["means", "log_scales", "quats", "opacity_logits", "sh"])
def test_gradcheck_each_parameter_group(field, backend):
    g, cams = _tiny_scene()
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)
    tens = list(g.tensors())
    names = ("means", "log_scales", "quats", "opacity_logits", "sh")
    i = names.index(field)

    def f(x):
        t = list(tens)
        t[i] = x
        out = renderer(backend)(Gaussians(*t), cams, background=bg)
        return out.rgb, out.depth, out.alpha

    x = tens[i].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def _fd_and_jvp(g, cams, tangent, eps=1e-5, backend="torch"):
    flat, tflat = g.flatten(), tangent.flatten()

    def f(v):
        o = renderer(backend)(g.unflatten(v), cams)
        return torch.cat([o.rgb.reshape(-1), o.depth.reshape(-1), o.alpha.reshape(-1)])

    out, jv = torch.func.jvp(f, (flat,), (tflat,))
    fd = (f(flat + eps * tflat) - f(flat - eps * tflat)) / (2 * eps)
    return f, flat, tflat, out, jv, fd


@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_matches_central_difference_and_forward_ad(backend):
    g, cams = _tiny_scene()
    gen = torch.Generator().manual_seed(3)
    tangent = g.unflatten(torch.randn(g.flatten().shape, generator=gen, dtype=torch.float64))
    f, flat, tflat, out, jv, fd = _fd_and_jvp(g, cams, tangent, backend=backend)
    assert jv.abs().max() > 1e-3
    assert (jv - fd).norm() <= 0.01 * fd.norm()
    assert (jv - fd).abs().max() <= 0.01 * fd.abs().max()
    # the low-level forward-mode API gives the same tangent
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        o = f(fwAD.make_dual(flat, tflat))
        jv2 = fwAD.unpack_dual(o).tangent
    assert torch.allclose(jv, jv2, atol=1e-12)
    # and it agrees with the reverse-mode VJP: <u, Jv> = <Jᵀu, v>
    u = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    x = flat.clone().requires_grad_(True)
    (jtu,) = torch.autograd.grad(f(x), x, u)
    assert torch.allclose((u * jv).sum(), (jtu * tflat).sum(), rtol=1e-9, atol=1e-12)


def _margins(cams: Cameras) -> torch.Tensor:
    """(C,4) gsplat's Jacobian clamp limits on x/z and y/z: +x, -x, +y, -y (1.3x the frustum)."""
    K = cams.K.double()
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    W, H = cams.width, cams.height
    return torch.stack([(W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx,
                        (H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy], -1)


def off_frustum_scene() -> tuple[Gaussians, Cameras, torch.Tensor]:
    """Large Gaussians whose centres lie beyond the Jacobian clamp margin on every side (and at
    the corners) of camera 0 while their footprints still reach the image, plus a few visible
    ones. Returns (Gaussians, 2 cameras, mask of the off-margin Gaussians)."""
    W, H = 37, 29
    K = make_cams(W, H, 1).K[0]
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.25  # the second camera a little to the right
    cams = Cameras(K[None].repeat(2, 1, 1), w2c, W, H)
    lim = _margins(cams)[0]
    gen = torch.Generator().manual_seed(17)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    # (x/z, y/z) as multiples of the margins: left, right, top, bottom, two corners
    sides = torch.tensor([[1.12, 0.1], [-1.12, -0.2], [0.2, 1.15], [-0.1, -1.15], [1.08, 1.1], [-1.1, 1.08]],
                         dtype=torch.float64)
    ratio = torch.stack([torch.where(sides[:, 0] > 0, lim[0], lim[1]) * sides[:, 0],
                         torch.where(sides[:, 1] > 0, lim[2], lim[3]) * sides[:, 1]], -1)
    n_off, n_in = len(sides), 6
    z = torch.cat([2.6 + 0.5 * torch.rand(n_off, generator=gen, dtype=torch.float64),
                   2.0 + torch.rand(n_in, generator=gen, dtype=torch.float64)])
    uv = torch.cat([ratio, 0.35 * r(n_in, 2)])
    means = torch.cat([uv * z[:, None], z[:, None]], -1)
    log_scales = torch.cat([math.log(0.55) + 0.25 * r(n_off, 3), math.log(0.15) + 0.2 * r(n_in, 3)])
    g = Gaussians(means, log_scales, r(n_off + n_in, 4), 0.6 + 0.4 * r(n_off + n_in),
                  0.4 * r(n_off + n_in, 4, 3))
    off = torch.zeros(n_off + n_in, dtype=torch.bool)
    off[:n_off] = True
    return g, cams, off


def test_off_frustum_scene_exercises_the_clamped_jacobian():
    # the scene is not vacuous: the off-margin centres are clamped in the Jacobian, and their
    # footprints alone still cover a good part of camera 0's image
    g, cams, off = off_frustum_scene()
    lim = _margins(cams)[0]
    u, v = g.means[off, 0] / g.means[off, 2], g.means[off, 1] / g.means[off, 2]
    assert bool(((u > lim[0]) | (u < -lim[1]) | (v > lim[2]) | (v < -lim[3])).all())
    _, _, alpha = ref_render(g[off], cams[:1])
    assert float((alpha > 0.05).double().mean()) > 0.2
    # ... and the backends agree with the reference on it
    for backend in BACKENDS:
        _check(g, cams, (0.2, 0.5, 0.9), 1e-9, backend)


def _deriv_scene(name: str) -> tuple[Gaussians, Cameras]:
    """Scenes whose derivatives take branches the random scenes rarely reach."""
    if name == "saturated":  # α = min(σ(8)·exp(-q), 0.999): clamped at the centres, free elsewhere
        return _opaque_stack(torch.float64, 8.0), make_cams(24, 16, 1)
    g, cams, _ = off_frustum_scene()
    return g, cams


def _deriv_problem(scene: str, backend: str) -> tuple[Gaussians, torch.Tensor, Callable, Callable]:
    """(Gaussians, flat parameters, reference, backend): the last two map a flat parameter
    vector to every output (rgb, depth, α over a background) as one vector."""
    g, cams = _deriv_scene(scene)
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)

    def f_ref(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ref_render(g.unflatten(v), cams, bg)])

    def f_new(v: torch.Tensor) -> torch.Tensor:
        o = renderer(backend)(g.unflatten(v), cams, background=bg)
        return torch.cat([o.rgb.reshape(-1), o.depth.reshape(-1), o.alpha.reshape(-1)])

    return g, g.flatten(), f_ref, f_new


def _group_errors(got: torch.Tensor, want: torch.Tensor, g: Gaussians) -> dict:
    """Max abs error of each parameter group, relative to that group's largest reference entry."""
    errs = {}
    for name, a, b in zip(("means", "log_scales", "quats", "opacity_logits", "sh"),
                          g.unflatten(got).tensors(), g.unflatten(want).tensors()):
        # a group the scene does not move (the stack's isotropic quats) must get exactly zero
        errs[name] = float((a - b).abs().max() / b.abs().max()) if b.abs().max() > 0 else float(a.abs().max())
    return errs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scene", ["saturated", "off_frustum"])
def test_gradients_match_autograd_of_the_reference(scene, backend):
    # The brute-force reference is plain torch: autograd through it gives the true gradient,
    # with zero derivative through a clamped α (0.999) and through a clamped Jacobian point.
    g, flat, f_ref, f_new = _deriv_problem(scene, backend)
    u = torch.randn(f_ref(flat).shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grads = []
    for f in (f_ref, f_new):
        x = flat.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((f(x) * u).sum(), x)
        grads.append(grad)
    errs = _group_errors(grads[1], grads[0], g)
    assert max(errs.values()) < 1e-8, errs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scene", ["saturated", "off_frustum"])
def test_jvp_matches_forward_ad_of_the_reference(scene, backend):
    # forward-mode AD through the brute-force reference gives the true tangent
    _, flat, f_ref, f_new = _deriv_problem(scene, backend)
    tangent = torch.randn(flat.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    _, want = torch.func.jvp(f_ref, (flat,), (tangent,))
    _, got = torch.func.jvp(f_new, (flat,), (tangent,))
    assert want.abs().max() > 0.1
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-8, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_gradients_close_to_float64(backend):
    g, cams = _tiny_scene()
    outs = []
    for dt in (torch.float64, torch.float32):
        gg = g.to(dtype=dt).map(lambda t: t.clone().requires_grad_(True))
        o = renderer(backend)(gg, cams)
        (o.rgb.sum() + o.alpha.sum()).backward()
        outs.append(torch.cat([t.grad.double().reshape(-1) for t in gg.tensors()]))
    assert (outs[0] - outs[1]).norm() <= 1e-4 * outs[0].norm()


def test_backend_dispatch_and_errors():
    g, cams = _tiny_scene()
    out = render(g, cams)  # CPU -> the compiled backend (or torch where it cannot be built)
    assert out.rgb.shape == (2, 7, 9, 3)
    with pytest.raises(ValueError):
        render(g, cams, backend="nope")
    with pytest.raises(ValueError):
        render_torch(g, cams, background=torch.zeros(4, dtype=torch.float64))


def test_render_jvp_module_torch_exact_and_fd():
    from diff3r_cli.render.jvp import fd_jvp, render_jvp
    g, cams = _tiny_scene()
    gen = torch.Generator().manual_seed(9)
    tangent = g.unflatten(torch.randn(g.flatten().shape, generator=gen, dtype=torch.float64))
    out, d = render_jvp(g, cams, tangent, backend="torch")
    ref = render_torch(g, cams)
    assert torch.equal(out.rgb, ref.rgb)
    out2, d_fd = fd_jvp(g, cams, tangent, backend="torch")  # float64 default step
    for name in ("rgb", "depth", "alpha"):
        a, b = getattr(d, name), getattr(d_fd, name)
        assert (a - b).norm() <= 0.01 * a.norm(), name
    # a zero tangent gives a zero derivative without dividing by zero
    zt = tangent.map(torch.zeros_like)
    _, dz = fd_jvp(g, cams, zt, backend="torch")
    assert dz.rgb.abs().max() == 0
    with pytest.raises(ValueError):
        render_jvp(g, cams, tangent, backend="nope")


def test_gsplat_backend_refuses_cpu_tensors():
    g, cams = _tiny_scene()
    with pytest.raises(ValueError, match="CUDA"):
        render(g, cams, backend="gsplat")


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_invisible_pairs_gives_background_and_zero_gradients(backend):
    # Tiny Gaussians projecting exactly onto pixel corners with opacity just above 1/255:
    # they survive culling, but every pixel centre sees α = o·exp(-σ) < 1/255.
    K = torch.tensor([[20.0, 0, 5.0], [0, 20.0, 4.0], [0, 0, 1]], dtype=torch.float64)
    cams = Cameras(K[None], torch.eye(4, dtype=torch.float64)[None], 10, 8)
    uv = torch.tensor([[2.0, 3.0], [5.0, 5.0], [7.0, 1.0]], dtype=torch.float64)
    z = torch.full((3, 1), 3.0, dtype=torch.float64)
    means = torch.cat([(uv - K[[0, 1], [2, 2]]) / 20.0 * z, z], 1)
    n = len(means)
    g = Gaussians(means, torch.full((n, 3), -12.0, dtype=torch.float64),
                  torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1),
                  torch.full((n,), math.log(0.0040 / 0.9960), dtype=torch.float64),
                  torch.zeros(n, 1, 3, dtype=torch.float64))
    g = g.map(lambda t: t.clone().requires_grad_(True))
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = renderer(backend)(g, cams, background=bg)
    assert torch.allclose(out.rgb, bg.expand_as(out.rgb)) and out.alpha.abs().max() == 0
    out.rgb.sum().backward()
    assert g.opacity_logits.grad.abs().max() == 0
    # brighter copies of the same Gaussians are drawn (the test is not vacuous)
    g2 = g.detach().clone()
    g2.opacity_logits[:] = 0.0
    assert renderer(backend)(g2, cams).alpha.max() > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_vjp_trick_gives_exact_jvp(backend):
    # Jv = d/du <Jᵀu, v>: the compositing backward is linear in u and built from
    # differentiable ops, so the optimiser's "reverse" jvp mode is exact.
    g, cams = _tiny_scene()
    flat = g.flatten().clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(21)
    v = torch.randn(flat.shape, generator=gen, dtype=torch.float64)

    def f(x):
        return renderer(backend)(g.unflatten(x), cams).rgb.reshape(-1)

    r = f(flat)
    u = torch.zeros_like(r, requires_grad=True)
    (jtu,) = torch.autograd.grad(r, flat, u, create_graph=True)
    (jv_rev,) = torch.autograd.grad(jtu, u, v)
    _, jv_fwd = torch.func.jvp(f, (flat.detach(),), (v,))
    assert jv_fwd.abs().max() > 1e-3
    assert torch.allclose(jv_rev, jv_fwd, atol=1e-10, rtol=1e-8)
