"""Running pycolmap quietly and visibly: glog silenced unless asked for, a rich progress display."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pycolmap

from diff3r_cli.interrupts import reclaim

reclaim()  # importing pycolmap installed glog's SIGTERM handler (a C++ stack trace): put ours back


def match_all_pairs(database: Path, seed: int = 0) -> None:
    """Exhaustive SIFT matching of every image pair in ``database``, verified by RANSAC seeded with ``seed``.

    pycolmap's verification seeds itself from the clock by default (``random_seed`` -1). Seeding
    it is not enough to make SfM repeatable: the matcher itself returns different matches from
    run to run (measured on 5 synthetic frames with identical keypoints and descriptors: the
    per-pair match counts change between runs, with one thread and with the brute-force matcher
    too), which is why ``run_sfm`` matches again when photos were left unposed.
    """
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = int(seed)
    pycolmap.match_exhaustive(database, verification_options=verification, device=pycolmap.Device.cpu)


def clear_matches(database: Path) -> None:
    """Drop the matches and verified geometries from ``database`` (features stay) before matching again."""
    with pycolmap.Database.open(str(database)) as db:
        db.clear_matches()
        db.clear_two_view_geometries()


@contextmanager
def quiet_colmap(level: int = 3):
    """Silence COLMAP's glog chatter (INFO lines per image) unless the user asked for it."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = level
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


class SfmProgress:
    """A rich progress display on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total_images: int):
        self.enabled = enabled
        self.total = total_images
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self.p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            if exc[0] is not None:  # error or interrupt: leave only its one-line message on stderr
                for t in list(self.p.tasks):
                    self.p.remove_task(t.id)
                self.p.live.transient = True
            self.p.__exit__(*exc)

    def stage(self, description: str, total: int | None = None):
        if not self.enabled:
            return None
        return self.p.add_task(description, total=total)

    def done(self, task, completed: int | None = None):
        """Mark a stage finished (``completed`` of its total, e.g. registered images, when given)."""
        if self.enabled and task is not None:
            total = next(t.total for t in self.p.tasks if t.id == task) or 1
            self.p.update(task, completed=total if completed is None else completed, total=total)

    def advance(self, task, n: int = 1):
        if self.enabled and task is not None:
            self.p.advance(task, n)


__all__ = ["quiet_colmap", "SfmProgress"]
