"""Clean Ctrl-C / SIGTERM handling for every command.

``install()`` (called once by the CLI) routes SIGINT and SIGTERM to a Python handler that
raises :class:`Interrupted` (a KeyboardInterrupt), so ``finally`` blocks and the atomic
writers remove their temporary files and the CLI exits 130 (SIGINT) or 143 (SIGTERM) with
one line on stderr.

Two things make this harder than ``signal.signal``:

- pycolmap installs glog's failure handler (a 35-line C++ stack trace on SIGTERM) when it is
  imported; modules that import pycolmap call :func:`reclaim` right after, which puts our
  handler back.
- A Python handler only runs between bytecodes; during a long C++ call (SfM matching) it would
  wait for the call to return. A watchdog thread, woken through ``signal.set_wakeup_fd``,
  waits ``GRACE_S`` for the Python handler; if it has not run by then, the watchdog removes
  every registered temporary path itself and ends the process with the same exit status.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

GRACE_S = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_temps: set[str] = set()
_lock = threading.Lock()
_installed = False
_handled = threading.Event()     # the Python handler ran (main thread is in Python code)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on SIGINT/SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code(exc: BaseException) -> int:
    """130 for a plain KeyboardInterrupt, 128+N for Interrupted by signal N."""
    return getattr(exc, "exit_code", 128 + signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


# --- temporary paths ------------------------------------------------------------------------

def register_temp(path: str | Path) -> None:
    """Remember a temporary file/folder to delete if the process is ended by a signal."""
    with _lock:
        _temps.add(os.path.abspath(path))


def unregister_temp(path: str | Path) -> None:
    with _lock:
        _temps.discard(os.path.abspath(path))


@contextmanager
def temp_path(path: str | Path) -> Iterator[Path]:
    """Register ``path`` as temporary for the duration of the block."""
    register_temp(path)
    try:
        yield Path(path)
    finally:
        unregister_temp(path)


def remove_temps() -> None:
    """Delete every registered temporary path (best effort)."""
    with _lock:
        paths = list(_temps)
        _temps.clear()
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


# --- handlers -------------------------------------------------------------------------------

def _handler(signum: int, frame) -> None:
    if _handled.is_set():
        # a second signal while the first one's clean-up runs: the user insists, stop now
        _hard_exit(signum)
    _handled.set()
    raise Interrupted(signum)


def _hard_exit(signum: int) -> None:
    remove_temps()
    try:
        sys.stderr.write(f"error: interrupted ({signal.Signals(signum).name})\n")
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(128 + signum)


def _watchdog(sock: socket.socket) -> None:
    """Wake on each signal byte; if the Python handler has not run within GRACE_S, the main
    thread is stuck in native code: clean up and exit from here."""
    while True:
        try:
            data = sock.recv(16)
        except OSError:
            return
        if not data:
            return
        signum = data[-1]
        if signum not in [int(s) for s in _SIGNALS]:
            continue
        if signal.getsignal(signum) is not _handler:
            continue  # another Python handler owns it now (e.g. train's checkpoint-then-stop flag)
        if not _handled.wait(GRACE_S):
            _hard_exit(signum)


def reclaim() -> None:
    """Re-install our handlers (after a library such as pycolmap replaced them)."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in _SIGNALS:
            signal.signal(s, _handler)


def install() -> None:
    """Route SIGINT/SIGTERM to :class:`Interrupted` and start the watchdog (main thread only)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        r, w = socket.socketpair()
        r.setblocking(True)
        w.setblocking(False)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=_watchdog, args=(r,), name="diff3r-signal-watchdog", daemon=True).start()
        install.sockets = (r, w)  # keep them alive
    except (ValueError, OSError):
        pass  # no watchdog: the Python handler alone still works between bytecodes
    _installed = True


__all__ = ["Interrupted", "install", "reclaim", "register_temp", "unregister_temp", "temp_path",
           "remove_temps", "exit_code", "signal_name"]
