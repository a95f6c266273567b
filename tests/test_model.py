"""Predictor: shapes/positivity, geometry of the outputs, cost-volume warping, weights I/O."""

import math

import pytest
import torch

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.gaussians import SH_C0
from diff3r_cli.geometry import quat_to_rotmat
from diff3r_cli.model.costvolume import inverse_depth_planes, plane_sweep_cost, project_planes, warp_features
from diff3r_cli.model.io import load_model, save_model
from diff3r_cli.model.predictor import Predictor, PredictorConfig, build_predictor

TINY = dict(enc_channels=(8, 8), feat_dim=16, num_planes=8, refine_channels=16, head_channels=8, attn_heads=2)


def _rot(axis, angle):
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    Kx = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def _rig(v, h, w, dtype=torch.float32, spread=0.08):
    """v cameras on a small arc looking roughly at the origin-ish region along +z, turned
    ``spread`` radians apart about a slanted axis."""
    K = torch.tensor([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1]], dtype=torch.float64).expand(v, 3, 3)
    w2c = torch.eye(4, dtype=torch.float64).repeat(v, 1, 1)
    for i in range(v):
        w2c[i, :3, :3] = _rot([0.2, 1.0, 0.1], spread * (i - (v - 1) / 2))
        w2c[i, :3, 3] = torch.tensor([0.3 * (i - (v - 1) / 2), 0.05 * i, 0.0])
    return K.to(dtype), w2c.to(dtype)


@pytest.mark.parametrize("v,h,w", [(2, 32, 32), (3, 23, 37)])
def test_predictor_shapes_positivity_finite(v, h, w):
    torch.manual_seed(0)
    model = build_predictor("small", **TINY)
    b = 2
    imgs = torch.rand(b, v, h, w, 3)
    K, w2c = _rig(v, h, w)
    near, far = torch.tensor([0.5, 1.0]), torch.tensor([8.0, 20.0])
    out = model(imgs, K.expand(b, v, 3, 3), w2c.expand(b, v, 4, 4), near, far)
    assert len(out.gaussians) == b and len(out.lam) == b
    n = v * h * w
    for k in range(b):
        g, lam = out.gaussians[k], out.lam[k]
        assert g.num == n and g.sh.shape == (n, 1, 3)
        assert lam.shape == (n, 5) and bool((lam > 0).all())
        assert g.is_finite() and bool(torch.isfinite(lam).all())
        assert torch.allclose(out.log_lam[k].exp(), lam)
        # at initialisation Λ ≈ lam_init / P with P = V·H·W (the energy's pixel normalisation)
        ratio = lam * (v * h * w) / torch.tensor(model.cfg.lam_init)
        assert bool(((ratio > 0.9) & (ratio < 1.1)).all())
        d = out.depth[k]
        assert bool((d >= near[k] * (1 - 1e-4)).all()) and bool((d <= far[k] * (1 + 1e-4)).all())
    assert out.depth.shape == (b, v, h, w) and out.confidence.shape == (b, v, h, w)
    # gradients reach every parameter group of the network from a loss on θ0 and Λ
    loss = sum(g.means.sum() + g.sh.sum() + g.opacity_logits.sum() + g.log_scales.sum() + g.quats.sum()
               for g in out.gaussians) + sum(l.sum() for l in out.lam)
    loss.backward()
    assert model.encoder.stem[0][0].weight.grad is not None
    assert model.log_lam_bias.grad is not None and bool(torch.isfinite(model.log_lam_bias.grad).all())


