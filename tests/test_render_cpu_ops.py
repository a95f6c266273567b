"""Single ops of the compiled backend against independent references.

- Binning (per-tile entry lists in compositing order) against a brute-force reference: every
  entry whose pixel box touches a tile, sorted by (camera, depth, entry index). Depths are
  quantised so that many tie, some are negative, and some boxes are empty (culled entries).
- The fused forward+jvp projection (one dual-number pass, used under forward-mode AD) against
  the separate forward and jvp ops: the primal bit for bit, the tangent bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from render_backends import require_cpu_backend


def _reference(box, cam, depth, C, W, H, tile):
    TX, TY = -(-W // tile), -(-H // tile)
    lists = [[] for _ in range(C * TX * TY)]
    order = sorted(range(len(cam)), key=lambda e: (int(cam[e]), float(depth[e]), e))
    for e in order:
        x0, x1, y0, y1 = (int(v) for v in box[e])
        if x1 < x0 or y1 < y0:
            continue
        for ty in range(y0 // tile, y1 // tile + 1):
            for tx in range(x0 // tile, x1 // tile + 1):
                lists[int(cam[e]) * TX * TY + ty * TX + tx].append(e)
    return lists


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 300, 6000])
def test_bins_match_reference(dtype, n):
    require_cpu_backend()
    from diff3r_cli.render import cpu_ext

    assert cpu_ext.load()
    gen = torch.Generator().manual_seed(n)
    C, W, H, tile = 3, 70, 45, 16
    cam = torch.randint(0, C, (n,), generator=gen)
    x0 = torch.randint(-5, W, (n,), generator=gen)
    y0 = torch.randint(-5, H, (n,), generator=gen)
    wd = torch.randint(-2, 25, (n,), generator=gen)  # negative width: an empty (culled) box
    ht = torch.randint(0, 20, (n,), generator=gen)
    box = torch.stack([x0.clamp(0, W), (x0 + wd).clamp(-1, W - 1), y0.clamp(0, H), (y0 + ht).clamp(-1, H - 1)], 1)
    box = box.to(torch.int32).contiguous()
    depth = (torch.randint(-3, 40, (n,), generator=gen) * 0.25).to(dtype)  # many exact ties
    feat = torch.zeros(n, 4, dtype=dtype)
    feat[:, 3] = depth
    offsets, entries = torch.ops.diff3r_cpu.bin_tiles(box, cam.contiguous(), feat, C, W, H, tile)
    ref = _reference(box, cam, depth, C, W, H, tile)
    assert offsets.tolist()[0] == 0 and len(offsets) == len(ref) + 1
    got = [entries[offsets[t]:offsets[t + 1]].tolist() for t in range(len(ref))]
    assert got == ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_fused_projection_equals_forward_and_jvp(dtype, sh_degree):
    require_cpu_backend()
    from diff3r_cli.render import cpu_ext

    assert cpu_ext.load()
    ops = torch.ops.diff3r_cpu
    gen = torch.Generator().manual_seed(sh_degree)
    n, C, W, H = 500, 3, 40, 30
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * torch.tensor([4.0, 3.0, 6.0], dtype=dtype)
    means[:, 2] += 2.0  # some behind the cameras, most in front
    params = [means, torch.randn(n, 3, generator=gen, dtype=dtype) * 0.5 - 2.5,
              torch.randn(n, 4, generator=gen, dtype=dtype), torch.randn(n, generator=gen, dtype=dtype) * 2,
              torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype)]
    tangents = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
    K = torch.tensor([[30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]], dtype=dtype).repeat(C, 1, 1)
    w2c = torch.eye(4, dtype=dtype).repeat(C, 1, 1)
    w2c[:, 0, 3] = torch.tensor([0.0, -0.3, 0.4], dtype=dtype)
    campos = torch.linalg.inv(w2c)[:, :3, 3].contiguous()
    fused = ops.project_forward_jvp(*params, K, w2c, campos, W, H, *tangents)
    plain = ops.project_forward(*params, K, w2c, campos, W, H)
    assert 0 < plain[0].shape[0] < C * n  # some entries culled, some kept
    for a, b in zip(fused[:5], plain):
        assert torch.equal(a, b)
    tan = ops.project_jvp(*params, K, w2c, campos, W, H, plain[2], plain[3], *tangents)
    assert torch.equal(fused[5], tan[0]) and torch.equal(fused[6], tan[1])
