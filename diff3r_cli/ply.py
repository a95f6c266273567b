"""Read and write Gaussians as a standard 3DGS ``.ply`` (binary little-endian float32).

Vertex property order, as written by the reference 3DGS exporter and read by common splat
viewers::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

``f_rest`` is channel-major: the K-1 higher-order coefficients of R, then those of G, then B.
``opacity`` is a logit, ``scale_*`` are log-scales, ``rot_*`` a w-first quaternion. The
normals are zero (unused). Our per-Gaussian uncertainty weights Λ (N,5) follow as
``lambda_mean lambda_scale lambda_rotation lambda_opacity lambda_color`` (raw positive
weights), then any caller-supplied extra per-vertex properties; viewers ignore both.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import torch

from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.gaussians import GROUPS, Gaussians

UNCERTAINTY_PROPS = tuple(f"lambda_{g}" for g in GROUPS)
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def standard_property_names(sh_degree: int) -> list[str]:
    """The standard 3DGS vertex property names, in file order, for an SH degree."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def default_mode(directory: bool = False) -> int:
    """Permission bits a plain open()/mkdir() would give under the current umask (0644/0755 under 022).

    mkstemp/mkdtemp create 0600/0700 on purpose; our outputs are ordinary files, so they get these.
    """
    mask = os.umask(0o022)  # read the umask (there is no getter) and put it back at once
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync and os.replace it into place.

    On any exception the temporary file is removed, so a failed write never leaves a partial
    file behind (and never clobbers an existing good one). OS errors become a UserError
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
            os.fchmod(f.fileno(), default_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quiet(tmp)
        raise UserError(f"cannot write ({e.strerror or e})", path,
                        "check free disk space and permissions of the output path") from None
    except BaseException:
        _unlink_quiet(tmp)
        raise
    finally:
        unregister_temp(tmp)


def _unlink_quiet(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _as_np32(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32)


def gaussians_to_columns(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """The standard 3DGS columns (name -> (N,) float32), in file order."""
    n = gaussians.num
    means = _as_np32(gaussians.means)
    sh = _as_np32(gaussians.sh)                       # (N, K, 3)
    # channel-major rest coefficients: (N, K-1, 3) -> (N, 3, K-1) -> (N, 3(K-1))
    rest = np.ascontiguousarray(sh[:, 1:, :].transpose(0, 2, 1)).reshape(n, 3 * (sh.shape[1] - 1))
    scales = _as_np32(gaussians.log_scales)
    quats = _as_np32(gaussians.quats)
    opac = _as_np32(gaussians.opacity_logits)
    zeros = np.zeros(n, dtype=np.float32)
    cols: dict[str, np.ndarray] = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2],
                                   "nx": zeros, "ny": zeros, "nz": zeros}
    for c in range(3):
        cols[f"f_dc_{c}"] = sh[:, 0, c]
    for i in range(rest.shape[1]):
        cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = opac
    for i in range(3):
        cols[f"scale_{i}"] = scales[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = quats[:, i]
    return cols


def write_ply(path: str | Path, gaussians: Gaussians, uncertainty: torch.Tensor | None = None,
              extra: dict | None = None) -> Path:
    """Write Gaussians (and optionally Λ (N,5) and extra per-vertex columns) as a 3DGS .ply.

    extra: {name: (N,) array} appended as float32 properties after the uncertainty.
    Raises NumericalError for NaN/inf values (nothing is written) and UserError when the
    path cannot be written. The write is atomic. Returns the path.
    """
    path = Path(path)
    n = gaussians.num
    cols = gaussians_to_columns(gaussians)
    if uncertainty is not None:
        lam = _as_np32(uncertainty)
        if lam.shape != (n, len(GROUPS)):
            raise ValueError(f"uncertainty has shape {lam.shape}, expected ({n}, {len(GROUPS)})")
        if np.isfinite(lam).all() and (lam < 0).any():
            raise ValueError("uncertainty weights must be >= 0")
        for g, name in enumerate(UNCERTAINTY_PROPS):
            cols[name] = lam[:, g]
    for name, values in (extra or {}).items():
        if not _NAME_RE.match(name) or name in cols:
            raise ValueError(f"bad or duplicate extra property name {name!r}")
        v = _as_np32(values)
        if v.shape != (n,):
            raise ValueError(f"extra property {name!r} has shape {v.shape}, expected ({n},)")
        cols[name] = v
    bad = [k for k, v in cols.items() if not np.isfinite(v).all()]
    if bad:
        raise NumericalError(f"refusing to write {path}: non-finite values in {', '.join(bad[:6])}"
                             + (" ..." if len(bad) > 6 else ""))

    names = list(cols)
    data = np.empty(n, dtype=[(k, "<f4") for k in names])
    for k in names:
        data[k] = cols[k]
    header = ["ply", "format binary_little_endian 1.0", "comment written by diff3r",
              f"element vertex {n}"]
    header += [f"property float {k}" for k in names]
    header += ["end_header"]
    with atomic_output(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"not a readable 3DGS .ply ({why})", path,
                     "pass a Gaussian-splat .ply written by diff3r or a 3DGS trainer")


def read_ply_columns(path: str | Path) -> dict[str, np.ndarray]:
    """All vertex properties of a .ply as float32 columns (name -> (N,)), in file order."""
    from plyfile import PlyData  # local: keeps `import diff3r_cli.ply` light

    path = Path(path)
    if not path.exists():
        raise UserError("file not found", path, "check the path")
    if path.is_dir():
        raise UserError("is a directory, expected a .ply file", path, "pass the .ply file itself")
    try:
        # mmap=False: read into memory so a truncated file fails here, not later
        with open(path, "rb") as fh:
            ply = PlyData.read(fh, mmap=False)
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror or e})", path, "check the file permissions") from None
    except Exception as e:  # plyfile raises several types for malformed/truncated input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _corrupt(path, msg[:200]) from None
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise _corrupt(path, "no 'vertex' element") from None
    data = vertex.data
    names = list(data.dtype.names or ())
    cols = {}
    for k in names:
        if data.dtype[k].shape != () or data.dtype[k].kind not in "fiu":
            continue  # list properties (e.g. faces stored per vertex) are not ours
        cols[k] = np.asarray(data[k], dtype=np.float32)
    return cols


