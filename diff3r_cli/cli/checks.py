"""Checks and parsers shared by the commands: they run before any engine, so that a wrong path or
option fails in a second (one line, exit 2) instead of after minutes of work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from diff3r_cli.errors import UserError

MIN_RESOLUTION = 32  # the encoder downsamples by 16; below two cells per side there is no cost volume


def require_exists(path: Path, what: str = "input") -> Path:
    if not path.exists():
        raise UserError(f"{what} does not exist", path, "check the path")
    return path


def check_output_file(path: Path) -> Path:
    """Fail early (before minutes of work) when an output file cannot be written."""
    if path.exists() and path.is_dir():
        raise UserError("output is a directory, expected a file path", path, "pass a file name, e.g. scene.ply")
    _check_writable_ancestor(path.parent, path)
    return path


def check_output_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError("output exists and is not a directory", path, "pass a directory path")
    _check_writable_ancestor(path, path)
    return path


def _check_writable_ancestor(folder: Path, reported: Path) -> None:
    p = Path(os.path.abspath(folder))
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot create the output: {p} is a file, not a directory", reported,
                        "choose an output path in a writable directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {p} (permission denied)", reported,
                        "choose an output path in a writable directory")
    # os.access says yes for root on /proc, /sys and read-only mounts: try a real file there
    try:
        fd, probe = tempfile.mkstemp(prefix=".diff3r-probe.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write into {p} ({e.strerror or e})", reported,
                        "choose an output path in a writable directory") from None


def check_splat(path: Path) -> Path:
    """An existing, readable .ply (read once here so a corrupt file fails before any engine runs)."""
    from diff3r_cli.ply import read_ply

    read_ply(require_exists(path, ".ply"))
    return path


def preflight_input(path: Path) -> None:
    """Recognise the input format before any model loads (cheap: no images decoded)."""
    from diff3r_cli.scene_io import detect_format

    if detect_format(path) == "ply":
        raise UserError("this is already a splat, not an input dataset", path,
                        "use `diff3r refine` or `diff3r render` on it")


def parse_int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """'0,3,5' -> [0, 3, 5]; None stays None."""
    if text is None:
        return None
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UserError(f"{option} expects comma-separated integers, got {text!r}", None,
                        f"e.g. {option} 0,1") from None
    if not vals or any(v < 0 for v in vals):
        raise UserError(f"{option} expects non-negative integers, got {text!r}", None, f"e.g. {option} 0,1")
    dups = sorted({v for v in vals if vals.count(v) > 1})
    if dups:
        raise UserError(f"{option} lists {', '.join(map(str, dups))} more than once ({text!r})", None,
                        f"give each value once, e.g. {option} {','.join(map(str, sorted(set(vals))))}")
    return vals


def parse_resolution(text: Optional[str]) -> Optional[int | tuple[int, int]]:
    """'256' -> 256 (the short side, native aspect); '320x240' -> (width 320, height 240)."""
    if text is None:
        return None
    try:
        parts = [int(t) for t in text.lower().split("x")]
        w, h = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        if len(parts) > 2 or w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--resolution expects N or WxH (positive integers), got {text!r}", None,
                        "e.g. --resolution 256 or --resolution 320x256") from None
    if min(w, h) < MIN_RESOLUTION:
        raise UserError(f"--resolution {text} is too small: the predictor needs at least {MIN_RESOLUTION} pixels "
                        "per side", None, "e.g. --resolution 256 or --resolution 320x256")
    return w if len(parts) == 1 else (w, h)


__all__ = ["MIN_RESOLUTION", "require_exists", "check_output_file", "check_output_dir", "check_splat",
           "preflight_input", "parse_int_list", "parse_resolution"]
