"""The in-memory scene every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from diff3r_cli.cameras import Cameras


@dataclass
class Scene:
    """Posed images. images: (C,H,W,3) float32 in [0,1]; cameras share the images' size."""

    images: torch.Tensor
    cameras: Cameras
    paths: list[str]
    format: str
    root: Path | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height
