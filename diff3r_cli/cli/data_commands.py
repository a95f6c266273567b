"""`diff3r data ...`: dataset commands (today: `data synth`, the synthetic scene generator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diff3r_cli.cli.checks import check_output_dir
from diff3r_cli.cli.guard import guarded
from diff3r_cli.cli.options import Split
from diff3r_cli.cli.present import print_result


@guarded
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset root (RE10K layout: "
                                                          "<out>/<split>/*.torch + index.json).", show_default=False)],
    scenes: Annotated[int, typer.Option(min=1, help="Number of scenes.")] = 100,
    frames: Annotated[int, typer.Option(min=2, help="Frames per scene (24 at 128² keeps 2,000 scenes under an hour on 2 cores; 40 at 256² takes ~5 h).")] = 24,
    resolution: Annotated[int, typer.Option(min=8, help="Image size (square).")] = 128,
    seed: Annotated[int, typer.Option(help="First scene seed (test scenes use a disjoint seed range).")] = 0,
    split: Annotated[Split, typer.Option(help="Which split to write.")] = Split.train,
) -> None:
    """Generate synthetic indoor scenes (exact ray casting) as RE10K-format chunks."""
    from diff3r_cli.data.synth import generate_dataset

    check_output_dir(out)
    print_result(generate_dataset(out, scenes=scenes, frames=frames, resolution=resolution, seed=seed,
                                  split=split.value, progress=True))


__all__ = ["data_synth"]
