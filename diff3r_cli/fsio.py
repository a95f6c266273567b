"""Atomic file output: the one place that writes files and folders the user keeps.

Every output goes to a temporary sibling first and is renamed into place only when complete,
so an error, Ctrl-C or a full disk never leaves a torn file and never clobbers a good one.
Files are fsynced, and so is their directory after the rename (the rename itself survives a
crash). A file that replaces an existing one keeps that file's permission bits; a new file
gets what a plain ``open()`` would give under the current umask (0644 under 022), not the
0600 that ``mkstemp`` picks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from diff3r_cli.errors import UserError


def default_mode(directory: bool = False) -> int:
    """Permission bits a plain open()/mkdir() would give under the current umask (0644/0755 under 022)."""
    mask = os.umask(0o022)  # there is no getter: read the umask and put it back at once
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777  # replacing a file keeps its permissions
    except OSError:
        return default_mode()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the file itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quiet(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed. OS errors become a one-line UserError
    naming the path.
    """
    from diff3r_cli.interrupts import register_temp, unregister_temp

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        register_temp(tmp)  # removed even when a signal ends the process inside native code
    except OSError as e:
        raise UserError(f"cannot write here ({e.strerror or e})", path,
                        "choose an output path in a writable directory") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _target_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(parent)
    except OSError as e:
        _unlink_quiet(tmp)
        raise UserError(f"cannot write ({e.strerror or e})", path,
                        "check free disk space and permissions of the output path") from None
    except BaseException:
        _unlink_quiet(tmp)
        raise
    finally:
        unregister_temp(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (non-JSON values through ``str``) atomically, newline-terminated."""
    with atomic_output(path, "w") as f:
        f.write(json.dumps(obj, indent=indent, default=str) + "\n")


def atomic_save(path: str | Path, save_fn: Callable[[IO], None]) -> None:
    """Call ``save_fn(binary_file)`` on a temporary file and move it into place (torch.save, ...)."""
    with atomic_output(path, "wb") as f:
        save_fn(f)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success it replaces ``dest`` (the old copy is removed after)."""
    from diff3r_cli.interrupts import register_temp, unregister_temp

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        register_temp(tmp)  # removed even when a signal ends the process inside native code
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes 0700; honour the umask like mkdir
    except OSError as e:
        raise UserError(f"cannot create an output folder here ({e.strerror or e})", dest,
                        "choose an output path in a writable directory") from None
    old = None
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            register_temp(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        unregister_temp(tmp)
        raise
    unregister_temp(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        unregister_temp(old)


__all__ = ["default_mode", "atomic_output", "atomic_write_bytes", "atomic_write_json", "atomic_save", "atomic_dir"]
