"""Progress on stderr (rich) for the commands, fed by the engines' progress events.

Every step that can take longer than about a second (SfM, prediction, rendering, writing) is a
task of a :class:`StepsDisplay`: with a total it shows a bar with an ETA, without one a spinner
and its elapsed time. An optimisation (refine) has its own bar with the energy E
(:class:`OptimizerDisplay`). :class:`RichProgress` is the callback an engine gets: it opens and
closes the two displays as the events arrive (rich allows one live display at a time). On a
terminal the displays update in place; elsewhere rich prints each finished display once.
"""

from __future__ import annotations

from typing import Optional

from diff3r_cli.engines.progress import ProgressEvent


class StepsDisplay:
    """A rich Progress on stderr for named steps."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.task = None

    def open(self) -> None:
        self.p.__enter__()

    def close(self, *exc) -> None:
        if exc and exc[0] is not None:
            # an error or an interrupt: its one-line message must be all that is left on stderr
            for t in list(self.p.tasks):
                self.p.remove_task(t.id)
            self.p.live.transient = True
        self.p.__exit__(*(exc or (None, None, None)))

    def begin(self, label: str, total: Optional[int]) -> None:
        self.task = self.p.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self.p.advance(self.task, n)

    def end(self) -> None:
        """Complete the current step's bar (a step without a total counts as 1 of 1)."""
        t = next(t for t in self.p.tasks if t.id == self.task)
        self.p.update(self.task, total=t.total or 1, completed=t.total or 1)


class OptimizerDisplay:
    """A rich bar with the step count, the energy E, the elapsed time and an ETA."""

    def __init__(self, label: str, steps: int):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("E={task.fields[energy]}"), TimeElapsedColumn(), TextColumn("eta"),
                          TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.task = self.p.add_task(label, total=steps, energy="-")

    def open(self) -> None:
        self.p.__enter__()

    def close(self, *exc) -> None:
        if exc and exc[0] is not None and not issubclass(exc[0], KeyboardInterrupt):
            self.p.live.transient = True  # an error: leave only its one-line message
        # an interrupt keeps the bar: it shows how far the optimisation got
        self.p.__exit__(*(exc or (None, None, None)))

    def iterate(self, step: int, energy: float) -> None:
        self.p.update(self.task, completed=min(step, self.p.tasks[0].total), energy=f"{energy:.5f}")


class RichProgress:
    """The progress callback the commands hand to the engines (a context manager around the call).

    ``with RichProgress() as progress: engine(..., progress=progress)``; on an exception the open
    display is closed as the error wants (see the displays' ``close``).
    """

    def __init__(self):
        self.steps: Optional[StepsDisplay] = None
        self.opt: Optional[OptimizerDisplay] = None

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc) -> None:
        self._close_all(*exc)

    def _close_all(self, *exc) -> None:
        if self.steps is not None:
            self.steps, steps = None, self.steps
            steps.close(*exc)
        if self.opt is not None:
            self.opt, opt = None, self.opt
            opt.close(*exc)

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.kind == "begin":
            if self.steps is None:
                self._close_all()
                self.steps = StepsDisplay()
                self.steps.open()
            self.steps.begin(ev.label, ev.total)
        elif ev.kind == "advance" and self.steps is not None:
            self.steps.advance(ev.n)
        elif ev.kind == "end" and self.steps is not None:
            self.steps.end()
        elif ev.kind == "optimize":
            self._close_all()
            self.opt = OptimizerDisplay(ev.label, ev.total or 0)
            self.opt.open()
        elif ev.kind == "iterate" and self.opt is not None:
            self.opt.iterate(ev.n, ev.energy)
        elif ev.kind == "optimized":
            self._close_all()


__all__ = ["StepsDisplay", "OptimizerDisplay", "RichProgress"]
