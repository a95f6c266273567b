"""What the synthetic generator draws: one frozen config, the defaults of the library and `diff3r data synth`.

`SynthConfig()` is the generator of issue 13 (closer to real photos): frames of several aspects in
both orientations, 35-100° horizontal field of view, more clutter (occluders near the camera, thin
furniture), four kinds of camera path (the classic RE10K-like clip, a forward walk, an orbit around
an object, an aerial fly-by), a small exposure drift within each clip, and, when ``texture_root``
names an RE10K-format root, image textures cut from its *train* photos. `CLASSIC` reproduces the
scenes of the generator before it, bit for bit (`random_scene`'s default, so the bundled sample and
the tests built on those rooms keep their numbers).

Every new feature draws from its own random stream (`synth.draw.feature_generator`), so switching
one off leaves the classic draws, and hence the rest of the scene, unchanged. This module needs no
torch (the CLI reads its defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

PATH_KINDS = ("classic", "walk", "orbit", "aerial")


@dataclass(frozen=True)
class SynthConfig:
    """How random scenes are drawn (see the module doc); ranges are inclusive."""

    texture_root: Union[str, Path, None] = None   # RE10K root; only <root>/train/*.torch is ever read
    photo_fraction: float = 0.5                   # P(a surface gets a photo texture) when a root is given
    fov_deg: tuple[float, float] = (35.0, 100.0)  # horizontal field of view
    aspects: tuple[float, ...] = (4 / 3, 3 / 2, 16 / 9)  # long side / short side
    portrait_fraction: float = 0.3                # P(width and height swapped)
    objects: tuple[int, int] = (8, 16)            # free-standing boxes, spheres, cylinders
    occluders: tuple[int, int] = (1, 3)           # objects close to the camera path, in view
    furniture: tuple[int, int] = (1, 3)           # thin things: poles, tables on legs, shelves
    paths: tuple[tuple[str, float], ...] = (("classic", 1.0), ("walk", 1.0), ("orbit", 1.0), ("aerial", 1.0))
    exposure: float = 1.0                         # scale of the per-clip gain/gamma drift (0: none)

    def __post_init__(self) -> None:
        if not 0.0 <= self.photo_fraction <= 1.0 or not 0.0 <= self.portrait_fraction <= 1.0:
            raise ValueError("photo_fraction and portrait_fraction are probabilities")
        if not 0 < self.fov_deg[0] <= self.fov_deg[1] < 180:
            raise ValueError(f"fov_deg must lie in (0, 180), got {self.fov_deg}")
        if not self.aspects or min(self.aspects) < 1.0:
            raise ValueError("aspects are long/short side ratios >= 1")
        if any(kind not in PATH_KINDS for kind, _ in self.paths) or sum(w for _, w in self.paths) <= 0:
            raise ValueError(f"paths: (kind, weight) pairs with kinds in {PATH_KINDS} and a positive total")
        if self.exposure < 0:
            raise ValueError("exposure is a non-negative scale")


CLASSIC = SynthConfig(photo_fraction=0.0, fov_deg=(55.0, 75.0), aspects=(1.0,), portrait_fraction=0.0,
                      objects=(5, 10), occluders=(0, 0), furniture=(0, 0), paths=(("classic", 1.0),), exposure=0.0)

__all__ = ["SynthConfig", "CLASSIC", "PATH_KINDS"]
