"""Progress reporting for the engines, as plain events (no display code here).

An engine takes an optional ``progress`` callback and calls it with :class:`ProgressEvent`s; the
CLI turns them into rich progress bars (``diff3r_cli.cli.progress``), a script may log them or
pass nothing. Two kinds of work are reported:

- a *step* (read images, predict, render a path...): ``begin`` (label, total or None), any
  number of ``advance`` (n units done), ``end`` when it finished normally;
- an *optimisation* (refine): ``optimize`` (label, total steps), one ``iterate`` per optimizer
  step (step number and energy E), ``optimized`` when it returned.

An exception ends the events without an ``end``; the display decides what to show then.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

EventKind = Literal["begin", "advance", "end", "optimize", "iterate", "optimized"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report; which fields matter depends on ``kind`` (see the module docstring)."""

    kind: EventKind
    label: str = ""
    total: Optional[int] = None
    n: int = 0                   # advance: units done; iterate: the optimizer step
    energy: float = math.nan     # iterate: E at that step


ProgressCallback = Callable[[ProgressEvent], None]


class Reporter:
    """Helper the engines use to emit events; with no callback every method is a no-op."""

    def __init__(self, callback: Optional[ProgressCallback] = None):
        self.callback = callback

    @property
    def enabled(self) -> bool:
        return self.callback is not None

    def emit(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    @contextmanager
    def step(self, label: str, total: Optional[int] = None) -> Iterator[Callable[[int], None]]:
        """Report one step; yields ``advance(n=1)``. ``end`` is sent only when the block ends normally."""
        self.emit(ProgressEvent("begin", label, total))
        yield lambda n=1: self.emit(ProgressEvent("advance", label, total, n))
        self.emit(ProgressEvent("end", label, total))


__all__ = ["ProgressEvent", "ProgressCallback", "Reporter"]
