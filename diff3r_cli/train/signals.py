"""Ctrl-C / SIGTERM during training: finish the current step, checkpoint, return."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """SIGINT/SIGTERM -> ``requested`` (the loop stops after the step); a second SIGINT aborts.

    `installed()` puts the handler in place for the loop only and restores the previous handlers
    afterwards, whatever happens: a library call must not leave its handler behind.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        try:
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        try:
            yield self
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)


__all__ = ["StopFlag"]
