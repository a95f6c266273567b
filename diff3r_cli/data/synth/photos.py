"""Image textures cut from real photos: random crops (random scale, maybe mirrored) of the frames of
an RE10K-format root's *train* split.

Only ``<root>/train/*.torch`` is ever opened: the test split, and any evaluation scene, must not
leak into training data through the textures. The photos stay where they are (nothing is copied
into the repository or the package); a dataset generated with them holds derived patches and
inherits the photos' licences (research-only for several sources of ../shared/data/real).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from diff3r_cli.data.synth_config import SynthConfig
from diff3r_cli.data.synth.draw import rand, randint, uniform
from diff3r_cli.scene_io.re10k import BadChunkError, decode_jpeg, read_chunk

PATCH = 64  # texels per patch side: more than a wall spans in a 128-256 px frame at 1-2 m per patch


class PhotoBank:
    """The JPEG bytes of every frame of a root's train chunks (decoded only when a patch is cut)."""

    def __init__(self, root: Path, jpegs: list[torch.Tensor]):
        self.root = root
        self.jpegs = jpegs

    def __len__(self) -> int:
        return len(self.jpegs)

    def patch(self, g: torch.Generator, size: int = PATCH) -> torch.Tensor:
        """A random square crop, 20-60% of a random photo's short side, maybe mirrored: (3,size,size) float32."""
        img = decode_jpeg(self.jpegs[randint(g, 0, len(self.jpegs) - 1)])  # (H,W,3) in [0,1]
        h, w = img.shape[:2]
        side = max(2, int(uniform(g, 0.2, 0.6) * min(h, w)))
        top, left = randint(g, 0, h - side), randint(g, 0, w - side)
        crop = img[top:top + side, left:left + side].permute(2, 0, 1)[None].float()
        if uniform(g, 0, 1) < 0.5:
            crop = crop.flip(-1)
        return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)[0].clamp(0, 1)


_BANKS: dict[str, Optional[PhotoBank]] = {}


def train_chunks(root: str | Path) -> list[Path]:
    """The chunk files a texture root contributes: ``<root>/train/*.torch``, sorted (never test/)."""
    split = Path(root) / "train"
    return sorted(split.glob("*.torch")) if split.is_dir() else []


def load_bank(root: str | Path) -> Optional[PhotoBank]:
    """The photos of ``root``'s train split (cached per process); None, with a warning, when it has none."""
    key = str(Path(root).resolve())
    if key in _BANKS:
        return _BANKS[key]
    jpegs: list[torch.Tensor] = []
    for path in train_chunks(root):
        try:
            jpegs += [img for ex in read_chunk(path) for img in ex["images"]]
        except BadChunkError as exc:
            warnings.warn(f"texture photos: skipping {exc}", stacklevel=2)
    bank = PhotoBank(Path(root), jpegs) if jpegs else None
    if bank is None:
        warnings.warn(f"no photos under {Path(root) / 'train'}: procedural textures only", stacklevel=2)
    _BANKS[key] = bank
    return bank


def _yaw_rotation(yaw: float) -> torch.Tensor:
    """World -> box-local rotation, as the ray caster's box frame (so box faces map to patch planes)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float64)


def photo_textures(textures: list, boxes: torch.Tensor, n_spheres: int, config: SynthConfig,
                   g: torch.Generator) -> list:
    """Replace each surface's texture by a photo patch with probability ``config.photo_fraction``.

    Room faces get patches spanning 0.6-2.5 m, objects 0.25-1 m. For an image texture ``rot`` is
    the world -> texture frame (a box's yaw, else the identity) and ``offset`` shifts the patch.
    """
    bank = load_bank(config.texture_root)
    if bank is None:
        return textures
    out = []
    for i, tex in enumerate(textures):
        if uniform(g, 0, 1) >= config.photo_fraction:
            out.append(tex)
            continue
        tile = uniform(g, 0.6, 2.5) if i < 6 else uniform(g, 0.25, 1.0)
        b = i - 6 - n_spheres
        rot = _yaw_rotation(float(boxes[b, 6])) if 0 <= b < len(boxes) else torch.eye(3, dtype=torch.float64)
        out.append(replace(tex, image=bank.patch(g), tile=tile, rot=rot, offset=rand(g, 0, 10, 3)))
    return out


__all__ = ["PhotoBank", "load_bank", "train_chunks", "photo_textures", "PATCH"]
