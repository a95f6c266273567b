"""PCG and the stochastic Jacobi estimate against dense references (no renderer needed)."""

import math

import pytest
import torch

from diff3r_cli.optim.pcg import estimate_jtj_diag, jacobi_preconditioner, pcg


def _spd(n, cond, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    eig = torch.logspace(0, math.log10(cond), n, dtype=dtype)
    return (q * eig) @ q.T


@pytest.mark.parametrize("seed,n,cond", [(0, 10, 10.0), (1, 50, 1e3), (2, 120, 1e4)])
def test_pcg_matches_dense_solve(seed, n, cond):
    A = _spd(n, cond, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    ref = torch.linalg.solve(A, b)
    res = pcg(lambda v: A @ v, b, rtol=1e-12, max_iter=10 * n)
    assert res.converged and res.status == "converged"
    assert (res.x - ref).norm() / ref.norm() < 1e-8
    # residual history is the true relative residual at the end
    assert abs(res.residuals[-1] - float((b - A @ res.x).norm() / b.norm())) < 1e-9
    assert len(res.residuals) == res.iterations + 1


def test_pcg_dense_matrix_operator_and_x0():
    A = _spd(30, 100.0, 3)
    b = torch.randn(30, dtype=torch.float64)
    ref = torch.linalg.solve(A, b)
    res = pcg(A, b, x0=ref + 1e-3 * torch.randn(30, dtype=torch.float64), rtol=1e-12)
    assert (res.x - ref).norm() / ref.norm() < 1e-8


def test_jacobi_preconditioning_helps_badly_scaled_system():
    # A = D^{1/2} B D^{1/2} with B well conditioned and D spanning 8 decades: Jacobi fixes D.
    n = 80
    B = _spd(n, 5.0, 4)
    d = torch.logspace(-4, 4, n, dtype=torch.float64)
    A = d.sqrt()[:, None] * B * d.sqrt()[None, :]
    b = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = torch.linalg.solve(A, b)
    plain = pcg(lambda v: A @ v, b, rtol=1e-10, max_iter=2000)
    jac = pcg(lambda v: A @ v, b, M_inv=1.0 / torch.diagonal(A), rtol=1e-10, max_iter=2000)
    assert jac.converged
    assert (jac.x - ref).norm() / ref.norm() < 1e-6
    assert jac.iterations * 3 < plain.iterations


def test_pcg_float32():
    A = _spd(40, 50.0, 6, dtype=torch.float32)
    b = torch.randn(40, dtype=torch.float32)
    res = pcg(lambda v: A @ v, b, rtol=1e-5)
    assert res.converged and res.x.dtype == torch.float32
    ref = torch.linalg.solve(A.double(), b.double())
    assert (res.x.double() - ref).norm() / ref.norm() < 1e-3


def test_pcg_zero_rhs_and_max_iter():
    A = _spd(20, 1e3, 7)
    res = pcg(A, torch.zeros(20, dtype=torch.float64))
    assert res.converged and res.x.abs().max() == 0
    res = pcg(A, torch.ones(20, dtype=torch.float64), rtol=1e-14, max_iter=3)
    assert not res.converged and res.status == "max_iter" and res.iterations == 3


def test_pcg_detects_nonfinite_and_indefinite():
    A = _spd(10, 10.0, 8)
    b = torch.ones(10, dtype=torch.float64)
    calls = {"n": 0}

    def bad(v):
        calls["n"] += 1
        out = A @ v
        return out * float("nan") if calls["n"] >= 3 else out

    res = pcg(bad, b, rtol=1e-14)
    assert res.status == "nonfinite" and not res.converged
    assert torch.isfinite(res.x).all()
    res = pcg(lambda v: -v, b)
    assert res.status == "indefinite" and not res.converged and torch.isfinite(res.x).all()
    res = pcg(A, torch.full((10,), float("inf"), dtype=torch.float64))
    assert res.status == "nonfinite" and torch.isfinite(res.x).all()


def test_jtj_diag_estimate_converges_linear_map():
    g = torch.Generator().manual_seed(9)
    J = torch.randn(200, 15, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, 15, dtype=torch.float64)
    true = (J * J).sum(0)
    errs = []
    for probes in (4, 64, 1024):
        est = estimate_jtj_diag(lambda u: J.T @ u, (200,), probes, torch.float64, generator=torch.Generator().manual_seed(probes))
        errs.append(float(((est - true) / true).abs().max()))
    # Monte-Carlo error shrinks like 1/sqrt(probes); with 1024 probes it is a few percent.
    assert errs[2] < 0.15 and errs[2] < errs[0]


def test_jacobi_preconditioner_floor():
    m = jacobi_preconditioner(torch.tensor([0.0, 4.0], dtype=torch.float64), None, 2)
    assert torch.isfinite(m).all() and m[1] == 0.5
    m = jacobi_preconditioner(torch.tensor([0.0, 4.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64), 2)
    assert torch.allclose(m, torch.tensor([1.0, 1 / 3], dtype=torch.float64))
