"""Build and load the compiled CPU rasterizer (``csrc/rasterizer.cpp``).

Compiled on first use with torch's C++ extension tooling (ninja + the system C++ compiler,
OpenMP) into a per-user cache, keyed by a hash of the source, the torch version and the
flags, so a changed source or a new torch never loads a stale binary. Later processes load
the cached library in milliseconds. Where no compiler (or ninja) is usable, :func:`load`
returns None and records why (:func:`unavailable_reason`); ``render(backend="auto")`` then
falls back to the torch backend with one warning line.

Cache location: ``$DIFF3R_CACHE_DIR`` or ``$XDG_CACHE_HOME/diff3r`` (default ``~/.cache/diff3r``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("csrc") / "rasterizer.cpp"
_CFLAGS = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"]
_LDFLAGS = ["-fopenmp"]
_NAME = "diff3r_cpu_raster"

_lock = threading.Lock()
_state: dict = {"loaded": False, "ok": False, "reason": None}


def cache_dir() -> Path:
    """Root of diff3r's per-user build cache."""
    root = os.environ.get("DIFF3R_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "diff3r"


def build_dir() -> Path:
    """Build folder for this source, torch version and flag set."""
    h = hashlib.sha1()
    h.update(_SOURCE.read_bytes())
    h.update(torch.__version__.encode())
    h.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    h.update(sys.version.encode())
    return cache_dir() / "ext" / f"{_NAME}-{h.hexdigest()[:16]}"


def load() -> bool:
    """Make ``torch.ops.diff3r_cpu`` available; True on success (compiling if needed)."""
    with _lock:
        if _state["loaded"]:
            return _state["ok"]
        _state["loaded"] = True
        if os.environ.get("DIFF3R_NO_COMPILE"):
            _state["reason"] = "DIFF3R_NO_COMPILE is set"
            return False
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            _state["reason"] = f"no C++ compiler found ({cxx}); install g++ or set CXX"
            return False
        try:
            from torch.utils import cpp_extension

            bdir = build_dir()
            lib = bdir / f"{_NAME}.so"
            if not lib.exists():
                bdir.mkdir(parents=True, exist_ok=True)
                print("diff3r: compiling the CPU rasterizer (first use only, about a minute)...",
                      file=sys.stderr, flush=True)
            # -ffp-contract=off: no fused multiply-adds, so results do not depend on how the
            # compiler schedules them (bit-identical builds of the same source).
            cpp_extension.load(name=_NAME, sources=[str(_SOURCE)], extra_cflags=_CFLAGS,
                               extra_ldflags=_LDFLAGS, build_directory=str(bdir),
                               is_python_module=False, verbose=False)
            _state["ok"] = hasattr(torch.ops.diff3r_cpu, "raster_forward")
            if not _state["ok"]:
                _state["reason"] = "the compiled library did not register its operators"
        except Exception as exc:  # no compiler, no ninja, a failed build: fall back
            msg = " ".join(str(exc).split())
            _state["reason"] = (msg[:200] + "...") if len(msg) > 200 else msg or type(exc).__name__
            _state["ok"] = False
        return _state["ok"]


def unavailable_reason() -> str | None:
    """Why the compiled backend could not be loaded (None if it loaded or was not tried)."""
    return _state["reason"]