def _columns_to_gaussians(path: Path, cols: dict[str, np.ndarray]) -> Gaussians:
    missing = [k for k in _REQUIRED if k not in cols]
    if missing:
        raise _corrupt(path, f"missing vertex properties {', '.join(missing)}")
    n_rest = 0
    while f"f_rest_{n_rest}" in cols:
        n_rest += 1
    k = n_rest // 3 + 1
    if n_rest % 3 or int(math.isqrt(k)) ** 2 != k:
        raise _corrupt(path, f"{n_rest} f_rest properties is not 3*((d+1)^2-1) for any SH degree d")
    n = len(cols["x"])

    def stack(keys: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([cols[c] for c in keys], axis=1).astype(np.float32, copy=False)).reshape(n, len(keys))

    means = stack(["x", "y", "z"])
    dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    if n_rest:
        rest = stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(1, 2)
        sh = torch.cat([dc[:, None, :], rest], dim=1).contiguous()
    else:
        sh = dc[:, None, :]
    return Gaussians(means=means, log_scales=stack(["scale_0", "scale_1", "scale_2"]),
                     quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
                     opacity_logits=torch.from_numpy(cols["opacity"].copy()), sh=sh)


def read_ply(path: str | Path, with_extra: bool = False):
    """Read a 3DGS .ply -> (Gaussians, uncertainty (N,5) or None) [, extra columns].

    Works for files from other 3DGS tools too (unknown properties are ignored, or returned
    in the extra dict when with_extra=True). Malformed, truncated or non-3DGS files raise a
    UserError naming the file.
    """
    path = Path(path)
    cols = read_ply_columns(path)
    g = _columns_to_gaussians(path, cols)
    present = [p for p in UNCERTAINTY_PROPS if p in cols]
    lam = None
    if len(present) == len(UNCERTAINTY_PROPS):
        lam = torch.from_numpy(np.stack([cols[p] for p in UNCERTAINTY_PROPS], axis=1)).reshape(g.num, len(GROUPS))
    elif present:
        raise _corrupt(path, f"incomplete uncertainty properties (has {', '.join(present)})")
    if not with_extra:
        return g, lam
    known = set(standard_property_names(g.sh_degree)) | set(UNCERTAINTY_PROPS)
    extra = {k: torch.from_numpy(v.copy()) for k, v in cols.items() if k not in known}
    return g, lam, extra


__all__ = ["write_ply", "read_ply", "read_ply_columns", "standard_property_names",
           "atomic_output", "UNCERTAINTY_PROPS", "gaussians_to_columns"]
