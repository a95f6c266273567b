"""User-facing errors: the CLI prints them as one line on stderr and exits with status 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input, with the file it concerns and how to fix it.

    The CLI catches it and prints ``error: <path>: <message> (<fix>)`` without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.fix = fix
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        parts.append(self.message)
        if self.fix:
            parts.append(f" — {self.fix}")
        return "".join(parts).replace("\n", " ")


class NumericalError(RuntimeError):
    """NaN/inf met in an optimisation or a solve; the CLI reports it as a one-line error."""
