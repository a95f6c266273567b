"""The Typer app: its help, its root options (--version, --backend), and the commands.

Each command lives in a module of its group (scene_commands, inspect_command, train_command,
eval_command, data_commands) as a plain function wrapped by ``guard.guarded``; they are
registered here, in the order `diff3r --help` lists them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from diff3r_cli import __version__
from diff3r_cli.cli import data_commands, eval_command, inspect_command, scene_commands, train_command
from diff3r_cli.cli.options import RenderBackend
from diff3r_cli.render import ENV_BACKEND

app = typer.Typer(
    name="diff3r",
    help=("Feed-forward 3D Gaussian Splatting with uncertainty-aware test-time optimization (Diff3R).\n\n"
          "Typical use: [bold]diff3r reconstruct ./images --out scene.ply[/bold], then "
          "[bold]diff3r refine scene.ply[/bold] and [bold]diff3r render scene.ply[/bold]."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # unexpected errors are handled in entry.main()
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Datasets: generate synthetic RE10K-format training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        print(f"diff3r {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          backend: Annotated[RenderBackend, typer.Option(
              "--backend", help="Rasterizer for every command: auto = gsplat on CUDA, the compiled C++ "
                                "kernel on the CPU (torch if it cannot be built); cpu, torch or gsplat to "
                                "force one. Same as DIFF3R_RENDER_BACKEND.")] = RenderBackend.auto) -> None:
    """Feed-forward 3D Gaussian Splatting with uncertainty-aware test-time optimization."""
    if backend != RenderBackend.auto:
        # render(backend="auto") reads the variable, so every engine (and DDP workers, which
        # inherit the environment) uses the chosen rasterizer.
        os.environ[ENV_BACKEND] = backend.value


app.command()(scene_commands.reconstruct)
app.command()(scene_commands.refine)
app.command("render")(scene_commands.render_cmd)
app.command()(scene_commands.view)
app.command()(train_command.train)
app.command("eval")(eval_command.eval_cmd)
app.command()(inspect_command.inspect)
data_app.command("synth")(data_commands.data_synth)

__all__ = ["app", "data_app"]
