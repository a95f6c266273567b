"""`diff3r data ...`: dataset commands (today: `data synth`, the synthetic scene generator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diff3r_cli.cli.checks import check_output_dir
from diff3r_cli.cli.guard import guarded
from diff3r_cli.cli.options import Split
from diff3r_cli.cli.present import print_result
from diff3r_cli.data.synth_config import CLASSIC, SynthConfig

_S = SynthConfig()  # the generator's defaults, shown by --help


@guarded
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset root (RE10K layout: "
                                                          "<out>/<split>/*.torch + index.json).", show_default=False)],
    scenes: Annotated[int, typer.Option(min=1, help="Number of scenes.")] = 100,
    frames: Annotated[int, typer.Option(min=2, help="Frames per scene (24 at 128² keeps 2,000 scenes under an hour on 2 cores; 40 at 256² takes ~5 h).")] = 24,
    resolution: Annotated[int, typer.Option(min=8, help="Short side of the frames; the long side and the "
                                                      "orientation (landscape or portrait) are each scene's.")] = 128,
    seed: Annotated[int, typer.Option(help="First scene seed (test scenes use a disjoint seed range).")] = 0,
    split: Annotated[Split, typer.Option(help="Which split to write.")] = Split.train,
    texture_root: Annotated[Optional[Path], typer.Option(help="RE10K-format root whose train/ photos give "
                                                              "image textures (test/ is never read); without "
                                                              "it, or if it is absent, procedural textures only. "
                                                              "The output inherits the photos' licences.")] = None,
    photo_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of surfaces textured with a "
                                                                         "photo patch (with --texture-root).")]
    = _S.photo_fraction,
    classic: Annotated[bool, typer.Option("--classic", help="The generator of before issue 13: square frames, "
                                                            "55-75° field of view, fewer objects, one kind of "
                                                            "camera path, no exposure drift.")] = False,
) -> None:
    """Generate synthetic scenes (exact ray casting) as RE10K-format chunks."""
    from dataclasses import replace

    from diff3r_cli.data.synth import generate_dataset

    check_output_dir(out)
    config = replace(CLASSIC if classic else _S, texture_root=texture_root, photo_fraction=photo_fraction)
    print_result(generate_dataset(out, scenes=scenes, frames=frames, resolution=resolution, seed=seed,
                                  split=split.value, progress=True, config=config))


__all__ = ["data_synth"]
