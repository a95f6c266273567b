"""Predictor weights on disk: one safetensors file with the config and metadata as JSON.

The safetensors header metadata holds ``format`` ("diff3r-predictor"), ``config`` (the
PredictorConfig as JSON) and ``meta`` (free-form JSON: training step, data, stage...).
Bundled weights live in <repo>/models/<name>.safetensors and can be named without a path,
e.g. ``load_model("diff3r-small")``. Released MVSplat ``.ckpt`` and DepthSplat ``.pth`` files are recognised by content
and read tensors-only (model/backbones/checkpoints.py); a diff3r file may also hold a fine-tuned
backbone (its config then names the family).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from diff3r_cli.errors import UserError
from diff3r_cli.model.predictor import Predictor, PredictorConfig
from diff3r_cli.fsio import atomic_write_bytes

FORMAT = "diff3r-predictor"
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def save_model(path: str | Path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Write the predictor's weights + config + meta to ``path`` (atomic). Returns the path."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta or {})}
    from safetensors.torch import save as st_save

    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return path


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bundled name ("diff3r-small") -> <repo>/models/<name>.safetensors."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists() or os.sep in str(name_or_path):
        return p
    return MODELS_DIR / f"{name_or_path}.safetensors"


def read_metadata(path: str | Path) -> dict:
    """The header metadata of a weights file: {"format", "config": dict, "meta": dict}."""
    from safetensors import safe_open

    path = resolve_model_path(path)
    if not path.is_file():
        bundled = sorted(q.stem for q in MODELS_DIR.glob("*.safetensors")) if MODELS_DIR.is_dir() else []
        hint = f"bundled models: {', '.join(bundled)}" if bundled else "no bundled models are installed"
        raise UserError("model weights not found", path,
                        f"pass a .safetensors file written by `diff3r train`, a released MVSplat .ckpt, "
                        f"or a bundled name ({hint})")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise ValueError(f"format is {md.get('format')!r}, not {FORMAT!r}")
        return {"format": md["format"], "config": json.loads(md["config"]), "meta": json.loads(md.get("meta", "{}"))}
    except UserError:
        raise
    except Exception as e:  # corrupt header, truncated file, foreign safetensors file
        raise UserError(f"not a readable diff3r model file ({type(e).__name__}: {e})", path,
                        "re-download or re-export the weights with `diff3r train`") from None


def load_model(path_or_name: str | Path, device: str | torch.device = "cpu",
               trust_pickle: bool = False) -> torch.nn.Module:
    """Build the predictor described by a weights file and load its weights (eval mode).

    The file's kind is read from its content: a diff3r .safetensors (our predictor or a
    fine-tuned backbone), or a released MVSplat .ckpt / DepthSplat .pth (tensors only unless
    ``trust_pickle``).
    """
    from safetensors.torch import load_file

    from diff3r_cli.model.backbones import checkpoints as bb
    from diff3r_cli.model.backbones.predictor import BackboneConfig, BackbonePredictor, is_backbone_config

    path = resolve_model_path(path_or_name)
    if path.is_file() and bb.sniff(path) == "torch":
        return bb.load_backbone_file(path, trust_pickle).to(device).eval()
    md = read_metadata(path)
    try:
        if is_backbone_config(md["config"]):
            model = BackbonePredictor(BackboneConfig.from_dict(md["config"]))
        else:
            model = Predictor(PredictorConfig.from_dict(md["config"]))
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise UserError(f"model file does not match the predictor ({type(e).__name__}: {str(e)[:200]})", path,
                        "use weights written by this version of diff3r") from None
    model.meta = md["meta"]
    return model.to(device).eval()


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt")


def inspect_weights(path: str | Path, trust_pickle: bool = False) -> dict:
    """Family, variant, parameter count and training convention of a weights file (no model built)."""
    from diff3r_cli.model.backbones import checkpoints as bb
    from diff3r_cli.model.backbones.predictor import CONVENTIONS, is_backbone_config

    path = Path(path)
    if bb.sniff(path) == "torch":
        obj, skipped = bb.read_torch_file(path, trust_pickle)
        sd = bb.find_state_dict(obj, path)
        family = bb.detect_family(sd)
        info = {"format": "weights", "file": "released checkpoint (pickle, read tensors-only)", "family": family,
                "tensors": len(sd), "parameters": sum(t.numel() for t in sd.values()), "skipped_objects": skipped}
        if family == "unknown":
            info.update(loads="no (not an MVSplat/DepthSplat checkpoint)")
            return info
        model = bb.build_backbone(sd, path)
        info.update(variant=model.cfg.variant, loads="strict", convention=CONVENTIONS[family],
                    lam_head_parameters=sum(p.numel() for p in model.lam_head.parameters()) + 5)
        return info
    md = read_metadata(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys()]
    cfg = md["config"]
    brief = {k: md["meta"][k] for k in ("stage", "step", "data", "resolution", "init") if k in md["meta"]}
    n = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes)
    if is_backbone_config(cfg):
        return {"format": "weights", "file": "diff3r .safetensors (fine-tuned backbone)", "family": cfg["family"],
                "variant": cfg.get("variant"), "tensors": len(shapes), "parameters": n, "loads": "strict",
                "convention": CONVENTIONS.get(cfg["family"], ""), "meta": brief}
    return {"format": "weights", "file": "diff3r .safetensors", "family": "diff3r", "variant": cfg.get("size"),
            "tensors": len(shapes), "parameters": n, "loads": "strict",
            "convention": f"near/far {cfg.get('depth_range', 'fitted')}, SH degree {cfg.get('sh_degree', 0)}",
            "anchor": _anchor_calibration(cfg.get("anchor_log_scales")), "meta": brief}


def _anchor_calibration(table) -> str:
    """One line on the TTO anchor calibration a model carries (PredictorConfig.anchor_log_scales)."""
    if table is None:
        return "Λ as predicted (no calibration)"
    vals = [float(v) for row in table for v in row]
    if max(vals) - min(vals) < 1e-9:
        return f"Λ × {math.exp(vals[0]):.3g} (one factor for every set and group)"
    return f"Λ × a factor per Gaussian set and group ({math.exp(min(vals)):.3g} … {math.exp(max(vals)):.3g})"


__all__ = ["save_model", "load_model", "read_metadata", "resolve_model_path", "inspect_weights", "MODELS_DIR",
           "WEIGHT_SUFFIXES"]
