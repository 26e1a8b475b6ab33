"""A rich progress display for builds: samples/s, drops, ETA. Silent when not wanted."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class BuildProgress:
    def __init__(self, total: int, description: str, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.dropped = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]} samples/s"),
            TextColumn("[red]{task.fields[dropped]} dropped"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, rate="-", dropped=0)

    def __enter__(self) -> BuildProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, n_in: int, n_drop: int) -> None:
        self.dropped += n_drop
        self._progress.update(self._task, advance=n_in, dropped=self.dropped)
        task = self._progress.tasks[0]
        if task.speed:
            self._progress.update(self._task, rate=f"{task.speed:,.0f}")

    def skip(self, n: int) -> None:
        """Work finished by an earlier run (resume)."""
        self._progress.update(self._task, advance=n)
