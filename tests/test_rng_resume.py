"""Random streams across a resume: the global generators' states survive capture -> checkpoint
on disk -> load -> restore, and the optimiser's ±1 probes never draw from a global generator."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from diff3r_cli.optim.config import BackwardConfig, LMConfig
from diff3r_cli.optim.energy import Energy
from diff3r_cli.optim.implicit import ift_solve
from diff3r_cli.optim.lm import lm_run
from diff3r_cli.optim.pcg import probe_generator, rademacher
from diff3r_cli.train.checkpoint import TrainState, capture_rng, load_state, restore_rng, save_checkpoint

from optim_scenes import perturb, two_cameras, wide_blobs


def _draws() -> tuple[torch.Tensor, np.ndarray, list[float]]:
    """The next few numbers of torch's, numpy's and python's global generators (consumes them)."""
    return torch.rand(5, dtype=torch.float64), np.random.random_sample(5), [random.random() for _ in range(5)]


def _tiny_model() -> torch.nn.Module:
    from diff3r_cli.model.predictor import Predictor, PredictorConfig

    return Predictor(PredictorConfig.preset("small", enc_channels=(4, 4), feat_dim=4, num_planes=4,
                                            refine_channels=4, head_channels=4, attn_layers=0))


def test_restore_rng_after_save_and_load_reproduces_the_next_draws(tmp_path):
    model = _tiny_model()
    torch.manual_seed(123)
    np.random.seed(456)
    random.seed(789)
    _draws()                                   # somewhere in the middle of the streams
    state = TrainState(7, {}, {}, capture_rng(), [], {"stage": "test"})
    expected = _draws()                        # what the run drew after its checkpoint
    path = save_checkpoint(tmp_path, model, state)
    # the process that resumes starts from other states (here: different seeds, more draws)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draws()
    loaded = load_state(path)
    assert loaded.step == 7
    restore_rng(loaded.rng)
    got = _draws()
    assert torch.equal(got[0], expected[0]), "torch"
    assert np.array_equal(got[1], expected[1]), "numpy"
    assert got[2] == expected[2], "python"
    # not vacuous: without the restore the streams differ
    assert not torch.equal(_draws()[0], expected[0])


def _energy() -> Energy:
    cams = two_cameras(8)
    gt = wide_blobs(3, seed=0)
    from diff3r_cli.render import render

    images = render(gt, cams).rgb.detach()
    g0 = perturb(gt, 0.05, seed=1)
    lam = g0.expand_groups(torch.full((g0.num, 5), 1e-2, dtype=torch.float64))
    return Energy(g0, g0.flatten(), lam, cams, images)


def test_probes_never_touch_the_global_generator():
    # IFT (Jacobi preconditioner + fallback) and LM draw ±1 probes from a generator of their
    # own: the global torch state is the same after them, and what they return does not depend
    # on it (a resumed run draws the same probes whatever state it restored).
    e = _energy()
    rhs = torch.randn(e.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        v, _ = ift_solve(e, e.theta0, rhs, BackwardConfig(pcg_max_iter=0, num_probes=2))   # the Jacobi fallback
        x, _ = lm_run(e, e.theta0, 2, LMConfig(num_probes=2))
        assert torch.equal(torch.get_rng_state(), before), "a probe drew from the global generator"
        results.append((v, x))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_probe_generator_is_a_seeded_cpu_generator():
    a = rademacher((1000,), torch.float64, generator=probe_generator(5))
    b = rademacher((1000,), torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert probe_generator(5).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_probes_on_cuda_match_the_cpu_and_leave_the_cuda_generator_alone():
    cpu = rademacher((64,), torch.float64, generator=probe_generator(5))
    before = torch.cuda.get_rng_state()
    gpu = rademacher((64,), torch.float64, device="cuda", generator=probe_generator(5))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    assert torch.equal(torch.cuda.get_rng_state(), before)
