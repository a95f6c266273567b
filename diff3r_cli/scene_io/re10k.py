"""RE10K chunk format as prepared for pixelSplat/MVSplat/DepthSplat.

Layout: ``<root>/{train,test}/*.torch`` chunks, each a ``torch.save``'d list of dicts:

- ``key`` (str), ``url`` (str), ``timestamps`` (T,) int64,
- ``cameras`` (T,18) float32: fx/W fy/H cx/W cy/H 0 0, then a row-major 3x4 w2c (OpenCV),
- ``images``: list of T uint8 1-D tensors holding JPEG bytes,
- optional extras we write ourselves: ``depths`` (list of T float16 (H,W) z-depth maps).

``<root>/{train,test}/index.json`` maps key -> chunk file name. An evaluation index is a
JSON file mapping key -> {"context": [i, j], "target": [k, ...]} (or null to skip).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diff3r_cli.cameras import Cameras
from diff3r_cli.errors import UserError
from diff3r_cli.fsio import atomic_save, atomic_write_bytes
from diff3r_cli.scene_io.scene import Scene

REQUIRED_KEYS = ("key", "cameras", "images")
LAYOUT_HINT = ("expected an RE10K dataset: <root>/{train,test}/*.torch chunks (torch.save'd lists of dicts "
               "with key, url, timestamps, cameras (T,18), images) plus index.json")


class BadChunkError(Exception):
    """A chunk file that cannot be used: truncated, not a list of examples, or missing keys."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically."""
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write_bytes(path, data)


