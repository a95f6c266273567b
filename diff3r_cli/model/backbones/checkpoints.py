"""Released backbone files: recognise them by content, read them safely, build the predictor.

- MVSplat releases Lightning ``.ckpt`` files: a pickle (zip container) whose ``state_dict`` holds
  ``encoder.backbone.*`` and ``encoder.depth_predictor.*``, next to training bookkeeping.
- DepthSplat releases ``.pth`` files (optionally wrapped in ``state_dict``/``model``) whose
  encoder carries a DINOv2 ViT under ``encoder.depth_predictor.pretrained.*``; the small (ViT-S)
  model is supported (base/large need scale settings the files do not store).

Reading is tensors-only by default: ``torch.load(weights_only=True)``, and when a file holds
other objects (Lightning hyper-parameters, callbacks), a restricted unpickler that rebuilds
tensors and plain containers and replaces every other object by an inert placeholder, so no
code from the file runs. Full unpickling needs an explicit opt-in (``trust_pickle=True``, the
``DIFF3R_TRUST_PICKLE=1`` environment variable).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import types
from pathlib import Path
from typing import Any

import torch

from diff3r_cli.errors import UserError
from diff3r_cli.model.backbones.depthsplat import DepthSplatArch
from diff3r_cli.model.backbones.mvsplat import MVSplatArch
from diff3r_cli.model.backbones.vit import VIT_SIZES

ZIP_MAGIC = b"PK\x03\x04"
TRUST_ENV = "DIFF3R_TRUST_PICKLE"
FIX_CORRUPT = "download the file again (a released MVSplat .ckpt, DepthSplat .pth or a diff3r .safetensors)"


def sniff(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle), or 'unknown', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == ZIP_MAGIC or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (1 << 31):
        return "safetensors"
    return "unknown"


class _Skipped:
    """Stands in for any object a restricted load does not rebuild; swallows its state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Skipped":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Skipped":
        return _Skipped()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, x: Any) -> None:
        pass

    def extend(self, x: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<skipped>"


_ALLOWED = {
    ("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device"), ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
}
_TORCH_REBUILD = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers; every other global becomes :class:`_Skipped`."""

    skipped: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch._utils" and name in _TORCH_REBUILD):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        _RestrictedUnpickler.skipped.add(f"{module}.{name}")
        return _Skipped


def _restricted_module() -> types.ModuleType:
    m = types.ModuleType("diff3r_restricted_pickle")
    m.Unpickler = _RestrictedUnpickler
    m.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()
    m.loads = lambda b, **kw: _RestrictedUnpickler(io.BytesIO(b), **kw).load()
    m.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return m


def read_torch_file(path: Path, trust_pickle: bool = False) -> tuple[Any, list[str]]:
    """The unpickled content of a .ckpt/.pth and the names of objects skipped by the safe path."""
    trust = trust_pickle or os.environ.get(TRUST_ENV, "") == "1"
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False), []
        try:
            return torch.load(path, map_location="cpu", weights_only=True), []
        except pickle.UnpicklingError as e:
            if "weights_only" not in str(e).lower() and "weights only" not in str(e).lower():
                raise
        _RestrictedUnpickler.skipped = set()
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_module())
        return obj, sorted(_RestrictedUnpickler.skipped)
    except UserError:
        raise
    except Exception as e:  # truncated zip, bad pickle, foreign file
        raise UserError(f"not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
                        path, FIX_CORRUPT) from None


def find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded file: ``state_dict``, ``model``, or the dict itself."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if sd:
            return sd
    raise UserError("no weights found in this file (expected a state dict of tensors)", path, FIX_CORRUPT)


def detect_family(sd: dict[str, torch.Tensor]) -> str:
    """'mvsplat', 'depthsplat' or 'unknown', from the tensor names."""
    if any(k.startswith("encoder.depth_predictor.pretrained.") for k in sd):
        return "depthsplat"
    if "encoder.backbone.backbone.conv1.weight" in sd and "encoder.depth_predictor.corr_refine_net.0.weight" in sd:
        return "mvsplat"
    return "unknown"


def _levels(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of U-Net levels: input blocks = 1 + levels + (levels - 1) downsamplers."""
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return (max(idx) + 2) // 2 if idx else 0


def _attn_levels(sd: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    """Downsampling factors with attention in the encoder half of a U-Net."""
    out = []
    for k in sd:
        if k.startswith(prefix) and k.endswith(".1.qkv.weight"):
            i = int(k[len(prefix):].split(".")[0])
            out.append(2 ** ((i - 1) // 2))
    return tuple(sorted(set(out)))


def mvsplat_arch_from_state(sd: dict[str, torch.Tensor]) -> MVSplatArch:
    """Architecture hyper-parameters of an MVSplat encoder, read off the tensor shapes."""
    p = "encoder.depth_predictor."
    d = sd[p + "depth_head_lowres.0.weight"].shape[1]
    c = sd["encoder.backbone.backbone.conv2.weight"].shape[0]
    raw = sd[p + "to_gaussians.2.weight"].shape[0]
    d_sh = (raw - 9) // 3
    sh_degree = int(round(d_sh ** 0.5)) - 1
    n_layers = len({k.split(".")[4] for k in sd if k.startswith("encoder.backbone.transformer.layers.")})
    cv_levels = _levels(sd, p + "corr_refine_net.3.input_blocks.")
    dp_levels = _levels(sd, p + "refine_unet.3.input_blocks.")
    return MVSplatArch(
        d_feature=c, num_depth_candidates=d, costvolume_unet_feat_dim=sd[p + "corr_refine_net.0.weight"].shape[0],
        costvolume_unet_channel_mult=(1,) * cv_levels,
        costvolume_unet_attn_res=_attn_levels(sd, p + "corr_refine_net.3.input_blocks."),
        depth_unet_feat_dim=sd[p + "proj_feature.weight"].shape[0],
        depth_unet_attn_res=_attn_levels(sd, p + "refine_unet.3.input_blocks."),
        depth_unet_channel_mult=(1,) * dp_levels, sh_degree=sh_degree, num_transformer_layers=n_layers)


def depthsplat_arch_from_state(sd: dict[str, torch.Tensor]) -> DepthSplatArch:
    """Architecture hyper-parameters of a DepthSplat encoder, read off the tensor shapes."""
    p = "encoder.depth_predictor."
    width = sd[p + "pretrained.cls_token"].shape[-1]
    vit = {w: k for k, (w, _, _) in VIT_SIZES.items()}.get(width, f"width{width}")
    g = sd["encoder.gaussian_head.2.weight"].shape[0]
    d_sh = (g - 10) // 3
    return DepthSplatArch(
        vit=vit, d_feature=sd[p + "backbone.conv2.weight"].shape[0],
        num_depth_candidates=sd[p + "depth_head.0.2.weight"].shape[0],
        unet_channels=sd[p + "regressor.0.0.weight"].shape[0],
        depth_dpt_features=sd[p + "upsampler.scratch.layer1_rn.weight"].shape[0],
        feature_dpt_features=sd["encoder.feature_upsampler.scratch.layer1_rn.weight"].shape[0],
        regressor_channels=sd["encoder.gaussian_regressor.0.weight"].shape[0],
        sh_degree=int(round(d_sh ** 0.5)) - 1)


def build_backbone(sd: dict[str, torch.Tensor], path: Path, meta: dict | None = None):
    """A BackbonePredictor whose pretrained tree is loaded strictly from ``sd`` (published layout)."""
    from diff3r_cli.model.backbones.predictor import TRAIN_RANGE, BackboneConfig, BackbonePredictor

    family = detect_family(sd)
    if family == "unknown":
        raise UserError("not an MVSplat/DepthSplat checkpoint (no encoder.backbone / encoder.depth_predictor weights)",
                        path, FIX_CORRUPT)
    name = "MVSplat" if family == "mvsplat" else "DepthSplat"
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    try:
        if family == "mvsplat":
            arch = mvsplat_arch_from_state(sd)
            variant = "re10k" if arch == MVSplatArch() else f"custom-d{arch.num_depth_candidates}"
        else:
            arch = depthsplat_arch_from_state(sd)
            variant = "small" if arch == DepthSplatArch() else f"custom-{arch.vit}"
    except (KeyError, IndexError) as e:
        raise UserError(f"{name} weights do not match the re-implementation (missing {e})", path,
                        f"use a released {name} checkpoint") from None
    if family == "depthsplat" and arch.vit != "vits":
        raise UserError(f"DepthSplat {arch.vit} (base/large) is recognised but not supported: its Gaussian scale "
                        "settings are not stored in the file", path, "use the small (ViT-S) DepthSplat model")
    near, far = TRAIN_RANGE[family]
    try:
        model = BackbonePredictor(BackboneConfig(family=family, variant=variant, arch=arch.__dict__.copy(),
                                                 train_near=near, train_far=far))
        model.net.load_state_dict(enc, strict=True)
    except Exception as e:
        raise UserError(f"{name} weights do not match the re-implementation ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})", path, f"use a released {name} checkpoint") from None
    model.meta = dict(meta or {})
    return model


def load_backbone_file(path: Path, trust_pickle: bool = False):
    """Read a released .ckpt/.pth (safely) and return the predictor, eval mode, on the CPU."""
    obj, skipped = read_torch_file(path, trust_pickle)
    sd = find_state_dict(obj, path)
    meta = {"source": str(path), "skipped_objects": skipped}
    if isinstance(obj, dict):
        for k in ("epoch", "global_step", "pytorch-lightning_version"):
            if isinstance(obj.get(k), (int, str)):
                meta[k] = obj[k]
    return build_backbone(sd, path, meta).eval()


def save_published_layout(model, path: Path, extra: dict | None = None) -> Path:
    """Write the pretrained tree as a release does (MVSplat: Lightning-style ``{"state_dict":
    {"encoder.*": ...}, "epoch", "global_step", ...}``; DepthSplat: ``{"encoder.*": ...}``);
    used for random-weights test files."""
    sd = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    if model.cfg.family == "mvsplat":
        obj = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.1.0", "state_dict": sd}
    else:
        obj = dict(sd)
    obj.update(extra or {})
    path = Path(path)
    torch.save(obj, path)
    return path


__all__ = ["sniff", "read_torch_file", "find_state_dict", "detect_family", "mvsplat_arch_from_state",
           "depthsplat_arch_from_state",
           "build_backbone", "load_backbone_file", "save_published_layout", "TRUST_ENV"]
