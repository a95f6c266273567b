"""benchmarks/real_scenes.py keys its cache by the models: another pair never reuses its rows."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_scenes  # noqa: E402


def test_cache_tag_follows_the_models_names_and_bytes(tmp_path):
    real = real_scenes.models_tag("diff3r-real", "ff-real")
    assert real == real_scenes.models_tag("diff3r-real", "ff-real")
    assert real != real_scenes.models_tag("diff3r-small", "ff-small")
    # same file name, other weights: a retrained model must not reuse the old rows either
    a, b = tmp_path / "diff3r-real.safetensors", tmp_path / "ff-real.safetensors"
    shutil.copy(ROOT / "models" / "diff3r-real.safetensors", a)
    shutil.copy(ROOT / "models" / "ff-real.safetensors", b)
    assert real_scenes.models_tag(str(a), str(b)) == real
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    a.write_bytes(bytes(data))
    assert real_scenes.models_tag(str(a), str(b)) != real
