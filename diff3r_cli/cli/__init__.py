"""The `diff3r` command line: a thin Typer app that parses options, calls an engine, and presents
its result. ``main`` is the console-script entry (``diff3r = diff3r_cli.cli:main``).

| module          | what                                                                         |
|-----------------|------------------------------------------------------------------------------|
| entry           | main(): process set-up (OpenMP policy, signals), usage errors, exit statuses |
| root            | the Typer app, its root options (--version, --backend), command registration |
| scene_commands  | reconstruct, refine, render, view                                            |
| inspect_command | inspect                                                                      |
| train_command   | train                                                                        |
| eval_command    | eval                                                                         |
| data_commands   | data synth                                                                   |
| guard           | the per-command error wrapper: one line on stderr, exit 2 / 130 / 143        |
| checks          | input/output checks and option parsers shared by the commands                |
| options         | the choice enums                                                             |
| progress        | rich progress displays, and the adapter that feeds them from engine events   |
| present         | result tables and notices                                                    |

Importing this package does not import torch (the entry sets ``OMP_WAIT_POLICY`` first); the
Typer ``app`` (diff3r_cli.cli.root) is imported on first access to ``diff3r_cli.cli.app``.
"""

from __future__ import annotations

from typing import Any

from diff3r_cli.cli.entry import main


def __getattr__(name: str) -> Any:
    # `from diff3r_cli.cli import app` (tests, scripts) without importing torch on package import
    if name == "app":
        from diff3r_cli.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "app"]