def test_predictor_geometry_at_init():
    """Means re-project onto their own pixel centres at the predicted depth; scale ~ s0·z/f; colour = pixel."""
    torch.manual_seed(1)
    v, h, w = 2, 16, 20
    cfg = PredictorConfig.preset("small", **TINY)
    model = Predictor(cfg)
    imgs = torch.rand(1, v, h, w, 3)
    # cameras turned ±0.5 rad: far more than the tolerances below, so a Gaussian rotation that
    # ignored the camera (identity instead of camera-to-world) cannot pass
    K, w2c = _rig(v, h, w, torch.float64, spread=1.0)
    out = model.double()(imgs.double(), K[None], w2c[None], torch.tensor([1.0]), torch.tensor([10.0]))
    g = out.gaussians[0]
    cams = Cameras(K, w2c, w, h)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for i in range(v):
        sl = slice(i * h * w, (i + 1) * h * w)
        uv, z = cams[i].project(g.means[sl])
        assert torch.allclose(uv[0, :, 0], xs.reshape(-1).double(), atol=1e-8)
        assert torch.allclose(uv[0, :, 1], ys.reshape(-1).double(), atol=1e-8)
        assert torch.allclose(z[0], out.depth[0, i].reshape(-1), rtol=1e-10)
        f = 0.5 * (K[i, 0, 0] + K[i, 1, 1])
        expected = torch.log(z[0] * cfg.scale_init_px / f)
        # the head starts near zero, so scales sit at s0 * z / f up to a small residual
        assert (g.log_scales[sl] - expected[:, None]).abs().max() < 0.05
        col = 0.5 + SH_C0 * g.sh[sl, 0]
        assert (col - imgs[0, i].reshape(-1, 3).double()).abs().max() < 0.02
        # rotations at init are the camera's axes (camera-frame identity rotated to world)
        R = quat_to_rotmat(g.quats[sl])
        c2w_R = cams[i].c2w[0, :3, :3]
        assert (c2w_R - torch.eye(3, dtype=torch.float64)).abs().max() > 0.4  # the test has teeth
        assert (R - c2w_R).abs().max() < 0.02
    assert torch.allclose(g.opacities.mean(), torch.tensor(cfg.opacity_init, dtype=torch.float64), atol=0.02)


def test_gaussian_rotations_follow_a_rotation_of_the_world():
    """Rotating and shifting the whole world (cameras included) by T leaves the network's view of
    the scene unchanged (it sees only images and relative poses), so every Gaussian must move with
    T: means -> R0 m + t0, rotations -> R0 R. A predictor that dropped the camera-to-world rotation
    of the quaternions, or composed it on the wrong side, breaks this by ~R0 (1 rad here)."""
    torch.manual_seed(4)
    v, h, w = 2, 16, 16
    model = Predictor(PredictorConfig.preset("small", **TINY)).double()
    # a non-trivial head so per-pixel rotations differ from the identity in the camera frame too
    with torch.no_grad():
        model.head.weight.normal_(std=0.05)
    imgs = torch.rand(1, v, h, w, 3, dtype=torch.float64)
    K, w2c = _rig(v, h, w, torch.float64, spread=0.6)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = _rot([1.0, -0.4, 0.7], 1.0)
    T[:3, 3] = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        g = model(imgs, K[None], w2c[None], 1.0, 10.0).gaussians[0]
        g_t = model(imgs, K[None], (w2c @ torch.linalg.inv(T))[None], 1.0, 10.0).gaussians[0]
    R0, t0 = T[:3, :3], T[:3, 3]
    assert torch.allclose(g_t.means, g.means @ R0.T + t0, atol=1e-8)
    assert torch.allclose(quat_to_rotmat(g_t.quats), R0 @ quat_to_rotmat(g.quats), atol=1e-8)
    assert (quat_to_rotmat(g.quats) - torch.eye(3, dtype=torch.float64)).abs().amax(dim=(1, 2)).min() > 0.1


def test_project_planes_matches_camera_projection():
    """Reference pixel at depth d, projected by hand through Cameras.project, lands where we say."""
    h, w = 6, 7
    K, w2c = _rig(2, h, w, torch.float64)
    depths = torch.tensor([[1.5, 4.0, 9.0]], dtype=torch.float64)
    uv, valid = project_planes(K[:1], w2c[:1], K[1:], w2c[1:], depths, h, w)
    cams = Cameras(K, w2c, w, h)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w)], 0).double()
    for di, d in enumerate(depths[0]):
        cam_pts = d * (torch.linalg.inv(K[0]) @ pix)
        world = (cams[0].c2w[0, :3, :3] @ cam_pts + cams[0].c2w[0, :3, 3:]).T
        ref_uv, z = cams[1].project(world)
        assert torch.allclose(uv[0, di], ref_uv[0], atol=1e-9)
        assert bool(valid[0, di].all()) and bool((z > 0).all())


def _plane_features(points):
    """Smooth analytic unit-norm features of 3D points (bilinear resampling is nearly exact,
    and by Cauchy-Schwarz the correlation is largest where the features agree)."""
    x, y, _ = points.unbind(-1)
    p1, p2 = 1.3 * x + 0.4 * y, 0.9 * y - 0.5 * x
    return torch.stack([p1.cos(), p1.sin(), p2.cos(), p2.sin()], dim=0) / math.sqrt(2)


