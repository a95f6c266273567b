"""`diff3r inspect`: what diff3r sees in a path, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from diff3r_cli.cli.checks import require_exists
from diff3r_cli.cli.guard import guarded


@guarded
def inspect(
    path: Annotated[Path, typer.Argument(help="A .ply splat, a weights file (.safetensors, MVSplat .ckpt), or an "
                                              "input (image folder, COLMAP dataset, transforms.json, RE10K root).",
                                         show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    sfm: Annotated[bool, typer.Option("--sfm", help="For a bare image folder, run SfM to show poses "
                                                    "(slow). Default: just list the images.")] = False,
) -> None:
    """Show what diff3r sees in PATH (an input dataset, a .ply or a weights file).

    For an input: format, views, resolution, intrinsics and camera centres (a bare image folder is listed without SfM unless --sfm). For a .ply: Gaussian count, SH degree, bounds, and whether uncertainty is stored.
    """
    from diff3r_cli.cli.present import print_inspect
    from diff3r_cli.engines.inspect import inspect_path

    info = inspect_path(require_exists(path), sfm=sfm)
    if json_out:
        print(json.dumps(info, indent=1))
    else:
        print_inspect(info)


__all__ = ["inspect"]
