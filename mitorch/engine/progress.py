"""Training progress on stderr: a Rich progress bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return " ".join(parts)


class PlainProgress:
    """One log line every `interval_s` seconds and at each epoch's end."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last = 0.0

    def start_epoch(self, epoch: int, max_epochs: int, total_batches: int) -> None:
        self._epoch, self._max_epochs, self._total = epoch, max_epochs, total_batches
        self._last = time.monotonic()

    def update(self, batches_done: int, loss: float, lr: float, images_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._write(f"epoch {self._epoch}/{self._max_epochs} batch {batches_done}/{self._total} "
                        f"loss {loss:.4f} lr {lr:.3g} {images_per_s:.0f} img/s")

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        self._write(f"epoch {epoch}/{self._max_epochs} done: {_format_metrics(summary)}")

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        pass

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class RichProgress(PlainProgress):
    """A live progress bar with loss, learning rate and throughput."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(file=self.stream)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.3g}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), console=self._console, transient=False,
        )
        self._bar.start()
        self._task = None

    def start_epoch(self, epoch: int, max_epochs: int, total_batches: int) -> None:
        super().start_epoch(epoch, max_epochs, total_batches)
        self._task = self._bar.add_task(f"epoch {epoch}/{max_epochs}", total=total_batches, loss=float("nan"),
                                        lr=0.0, ips=0.0)

    def update(self, batches_done: int, loss: float, lr: float, images_per_s: float) -> None:
        self._bar.update(self._task, completed=batches_done, loss=loss, lr=lr, ips=images_per_s)

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        self._bar.update(self._task, completed=self._total)
        self._console.print(f"epoch {epoch}/{self._max_epochs} done: {_format_metrics(summary)}")

    def message(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._bar.stop()


def default_progress() -> PlainProgress:
    """A Rich bar when stderr is a terminal, plain log lines when it is not."""
    return RichProgress() if sys.stderr.isatty() else PlainProgress()
