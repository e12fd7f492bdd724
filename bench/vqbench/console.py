"""Terminal output for the CLI: one rich console and a progress display for the runner."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

# A pipe or CI log is not a terminal: rich would assume 80 columns and cut every table cell.
#: Progress bars, logs and errors.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
#: Results: tables and paths a user may redirect to a file.
output = Console(width=None if sys.stdout.isatty() else 140)


class _PhaseSpinner(SpinnerColumn):
    """A spinner that turns into a red cross for a phase stopped by an error or an interrupt."""

    def render(self, task: Any) -> Any:
        if task.fields.get("stopped"):
            return Text("x", style="red")
        return super().render(task)


class RichProgress:
    """Show one progress bar per runner phase (a spinner when the total is unknown)."""

    def __init__(self) -> None:
        self._progress = Progress(
            _PhaseSpinner(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._totals: dict[Any, int | None] = {}

    def __enter__(self) -> "RichProgress":
        # The display starts with the first phase: a live display stopped before any phase,
        # as when a scenario check fails, would leave an empty line above the error.
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress.live.is_started:
            self._progress.stop()

    def phase(self, description: str, total: int | None) -> Any:
        if not self._progress.live.is_started:
            self._progress.start()
        task = self._progress.add_task(description, total=total)
        self._totals[task] = total
        return task

    def advance(self, task: Any, amount: int = 1) -> None:
        self._progress.advance(task, amount)

    def done(self, task: Any, finished: bool = True) -> None:
        """Fill the task's bar, or, for a phase stopped by an error or interrupt, mark it stopped where it was."""
        total = self._totals.pop(task, None)
        if not finished:
            description = self._progress.tasks[self._progress.task_ids.index(task)].description
            self._progress.update(task, description=f"{description} (stopped)", stopped=True)
            self._progress.stop_task(task)
        elif total is None:
            self._progress.update(task, total=1, completed=1)
        else:
            self._progress.update(task, completed=total)
