"""One progress display (rich, on stderr) for the steps of a command.

Every step that can take longer than about a second (SfM, prediction, rendering, writing)
runs inside ``Steps.step(label, total)``; a step with a total shows a bar with an ETA, one
without shows a spinner and its elapsed time. On a terminal the display updates in place;
elsewhere rich prints the finished display once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional


class Steps:
    """A rich Progress on stderr; with ``enabled=False`` every method is a no-op."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.p = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=False)

    def __enter__(self) -> "Steps":
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None:
            if exc[0] is not None:
                # an error or an interrupt: its one-line message must be all that is left on stderr
                for t in list(self.p.tasks):
                    self.p.remove_task(t.id)
                self.p.live.transient = True
            self.p.__exit__(*exc)

    @contextmanager
    def step(self, label: str, total: Optional[int] = None) -> Iterator[Callable[[int], None]]:
        """Show one step; yields ``advance(n=1)``. The bar is completed when the block ends normally."""
        if self.p is None:
            yield lambda n=1: None
            return
        task = self.p.add_task(label, total=total)
        yield lambda n=1: self.p.advance(task, n)
        t = next(t for t in self.p.tasks if t.id == task)
        self.p.update(task, total=t.total or 1, completed=t.total or 1)


__all__ = ["Steps"]
