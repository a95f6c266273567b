"""The error wrapper every command runs in: a UserError (bad input, with the file and the fix) or
a NumericalError becomes one line ``error: ...`` on stderr and exit status 2, never a traceback;
SIGINT/SIGTERM become ``error: interrupted (SIGxxx)`` and exit 130/143 after temporary files are
removed (diff3r_cli.interrupts)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn

import typer

from diff3r_cli.errors import NumericalError, UserError


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit. Plain print: Rich would wrap long lines."""
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)
    raise typer.Exit(code)


def guarded(fn: Callable) -> Callable:
    """Run a command; UserError/NumericalError -> one-line message, exit 2; interrupts -> 130/143."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(e.one_line())
        except NumericalError as e:
            fail(f"numerical failure: {e} — try fewer steps, --optimizer adam, or a smaller learning rate")
        except KeyboardInterrupt as e:
            from diff3r_cli.interrupts import exit_code, remove_temps, signal_name

            remove_temps()
            fail(f"interrupted ({signal_name(e)})", exit_code(e))
    return wrapper


__all__ = ["fail", "guarded"]
