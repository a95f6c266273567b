"""Console-script entry: process-wide set-up, then the Typer app; every failure is one line on stderr.

Kept free of torch imports: ``OMP_WAIT_POLICY`` must be in the environment before torch (and
its OpenMP runtime) is loaded, which happens when ``main`` imports the app.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn, Optional

import typer

from diff3r_cli.errors import NumericalError, UserError

# click's exception base, found through Typer's public BadParameter so it works whether Typer
# bundles click or depends on it
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _set_openmp_policy() -> None:
    # OpenMP's default spin-waiting makes 2 threads 2-3x slower than 1 on a busy CPU (measured with
    # benchmarks/render.py); passive waiting costs nothing when the machine is idle. Only the CLI
    # sets it (a library import must not change the process); users can still override it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _usage_error(e: Exception) -> NoReturn:
    """Unknown option, bad choice, missing argument: one line (bare `diff3r` / `diff3r data`: the help)."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":
        print(ctx.get_help() if ctx is not None else e.format_message())
        sys.exit(0)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"error: {' '.join(e.format_message().split())}{hint}", file=sys.stderr)
    sys.exit(e.exit_code)


def _interrupted(e: BaseException) -> NoReturn:
    from diff3r_cli.interrupts import exit_code, remove_temps, signal_name

    remove_temps()
    print(f"error: interrupted ({signal_name(e)})", file=sys.stderr)
    sys.exit(exit_code(e))


def _internal_error(e: Exception) -> NoReturn:
    """A bug, not bad input: keep it short but findable (DIFF3R_DEBUG=1 shows the traceback)."""
    if os.environ.get("DIFF3R_DEBUG"):
        traceback.print_exc()
    else:
        print(f"error: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              f"(set DIFF3R_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
    sys.exit(1)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the `diff3r` app on ``argv`` (default: sys.argv) and exit with its status.

    Bad input and usage errors exit 2; SIGINT/SIGTERM 130/143 after temporary files are removed;
    unexpected errors (bugs) exit 1 with one line unless DIFF3R_DEBUG=1.
    """
    _set_openmp_policy()
    from diff3r_cli.interrupts import install

    install()  # SIGINT/SIGTERM -> Interrupted: clean-up runs, exit 130/143, no foreign stack traces
    try:
        from diff3r_cli.cli.root import app

        rc = app(args=argv, prog_name="diff3r", standalone_mode=False)
    except _ClickException as e:
        _usage_error(e)
    except KeyboardInterrupt as e:  # outside a command's own handler (e.g. while importing)
        _interrupted(e)
    except typer.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # click turns Ctrl-C in a prompt into Abort
            _interrupted(e.__context__)
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except (UserError, NumericalError) as e:  # raised outside a command (should not happen)
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        _internal_error(e)
    sys.exit(rc if isinstance(rc, int) else 0)


__all__ = ["main"]