def test_warp_with_true_plane_reproduces_reference_features():
    """Features of a fronto-parallel plane seen by two cameras: warping the source with the
    true plane depth reproduces the reference features; wrong planes do not, and the cost
    volume peaks at the true plane."""
    h, w = 24, 32
    K, w2c = _rig(2, h, w, torch.float64)
    cams = Cameras(K, w2c, w, h)
    d_true = 3.0
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w)], 0).double()

    def plane_points(view):
        # rays of `view` intersected with the plane z_ref = d_true of camera 0
        c2w = cams[view].c2w[0]
        dirs = c2w[:3, :3] @ (torch.linalg.inv(K[view]) @ pix)
        origin = c2w[:3, 3:]
        w2c0 = w2c[0]
        # z_ref(origin + s*dir) = d_true  -> solve for s
        zo = (w2c0[2, :3] @ origin) + w2c0[2, 3]
        zd = w2c0[2, :3] @ dirs
        s = (d_true - zo) / zd
        return (origin + s * dirs).T

    f_ref = _plane_features(plane_points(0)).reshape(1, 4, h, w)
    f_src = _plane_features(plane_points(1)).reshape(1, 4, h, w)
    planes = torch.tensor([[1.0, 2.0, d_true, 5.0, 8.0]], dtype=torch.float64)
    warped, inside = warp_features(f_src, K[:1], w2c[:1], K[1:], w2c[1:], planes)
    # stay one pixel away from the source border (bilinear sampling with zero padding there)
    uv, _ = project_planes(K[:1], w2c[:1], K[1:], w2c[1:], planes, h, w)
    interior = ((uv[..., 0] > 1) & (uv[..., 0] < w - 1) & (uv[..., 1] > 1) & (uv[..., 1] < h - 1)).reshape(1, 5, h, w)
    m = interior[0, 2]
    assert m.float().mean() > 0.5
    err_true = (warped[0, 2] - f_ref[0]).abs()[:, m].max()
    assert err_true < 0.03, err_true
    for k in (0, 4):
        mk = interior[0, k] & m
        assert (warped[0, k] - f_ref[0]).abs()[:, mk].mean() > 5 * (warped[0, 2] - f_ref[0]).abs()[:, mk].mean()
    # The correlation cost equals |f|^2/sqrt(C) = 1/2 at the true plane and peaks there.
    feat = torch.stack([f_ref[0], f_src[0]])[None]
    cost = plane_sweep_cost(feat, K[None], w2c[None], 1.0 / planes)
    assert (cost[0, 0, 2][m] - 0.5).abs().max() < 0.02
    best = cost[0, 0][:, m].mean(-1).argmax()
    assert int(best) == 2


