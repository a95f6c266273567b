"""The CPU render backends under test, and when the compiled one may be skipped.

The compiled backend is skipped only where this machine has no C++ compiler or ninja (or
DIFF3R_NO_COMPILE is set, which is how the fallback is exercised); with a compiler present,
a failed build is a test failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

from diff3r_cli.render import render
from diff3r_cli.render import cpu_ext
from diff3r_cli.render.torch_backend import render_torch


def no_compiler_reason() -> str | None:
    """Why this machine cannot build the kernel at all (None if it can)."""
    if os.environ.get("DIFF3R_NO_COMPILE"):
        return "DIFF3R_NO_COMPILE is set"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx})"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability
        verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed"
    return None


def require_cpu_backend() -> None:
    """Skip where no compiler exists; fail if one exists and the kernel still does not load."""
    if cpu_ext.load():
        return
    reason = no_compiler_reason()
    if reason:
        pytest.skip(f"compiled CPU backend not buildable here: {reason}")
    pytest.fail(f"compiled CPU backend failed to build or load: {cpu_ext.unavailable_reason()}")


def _render_cpu(*args, **kw):
    require_cpu_backend()
    return render(*args, backend="cpu", **kw)


BACKENDS = ["torch", "cpu"]


def renderer(backend: str):
    """render_torch, or the compiled backend through render(..., backend="cpu")."""
    return {"torch": render_torch, "cpu": _render_cpu}[backend]
