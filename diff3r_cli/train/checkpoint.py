"""Checkpoints of a run directory: find, save, load (the typed `TrainState`).

On disk (unchanged, so existing run directories resume):
  ckpt-<step>.safetensors   predictor weights + meta (loadable by model.io.load_model)
  ckpt-<step>.pt            {"step", "optimizer", "scheduler", "rng", "streams", "meta"}
  latest.json               {"checkpoint": "ckpt-<step>.pt", "step"}: written last, atomically
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from diff3r_cli.errors import UserError
from diff3r_cli.fsio import atomic_save, atomic_write_json

KEEP_CHECKPOINTS = 2  # the newest ones; older pairs are deleted after each save


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs to continue bit for bit."""

    step: int
    optimizer: dict       # torch optimizer state_dict
    scheduler: dict       # LR scheduler state_dict
    rng: dict             # torch / numpy / python (/ cuda) generator states
    streams: list[dict]   # DataStream.state_dict() of every rank, in rank order
    meta: dict            # stage, data, resolution, options (the flat config), num_parameters

    @property
    def options(self) -> dict:
        """The flat config the run was started with (config.json)."""
        return self.meta.get("options", {})


class CheckpointFiles(NamedTuple):
    weights: Path           # .safetensors
    state: Optional[Path]   # the .pt beside it, None when there is none


def capture_rng() -> dict:
    """Every random generator's state (torch, numpy, python, and CUDA when present)."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng(st: dict) -> None:
    """Put back what `capture_rng` took (CUDA only where a GPU is present)."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_checkpoint(path: str | Path) -> CheckpointFiles:
    """A run dir (-> its latest checkpoint), a ckpt-*.pt or a .safetensors -> (weights, state or None)."""
    p = Path(path)
    if p.is_dir():
        latest = p / "latest.json"
        if not latest.exists():
            raise UserError("no checkpoint in this run directory", p, "train first, or point at a .safetensors file")
        try:
            name = json.loads(latest.read_text())["checkpoint"]
        except (ValueError, KeyError) as e:
            raise UserError(f"unreadable latest.json ({e})", latest, "point at a ckpt-*.pt file instead") from None
        p = p / name
    if p.suffix == ".pt":
        w = p.with_suffix(".safetensors")
        if not p.is_file() or not w.is_file():
            raise UserError("checkpoint incomplete (need both .pt and .safetensors)", p, "resume from another checkpoint")
        return CheckpointFiles(w, p)
    if p.suffix in (".ckpt", ".pth") and p.is_file():  # a released backbone (model.io reads it safely)
        return CheckpointFiles(p, None)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise UserError("checkpoint weights not found", p, "pass an existing .safetensors file or run directory")
        st = p.with_suffix(".pt")
        return CheckpointFiles(p, st if st.is_file() else None)
    raise UserError("not a checkpoint", p, "pass a run directory, a ckpt-*.pt, a .safetensors or a released .ckpt file")


def load_state(path: Path) -> TrainState:
    """Read a ckpt-*.pt (tensors on the CPU)."""
    raw = torch.load(path, map_location="cpu", weights_only=False)
    return TrainState(int(raw["step"]), raw["optimizer"], raw["scheduler"], raw["rng"], raw["streams"], raw["meta"])


def save_checkpoint(out: Path, model: torch.nn.Module, state: TrainState, keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write ckpt-<step>.{safetensors,pt} atomically, then point latest.json at them; prune old pairs."""
    from diff3r_cli.model.io import save_model

    name = f"ckpt-{state.step:07d}"
    save_model(out / f"{name}.safetensors", model, {**state.meta, "step": state.step})
    record = {f.name: getattr(state, f.name) for f in fields(state)}  # the .pt's keys, in this order
    atomic_save(out / f"{name}.pt", lambda f: torch.save(record, f))
    atomic_write_json(out / "latest.json", {"checkpoint": f"{name}.pt", "step": state.step})
    olds = sorted(out.glob("ckpt-*.pt"))
    for old in olds[:-keep]:
        for suffix in (".pt", ".safetensors"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return out / f"{name}.pt"


__all__ = ["TrainState", "CheckpointFiles", "capture_rng", "restore_rng", "find_checkpoint", "load_state",
           "save_checkpoint"]