def validate_example(example: Any, path: str | Path = "<memory>") -> None:
    """Raise BadChunkError unless ``example`` has the RE10K keys with consistent shapes."""
    if not isinstance(example, dict):
        raise BadChunkError(path, f"an example is a {type(example).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in example]
    if missing:
        raise BadChunkError(path, f"example lacks key(s) {missing}")
    cams = example["cameras"]
    if not isinstance(cams, torch.Tensor) or cams.dim() != 2 or cams.shape[1] != 18:
        shape = tuple(cams.shape) if isinstance(cams, torch.Tensor) else type(cams).__name__
        raise BadChunkError(path, f"example {example['key']!r}: cameras must be (T,18), got {shape}")
    if len(example["images"]) != cams.shape[0]:
        raise BadChunkError(path, f"example {example['key']!r}: {len(example['images'])} images "
                                  f"but {cams.shape[0]} cameras")


def read_chunk(path: str | Path) -> list[dict]:
    """Load one chunk; raise BadChunkError if it is truncated, unreadable or has wrong keys."""
    path = Path(path)
    try:
        # weights_only: chunks hold only tensors, strings and lists; never run pickled code.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, garbage bytes, foreign pickle ...
        raise BadChunkError(path, f"cannot be loaded ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, list):
        raise BadChunkError(path, f"holds a {type(data).__name__}, not a list of examples")
    for ex in data:
        validate_example(ex, path)
    return data


def write_chunk(path: str | Path, examples: list[dict]) -> None:
    """Save a list of examples as one chunk, atomically (validated first)."""
    for ex in examples:
        validate_example(ex, path)
    atomic_save(path, lambda f: torch.save(examples, f))


def encode_jpeg(image: torch.Tensor | np.ndarray, quality: int = 92) -> torch.Tensor:
    """(H,W,3) float [0,1] or uint8 -> uint8 1-D tensor of JPEG bytes."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).clone()


def decode_jpeg(data: torch.Tensor | bytes) -> torch.Tensor:
    """JPEG bytes (uint8 1-D tensor or bytes) -> (H,W,3) float32 in [0,1]."""
    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    with Image.open(io.BytesIO(raw)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).float().div_(255.0)


def jpeg_size(data: torch.Tensor | bytes) -> tuple[int, int]:
    """(width, height) of a JPEG without decoding its pixels."""
    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    with Image.open(io.BytesIO(raw)) as im:
        return im.size


def cameras_to_rows(K: torch.Tensor, w2c: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Inverse of example_to_cameras: (T,3,3) pixel K and (T,4,4) w2c -> (T,18) float32 rows."""
    T = K.shape[0]
    rows = torch.zeros(T, 18, dtype=torch.float64)
    rows[:, 0] = K[:, 0, 0].double() / width
    rows[:, 1] = K[:, 1, 1].double() / height
    rows[:, 2] = K[:, 0, 2].double() / width
    rows[:, 3] = K[:, 1, 2].double() / height
    rows[:, 6:] = w2c[:, :3, :4].double().reshape(T, 12)
    return rows.float()


def example_to_cameras(example: dict, width: int, height: int, frames: list[int] | None = None) -> Cameras:
    """Decode the (T,18) camera rows of an example into pixel-unit Cameras for a width x height image."""
    rows = example["cameras"].to(torch.float64)
    if frames is not None:
        rows = rows[torch.as_tensor(frames, dtype=torch.long)]
    T = rows.shape[0]
    K = torch.zeros(T, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = rows[:, 0] * width
    K[:, 1, 1] = rows[:, 1] * height
    K[:, 0, 2] = rows[:, 2] * width
    K[:, 1, 2] = rows[:, 3] * height
    K[:, 2, 2] = 1.0
    w2c = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
    w2c[:, :3, :4] = rows[:, 6:].reshape(T, 3, 4)
    return Cameras(K, w2c, width, height)


def read_index(split_dir: str | Path) -> dict[str, str]:
    """index.json of a split dir (key -> chunk file); {} when absent."""
    p = Path(split_dir) / "index.json"
    if not p.exists():
        return {}
    try:
        idx = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"index.json is not valid JSON ({exc})", p, "regenerate it or delete it") from None
    if not isinstance(idx, dict):
        raise UserError("index.json must map key -> chunk file name", p, "regenerate it")
    return idx


def read_evaluation_index(path: str | Path) -> dict[str, dict | None]:
    """Evaluation index JSON: key -> {"context": [...], "target": [...]} or null (skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError("evaluation index not found", p, "pass the JSON file mapping key -> {context, target}")
    try:
        idx = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"evaluation index is not valid JSON ({exc})", p, "fix or regenerate the file") from None
    if not isinstance(idx, dict):
        raise UserError("evaluation index must map key -> {context, target}", p, "fix or regenerate the file")
    for k, v in idx.items():
        if v is None:
            continue
        if not (isinstance(v, dict) and isinstance(v.get("context"), list) and isinstance(v.get("target"), list)):
            raise UserError(f"entry {k!r} must be {{'context': [...], 'target': [...]}} or null", p,
                            "fix or regenerate the file")
    return idx


def find_chunks(root: str | Path, split: str | None = None) -> list[Path]:
    """Chunk files under root: a chunk itself, a split dir, or a dataset root (all or one split)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    direct = sorted(root.glob("*.torch"))
    if direct:
        return direct
    splits = [split] if split else ["train", "test"]
    out: list[Path] = []
    for s in splits:
        out += sorted((root / s).glob("*.torch"))
    return out


def load_re10k_scene(root: str | Path, key: str | None = None, frames: list[int] | None = None,
                     split: str | None = None) -> Scene:
    """Load one RE10K example as a Scene (format "re10k").

    root: dataset root, split dir or one chunk. key: the example key (default: the first example
    found). frames: frame indices to keep (default all). Depth maps, when stored, go to
    ``scene.extras["depths"]`` (C,H,W) float32.
    """
    root = Path(root)
    if not root.exists():
        raise UserError("path does not exist", root, LAYOUT_HINT)
    chunks = find_chunks(root, split)
    if not chunks:
        raise UserError("no .torch chunks found", root, LAYOUT_HINT)
    # Use index.json to go straight to the chunk holding the key when we can.
    if key is not None and root.is_dir():
        for d in ([root] + [root / s for s in ("train", "test")]):
            idx = read_index(d) if d.is_dir() else {}
            if key in idx and (d / idx[key]).is_file():
                chunks = [d / idx[key]] + [c for c in chunks if c != d / idx[key]]
                break
    example = None
    for chunk in chunks:
        try:
            data = read_chunk(chunk)
        except BadChunkError as exc:
            if root.is_file():
                raise UserError(f"not a usable RE10K chunk ({exc.reason})", chunk, LAYOUT_HINT) from None
            continue
        for ex in data:
            if key is None or ex["key"] == key:
                example = ex
                break
        if example is not None:
            break
    if example is None:
        what = "no readable example" if key is None else f"no example with key {key!r}"
        raise UserError(f"{what} in {len(chunks)} chunk(s)", root,
                        "check the key (see index.json) and that the chunks are not truncated")
    T = example["cameras"].shape[0]
    sel = list(range(T)) if frames is None else [int(f) for f in frames]
    bad = [f for f in sel if not -T <= f < T]
    if bad:
        raise UserError(f"frame indices {bad} out of range for {T} frames in {example['key']!r}", root,
                        f"use indices in 0..{T - 1}")
    sel = [f % T for f in sel]
    imgs = [decode_jpeg(example["images"][f]) for f in sel]
    h, w = imgs[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in imgs):
        raise UserError(f"frames of {example['key']!r} differ in size", root, "re-export the chunk")
    cams = example_to_cameras(example, w, h, sel)
    extras: dict = {"key": example["key"], "url": example.get("url", ""), "frames": sel}
    if "timestamps" in example:
        extras["timestamps"] = torch.as_tensor(example["timestamps"])[torch.as_tensor(sel)]
    if "depths" in example and len(example["depths"]) == T:
        extras["depths"] = torch.stack([example["depths"][f].float() for f in sel])
    paths = [f"{example['key']}/{f:05d}" for f in sel]
    return Scene(torch.stack(imgs), cams, paths, "re10k", root, extras)


__all__ = ["BadChunkError", "read_chunk", "write_chunk", "example_to_cameras", "cameras_to_rows", "decode_jpeg",
           "encode_jpeg", "load_re10k_scene", "read_index", "read_evaluation_index", "find_chunks",
           "write_json_atomic", "validate_example"]
