"""The choice enums of the commands' options (Typer shows their values in --help)."""

from __future__ import annotations

from enum import Enum

from diff3r_cli.render import BACKENDS


def _choices(name: str, *values: str) -> type[Enum]:
    """A str-valued Enum whose member names are its values (what Typer needs for a choice option)."""
    return Enum(name, {v: v for v in values}, type=str)


Device = _choices("Device", "auto", "cpu", "cuda")
Optimizer = _choices("Optimizer", "adam", "lm")
PathKind = _choices("PathKind", "interpolate", "orbit", "input")
DataKind = _choices("DataKind", "re10k", "synthetic", "mix")
Stage = _choices("Stage", "ff", "diff3r")
Split = _choices("Split", "train", "test")
Compensation = _choices("Compensation", "auto", "on", "off")
Confidence = _choices("Confidence", "unc", "all", "off")  # evaluate.views.CONFIDENCE_MODES
# the renderer's own list, so a new backend appears in --backend without a second edit
RenderBackend = _choices("RenderBackend", *BACKENDS)

__all__ = ["Device", "Optimizer", "PathKind", "DataKind", "Stage", "Split", "Compensation", "Confidence", "RenderBackend"]
