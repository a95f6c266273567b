"""The training progress bar (rich): stage, steps, loss, PSNR, rate, time left."""

from __future__ import annotations

from typing import Optional


class TrainProgress:
    """A rich bar over the run's steps, starting at the resumed step; updated at each log record."""

    def __init__(self, stage: str, total: int, completed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]train {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  PSNR {task.fields[psnr]:.2f}  "
                                       "{task.fields[rate]:.2f} it/s"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, completed=completed, stage=stage, loss=float("nan"),
                                      psnr=float("nan"), rate=0.0)
        self.bar.start()

    def update(self, record: dict) -> None:
        """Show a {"type": "train"} log record."""
        self.bar.update(self.task, completed=record["step"], loss=record["loss"], psnr=record["psnr"] or float("nan"),
                        rate=record["steps_per_s"])

    def stop(self) -> None:
        self.bar.stop()


def open_progress(enabled: bool, stage: str, total: int, completed: int) -> Optional[TrainProgress]:
    """A started bar, or None when progress is off (or on ranks other than 0: pass enabled=False)."""
    return TrainProgress(stage, total, completed) if enabled else None


__all__ = ["TrainProgress", "open_progress"]