class _PlaneEncoder(torch.nn.Module):
    """Stands in for the trained encoder: fixed analytic features at 1/4 resolution (and zeros at
    1/1 and 1/2), so what the cost volume shows depends on the wiring alone, not on weights."""

    def __init__(self, f4: torch.Tensor, c0: int, c1: int):
        super().__init__()
        self.f4, self.c0, self.c1 = f4, c0, c1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        return (x.new_zeros(n, self.c0, h, w), x.new_zeros(n, self.c1, h // 2, w // 2), self.f4.to(x.dtype))


def test_predictor_builds_the_cost_volume_at_feature_resolution(monkeypatch):
    """A textured fronto-parallel plane at depth 2 seen by two cameras 0.4 apart: with encoder
    features that are exact functions of the plane's points, the cost volume the predictor
    builds (intrinsics scaled to the 1/4-resolution features) peaks at the plane's depth."""
    import diff3r_cli.model.predictor as predictor

    H, W, v, d_true = 64, 96, 2, 2.0
    K = torch.tensor([[0.9 * W, 0, W / 2 + 1.5], [0, 0.9 * W, H / 2 - 2.0], [0, 0, 1]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(v, 1, 1)
    w2c[1, 0, 3] = -0.4                     # camera 1 sits 0.4 to the right of camera 0
    # feature pixel (i, j) covers full-resolution pixels [4j, 4j+4) x [4i, 4i+4): centre (4j+2, 4i+2)
    h4, w4 = H // 4, W // 4
    ys, xs = torch.meshgrid(4 * (torch.arange(h4) + 0.5), 4 * (torch.arange(w4) + 0.5), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h4 * w4)], 0).double()
    f4 = []
    for c in range(v):
        centre = -w2c[c, :3, 3]
        points = centre[:, None] + d_true * (torch.linalg.inv(K) @ pix)   # rays hit z = d_true
        f4.append(_plane_features(3.0 * points.T).reshape(4, h4, w4))    # 3x: a finer texture
    cfg = PredictorConfig.preset("small", enc_channels=(4, 4), feat_dim=4, num_planes=8, refine_channels=4,
                                 head_channels=4, attn_layers=0)
    model = Predictor(cfg)
    model.encoder = _PlaneEncoder(torch.stack(f4).float(), *cfg.enc_channels)
    seen = {}
    real = predictor.plane_sweep_cost

    def spy(feat, K4, w2c_, inv_depths):
        seen["cost"] = cost = real(feat, K4, w2c_, inv_depths)
        seen["inv_depths"] = inv_depths
        return cost

    monkeypatch.setattr(predictor, "plane_sweep_cost", spy)
    with torch.no_grad():
        model(torch.zeros(1, v, H, W, 3), K.float().expand(1, v, 3, 3), w2c.float()[None],
              torch.tensor([1.0]), torch.tensor([8.0]))
    planes = 1.0 / seen["inv_depths"][0]
    true_index = int((planes - d_true).abs().argmin())
    assert abs(float(planes[true_index]) - d_true) < 1e-5   # 1/d: 1, 0.875, ..., 0.125: d = 2 is plane 4
    cost = seen["cost"][0]                                   # (V,D,h4,w4)
    assert cost.shape == (v, 8, h4, w4)
    # the argmax over the planes, at reference pixels whose source samples stay inside the source
    # image at every plane (view 0 samples view 1 up to 0.4·(f/4)/1 = 8.64 feature pixels to the
    # left, view 1 samples view 0 as far to the right)
    best = cost.argmax(1)                                    # (V,h4,w4)
    for view, cols in ((0, slice(10, -1)), (1, slice(1, -10))):
        hit = (best[view, 1:-1, cols] == true_index).double().mean()
        assert float(hit) > 0.9, (view, best[view])


def test_inverse_depth_planes():
    inv = inverse_depth_planes(torch.tensor([0.5]), torch.tensor([10.0]), 5)
    assert torch.allclose(inv[0, 0], torch.tensor(2.0)) and torch.allclose(inv[0, -1], torch.tensor(0.1))
    assert torch.allclose(inv[0, 1:] - inv[0, :-1], torch.full((4,), (0.1 - 2.0) / 4))


def test_save_load_roundtrip_and_errors(tmp_path):
    torch.manual_seed(2)
    model = build_predictor("small", **TINY)
    p = save_model(tmp_path / "m.safetensors", model, {"step": 7, "stage": "ff"})
    loaded = load_model(p)
    assert loaded.cfg == model.cfg and loaded.meta == {"step": 7, "stage": "ff"}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    imgs = torch.rand(1, 2, 16, 16, 3)
    K, w2c = _rig(2, 16, 16)
    with torch.no_grad():
        o1 = model.eval()(imgs, K[None], w2c[None], 1.0, 10.0)
        o2 = loaded(imgs, K[None], w2c[None], 1.0, 10.0)
    assert torch.equal(o1.gaussians[0].means, o2.gaussians[0].means)
    with pytest.raises(UserError) as e:
        load_model(tmp_path / "missing.safetensors")
    assert "missing.safetensors" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage")
    with pytest.raises(UserError) as e:
        load_model(bad)
    assert "bad.safetensors" in str(e.value)
    with pytest.raises(UserError):
        load_model("no-such-bundled-model")
    assert not list(tmp_path.glob("*.tmp"))


def test_sh_degree_and_base_preset():
    torch.manual_seed(3)
    model = build_predictor("small", **{**TINY, "sh_degree": 2})
    imgs = torch.rand(1, 2, 16, 16, 3)
    K, w2c = _rig(2, 16, 16)
    g = model(imgs, K[None], w2c[None], 1.0, 10.0).gaussians[0]
    assert g.sh.shape == (2 * 16 * 16, 9, 3) and g.sh_degree == 2
    # the higher-order coefficients start near zero; the DC term carries the pixel colour
    assert g.sh[:, 1:].abs().max() < 0.05
    base = PredictorConfig.preset("base")
    assert base.feat_dim > PredictorConfig.preset("small").feat_dim and base.size == "base"
    with pytest.raises(ValueError):
        PredictorConfig.preset("huge")


def test_lam_floor_raises_every_weight_by_floor_over_p():
    # λ = exp(head) (in units of 1/P) + floor/P; floor 0 leaves the output bit for bit unchanged
    import math

    torch.manual_seed(0)
    cfg = dict(enc_channels=(4, 8), feat_dim=8, num_planes=4, refine_channels=8, head_channels=8, attn_heads=2,
               attn_layers=1)
    model = build_predictor("small", **cfg).eval()
    gen = torch.Generator().manual_seed(1)
    v, h, w = 2, 16, 16
    imgs = torch.rand(1, v, h, w, 3, generator=gen)
    K = torch.tensor([[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]]).repeat(1, v, 1, 1)
    w2c = torch.eye(4).repeat(1, v, 1, 1)
    w2c[0, 1, 0, 3] = -0.3
    near, far = torch.tensor([1.0]), torch.tensor([10.0])
    with torch.no_grad():
        base = model(imgs, K, w2c, near, far)
        model.cfg.lam_floor = 10.0
        floored = model(imgs, K, w2c, near, far)
        model.cfg.lam_floor = 0.0
        again = model(imgs, K, w2c, near, far)
    P = v * h * w
    assert torch.equal(base.lam[0], again.lam[0])
    assert torch.allclose(floored.lam[0], base.lam[0] + 10.0 / P, rtol=1e-6, atol=0)
    assert float(floored.lam[0].min()) >= 10.0 / P * (1 - 1e-6)
    assert torch.allclose(floored.log_lam[0], torch.log(floored.lam[0]))
    assert math.isclose(float((floored.gaussians[0].means - base.gaussians[0].means).abs().max()), 0.0)


def test_bundled_pairs_differ_only_in_stage_and_are_documented():
    """Each bundled diff3r/ff pair was trained identically except for the stage, the defaults
    exist, and the model card names every bundled file (with the real pair's licence terms)."""
    from pathlib import Path

    from diff3r_cli.engines.policy import DEFAULT_FF_MODEL, DEFAULT_MODEL
    from diff3r_cli.model.config import PredictorConfig
    from diff3r_cli.model.io import MODELS_DIR, read_metadata, resolve_model_path

    assert resolve_model_path(DEFAULT_MODEL).is_file() and resolve_model_path(DEFAULT_FF_MODEL).is_file()
    card = (Path(MODELS_DIR) / "MODEL_CARD.md").read_text()
    for f in Path(MODELS_DIR).glob("*.safetensors"):
        assert f"`{f.name}`" in card, f"{f.name} is not in the model card"
    # the small pair also differs in what stage ff ignores (inner steps, ff weight) and in init
    # (each branch's second leg started from its own first leg: MODEL_CARD.md)
    ignored_by_ff = {"stage", "inner_steps", "ff_weight", "init"}
    for diff3r, ff, allowed in (("diff3r-real", "ff-real", {"stage"}), ("diff3r-small", "ff-small", ignored_by_ff)):
        a, b = read_metadata(diff3r), read_metadata(ff)
        ca, cb = (PredictorConfig.from_dict(m["config"]).to_dict() for m in (a, b))
        # the diff3r model may carry the TTO anchor's calibration, fitted through the layer after
        # training (train/anchor_fit.py); the ff baseline never anchors, so it has none
        assert cb.pop("anchor_log_scales") is None
        ca.pop("anchor_log_scales")
        assert ca == cb
        oa, ob = a["meta"]["options"], b["meta"]["options"]
        differ = {k for k in set(oa) | set(ob) if oa.get(k) != ob.get(k)}
        assert "stage" in differ and differ <= allowed, differ
        assert (a["meta"]["stage"], b["meta"]["stage"]) == ("diff3r", "ff")
    assert read_metadata(DEFAULT_MODEL)["config"]["depth_range"] == "normalised"
    assert "research-only" in card and "CC BY-NC" in card
