"""What `diff3r eval` reports: means per configuration, and the presenters (rich table, progress, Markdown).

`summarize` is data; `print_summary`, `markdown_table` and `progress_bar` only present it (the
CLI and benchmarks/real_scenes.py call them; the engine itself prints nothing).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from diff3r_cli.evaluate.views import Run


def summarize(rows: list[dict], runs: list[Run]) -> list[dict]:
    """Mean PSNR/SSIM (and context PSNR) per configuration over the rows that have it."""
    summary = []
    for method, _, _, s in runs:
        vals = [r[f"{method}@{s}"] for r in rows if r.get(f"{method}@{s}")]
        if vals:
            row = {"method": method, "steps": s, "psnr": sum(v["psnr"] for v in vals) / len(vals),
                   "ssim": sum(v["ssim"] for v in vals) / len(vals), "scenes": len(vals)}
            cps = [v["context_psnr"] for v in vals if v.get("context_psnr") is not None]
            if cps:
                row["context_psnr"] = sum(cps) / len(cps)
            row["compensated"] = sum(bool(v.get("compensated")) for v in vals)  # scenes with exposure transforms
            summary.append(row)
    return summary


def running_means(rows: list[dict], runs: list[Run], steps: int) -> str:
    """One line: each method's mean PSNR at ``steps`` over the scenes so far (what the table will average)."""
    mean = {r["method"]: r["psnr"] for r in summarize(rows, runs) if r["steps"] == steps}
    return "mean so far: " + ", ".join(f"{m}@{steps}={v:.2f}" for m, v in mean.items())


@contextmanager
def progress_bar(total: Optional[int]) -> Iterator[Callable[[str], None]]:
    """A rich bar counting scenes; yields ``advance(message)`` to call after each scene."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.completed} scenes"),
                   TextColumn("{task.fields[last]}"), TimeElapsedColumn())
    bar.start()
    task = bar.add_task("eval", total=total, last="")
    try:
        yield lambda message: bar.update(task, advance=1, last=message[:100])
    finally:
        bar.stop()


def print_summary(result: dict) -> None:
    """Rich table of an `evaluate_main` result: one row per (method, steps)."""
    from rich.console import Console
    from rich.table import Table

    outl = result.get("outlier_probability", 1.0 if result["outliers"] else 0.0)
    t = Table(title=f"Target views, {result['num_scenes']} scenes, short side {result['resolution']} (native aspect)"
                    + (f" (context outliers P={outl:g}, seed {result.get('seed', 0)})" if result["outliers"] else "")
                    + f"; exposure compensation {result.get('compensation', 'off')}")
    for c in ("method", "TTO steps", "PSNR", "SSIM", "context PSNR", "compensated"):
        t.add_column(c, justify="right" if c != "method" else "left")
    for r in result["summary"]:
        cp = r.get("context_psnr")
        t.add_row(r["method"], str(r["steps"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                  "-" if cp is None else f"{cp:.2f}", f"{r.get('compensated', 0)}/{r['scenes']}")
    Console().print(t)


def markdown_table(result: dict) -> str:
    """The summary as a Markdown table (benchmarks/real_scenes.py prints it for the README)."""
    lines = ["| method | TTO steps | PSNR | SSIM | context PSNR |", "|---|---:|---:|---:|---:|"]
    for r in result["summary"]:
        cp = r.get("context_psnr")
        lines.append(f"| {r['method']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{'-' if cp is None else f'{cp:.2f}'} |")
    return "\n".join(lines)


__all__ = ["summarize", "running_means", "progress_bar", "print_summary", "markdown_table"]
