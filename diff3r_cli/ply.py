"""Read and write Gaussians as a standard 3DGS ``.ply`` (binary little-endian float32).

Vertex property order, as written by the reference 3DGS exporter and read by common splat
viewers::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1}
    opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

``f_rest`` is channel-major: the K-1 higher-order coefficients of R, then those of G, then B.
``opacity`` is a logit, ``scale_*`` are log-scales, ``rot_*`` a w-first quaternion (written
normalised). The normals are zero (unused).

Two layouts (``write_ply(layout=...)``):

- ``"viewer"`` (default): the vertex element holds exactly these 62 float properties, SH padded
  with zeros to degree 3. The reference viewer (SIBR, from the 3DGS paper's code) ignores the
  header and reads each vertex as a fixed 62-float struct, so anything else in the vertex
  element (a lower degree, extra properties) makes it read garbage; name-based loaders
  (three.js GaussianSplats3D, SuperSplat, plyfile-based tools) read it too. Our per-Gaussian
  uncertainty Λ (N,5) ``lambda_mean lambda_scale lambda_rotation lambda_opacity lambda_color``
  and any extra columns go into a second element ``diff3r_extra`` after the vertex data, which
  fixed-struct readers never reach and name-based readers skip. A header comment
  ``diff3r sh_degree D`` records the true degree; ``read_ply`` drops the zero padding.
- ``"compact"``: SH at its own degree, Λ and extras appended to the vertex element (smaller;
  readable by name-based loaders, not by SIBR).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from diff3r_cli.errors import NumericalError, UserError
from diff3r_cli.fsio import atomic_output
from diff3r_cli.gaussians import GROUPS, Gaussians
from diff3r_cli.geometry import quat_normalize

UNCERTAINTY_PROPS = tuple(f"lambda_{g}" for g in GROUPS)
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXTRA_ELEMENT = "diff3r_extra"
VIEWER_SH_DEGREE = 3
LAYOUTS = ("viewer", "compact")
_DEGREE_COMMENT = re.compile(r"^diff3r sh_degree (\d+)$")


def standard_property_names(sh_degree: int) -> list[str]:
    """The standard 3DGS vertex property names, in file order, for an SH degree."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


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
    # normalised on export: some viewers use rot_* as given; the rendered rotation is the same
    q64 = gaussians.quats.detach().to("cpu", torch.float64)
    quats = _as_np32(quat_normalize(q64, eps=1e-30))
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


def _pad_sh(gaussians: Gaussians, degree: int) -> Gaussians:
    """Same Gaussians with SH zero-padded to ``degree`` (colour unchanged: the new bands are 0)."""
    k = (degree + 1) ** 2
    sh = gaussians.sh.detach()
    if sh.shape[1] >= k:
        return gaussians
    pad = torch.zeros(sh.shape[0], k - sh.shape[1], 3, dtype=sh.dtype, device=sh.device)
    return Gaussians(gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits,
                     torch.cat([sh, pad], dim=1))


def write_ply(path: str | Path, gaussians: Gaussians, uncertainty: torch.Tensor | None = None,
              extra: dict | None = None, layout: str = "viewer") -> Path:
    """Write Gaussians (and optionally Λ (N,5) and extra per-vertex columns) as a 3DGS .ply.

    layout "viewer" (default): 62-property vertex element (SH padded to degree 3), Λ and extras
    in a second element; "compact": own SH degree, Λ and extras in the vertex element (see the
    module docstring). extra: {name: (N,) array} stored as float32 after the uncertainty.
    Raises NumericalError for NaN/inf values (nothing is written) and UserError when the
    path cannot be written. The write is atomic. Returns the path.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown .ply layout {layout!r}; use one of {LAYOUTS}")
    path = Path(path)
    n = gaussians.num
    degree = gaussians.sh_degree
    padded = _pad_sh(gaussians, VIEWER_SH_DEGREE) if layout == "viewer" else gaussians
    cols = gaussians_to_columns(padded)
    n_std = len(cols)
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
    split = n_std if layout == "viewer" and len(names) > n_std else len(names)
    elements = [("vertex", names[:split])] + ([(EXTRA_ELEMENT, names[split:])] if split < len(names) else [])
    header = ["ply", "format binary_little_endian 1.0", "comment written by diff3r",
              f"comment diff3r sh_degree {degree}"]
    blobs = []
    for elem, keys in elements:
        data = np.empty(n, dtype=[(k, "<f4") for k in keys])
        for k in keys:
            data[k] = cols[k]
        header += [f"element {elem} {n}"] + [f"property float {k}" for k in keys]
        blobs.append(data.tobytes())
    header += ["end_header"]
    with atomic_output(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        for b in blobs:
            f.write(b)
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
        # memory-mapped: plyfile's stream reader parses ~10 µs per vertex (13 s for 131k Gaussians
        # of 62 properties); the map is checked against the header (a truncated file fails here)
        # and every column is copied out below, so no reference to the map outlives this call
        ply = PlyData.read(str(path), mmap=True)
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror or e})", path, "check the file permissions") from None
    except Exception as e:  # plyfile raises several types for malformed/truncated input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _corrupt(path, msg[:200]) from None
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise _corrupt(path, "no 'vertex' element") from None
    cols: dict[str, np.ndarray] = {}
    elements = [vertex]
    try:
        ex = ply[EXTRA_ELEMENT]  # our Λ/extras in the viewer layout
        if ex.count == vertex.count:
            elements.append(ex)
    except KeyError:
        pass
    for el in elements:
        data = el.data
        for k in list(data.dtype.names or ()):
            if data.dtype[k].shape != () or data.dtype[k].kind not in "fiu" or k in cols:
                continue  # list properties (e.g. faces stored per vertex) are not ours
            cols[k] = np.array(data[k], dtype=np.float32, copy=True)
    # the degree diff3r wrote before zero-padding to 3 (a hint, honoured only if the padding is zero)
    for c in getattr(ply, "comments", []) or []:
        m = _DEGREE_COMMENT.match(c.strip())
        if m:
            cols["__sh_degree__"] = np.asarray([int(m.group(1))], dtype=np.float32)
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
    hint = cols.get("__sh_degree__")
    if hint is not None and n_rest:
        k_true = (int(hint[0]) + 1) ** 2
        if 1 <= k_true < k:
            # channel-major blocks of k-1: the padding is the tail of each block; drop it when zero
            pad = [f"f_rest_{c * (k - 1) + j}" for c in range(3) for j in range(k_true - 1, k - 1)]
            if all(not cols[nm].any() for nm in pad):
                keep = [f"f_rest_{c * (k - 1) + j}" for c in range(3) for j in range(k_true - 1)]
                vals = [cols[nm] for nm in keep]
                for i in range(n_rest):
                    cols.pop(f"f_rest_{i}")
                for i, v in enumerate(vals):
                    cols[f"f_rest_{i}"] = v
                n_rest, k = len(vals), k_true

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
    known = (set(standard_property_names(g.sh_degree)) | set(standard_property_names(VIEWER_SH_DEGREE))
             | set(UNCERTAINTY_PROPS) | {"__sh_degree__"})
    extra = {k: torch.from_numpy(v.copy()) for k, v in cols.items() if k not in known}
    return g, lam, extra


__all__ = ["write_ply", "read_ply", "read_ply_columns", "standard_property_names",
           "UNCERTAINTY_PROPS", "gaussians_to_columns", "LAYOUTS"]
