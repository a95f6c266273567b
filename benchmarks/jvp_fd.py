"""Accuracy of the central-difference Jv against the exact forward-mode Jv (torch backend).

The measurement behind the step table in ``diff3r_cli/render/jvp.py``: float32,
pixel-aligned scene of benchmarks/render.py, tangent N(0,1) in every parameter; for each
step eps, the relative L2 error and the median |error| / median |Jv| over rgb and alpha.

    python benchmarks/jvp_fd.py [--size 64]
"""

from __future__ import annotations

import argparse

import torch

from render import pixel_aligned_scene  # same folder

from diff3r_cli.render.jvp import fd_jvp, render_jvp

EPS_LIST = (3e-5, 1e-4, 3e-4, 1e-3, 1e-2, 1e-1)


def measure(size: int = 64, eps_list=EPS_LIST) -> dict[float, tuple[float, float]]:
    """{eps: (relative L2 error, median |error| / median |Jv|)} over rgb and alpha."""
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    for e, (l2, med) in measure(args.size).items():
        print(f"eps={e:g}  relative L2 error {l2:.3g}  median relative error {100 * med:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
