"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tests use tiny tensors: on the shared 2-core CI/dev machines intra-op threads mostly wait on
    each other, so every test module runs with one torch thread (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
