"""How the commands show results: engine results as aligned key/value tables (stdout), the
`inspect` tables, and notices on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from diff3r_cli.engines.outputs import RenderFolder
from diff3r_cli.engines.reconstruct import ReconstructResult
from diff3r_cli.engines.refine import RefineInterrupted, RefineResult


def print_result(result: Any) -> None:
    """Print a dict of figures/paths as aligned key: value lines (floats to 4 significant digits)."""
    if result is None:
        return
    if isinstance(result, dict):
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, box=None)
        for k, v in result.items():
            t.add_row(f"[bold]{k}[/bold]", f"{v:.4g}" if isinstance(v, float) else str(v))
        Console().print(t)
    else:
        print(result)


def render_rows(r: RenderFolder) -> dict:
    """psnr_<name> / <name>_views per named view set, then the video, the folder and the frame count."""
    rows: dict = {}
    for name, value in r.psnr.items():
        rows[f"psnr_{name}"] = round(value, 2)
        rows[f"{name}_views"] = ",".join(map(str, r.views[name]))
    if r.video is not None:
        rows["video"] = str(r.video)
    rows["renders"] = str(r.folder)
    rows["frames"] = r.frames
    return rows


def reconstruct_rows(r: ReconstructResult) -> dict:
    rows = {"gaussians": r.gaussians,
            "views": f"{len(r.context)} context ({','.join(map(str, r.context))}), "
                     f"{len(r.interp)} interpolation, {len(r.extrap)} extrapolation",
            "resolution": f"{r.width}x{r.height}",
            "depth_range": f"{r.near:.3g}..{r.far:.3g} ({r.depth_range_from})", "device": r.device,
            "load_s": round(r.load_s, 2), "predict_s": round(r.predict_s, 2), "refine_s": round(r.refine_s, 2),
            "ply": str(r.ply)}
    if r.compensation is not None:
        rows["compensation"] = compensation_row(r.compensation)
    if r.renders is not None:
        rows.update(render_rows(r.renders))
    rows["total_s"] = round(r.total_s, 2)
    return rows


def compensation_row(rec: dict) -> str:
    """One short line (one table row): whether per-view exposure compensation ran, the measured
    spread, and that its transforms apply to the context renders (psnr_context) only."""
    on = rec.get("compensation") == "on"
    spread = rec.get("exposure_spread")
    parts = ([] if spread is None else [f"spread {spread:.0%}"]) + (["context renders only"] if on else [])
    return ("on" if on else "off") + (f" ({'; '.join(parts)})" if parts else "")


def refine_rows(r: RefineResult) -> dict:
    (e0, e1), (p0, p1) = r.energy, r.context_psnr
    rows = {"steps_run": r.steps_run, "energy": f"{e0:.5g} -> {e1:.5g}",
            "context_psnr": f"{p0:.2f} -> {p1:.2f} dB", "time_s": round(r.time_s, 2), "ply": str(r.ply)}
    if r.compensation is not None:
        rows["compensation"] = compensation_row(r.compensation)
    return rows


def refine_interrupted_notice(e: RefineInterrupted) -> Optional[str]:
    """The stderr line saying where an interrupted refine left its best iterate (None: nothing written)."""
    if e.written is None:
        return None
    out = e.written
    return (f"interrupted: wrote the best iterate so far (step {e.step} of {e.steps}) to {out} "
            f"(marked partial in {out.with_suffix('.json').name})")


def _fmt_vec(v, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(x):.{digits}g}" for x in v) + ")"


def _ply_table(info: dict):
    from rich.table import Table

    t = Table(title=info["path"], show_header=False)
    t.add_row("gaussians", str(info["num_gaussians"]))
    t.add_row("SH degree", str(info["sh_degree"]))
    if "bounds" in info:
        t.add_row("bounds min", _fmt_vec(info["bounds"]["min"]))
        t.add_row("bounds max", _fmt_vec(info["bounds"]["max"]))
        t.add_row("median size", f"{info['median_scale']:.3g}")
        t.add_row("mean opacity", f"{info['mean_opacity']:.3f}")
    unc = info.get("uncertainty_mean")
    t.add_row("uncertainty", "no" if not info["has_uncertainty"] else
              "yes" + ("" if not unc else " (mean λ " + ", ".join(f"{k} {v:.3g}" for k, v in unc.items()) + ")"))
    t.add_row("sidecar", info.get("sidecar") or "none")
    return t


def _views_table(info: dict):
    from rich.table import Table

    views = info["views"]
    if not info.get("posed", True):
        t = Table("#", "image", "size")
        for i, v in enumerate(views):
            t.add_row(str(i), Path(v["image"]).name, f"{v['width']}x{v['height']}")
        return t
    t = Table("#", "image", "fx", "fy", "cx", "cy", "centre (world)")
    for i, v in enumerate(views):
        K = v["K"]
        t.add_row(str(i), Path(v["image"]).name, f"{K[0][0]:.1f}", f"{K[1][1]:.1f}", f"{K[0][2]:.1f}",
                  f"{K[1][2]:.1f}", _fmt_vec(v["center"]))
    return t


def print_inspect(info: dict) -> None:
    """`inspect` as tables: a .ply's summary, or an input's format line and its views."""
    from rich.console import Console

    con = Console()
    if info["format"] == "ply":
        con.print(_ply_table(info))
        return
    if info["format"] == "weights":
        for k, v in info.items():
            if k != "format" and v not in (None, [], {}):
                con.print(f"[bold]{k}[/bold] {v:,}" if isinstance(v, int) else f"[bold]{k}[/bold] {v}", soft_wrap=True)
        return
    sizes = sorted({(v["width"], v["height"]) for v in info["views"]})
    con.print(f"[bold]format[/bold] {info['format']}   [bold]views[/bold] {len(info['views'])}   "
              f"[bold]resolution[/bold] {', '.join(f'{w}x{h}' for w, h in sizes)}")
    if not info.get("posed", True):
        con.print(info.get("note", "unposed"))
    con.print(_views_table(info))


__all__ = ["print_result", "render_rows", "reconstruct_rows", "refine_rows", "refine_interrupted_notice",
           "print_inspect"]
