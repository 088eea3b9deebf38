"""Progress bars for long phases: counts, rate and elapsed time, on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

T = TypeVar("T")
_console = Console(stderr=True)


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def progress(
    items: Iterable[T],
    total: int | None,
    description: str,
    unit: str = "it",
    status: Callable[[T], str] | None = None,
    done: int = 0,
) -> Iterator[T]:
    """Yield `items` while showing a progress bar (nothing is drawn when stderr is not a terminal).

    `status` renders a short text after the description from the latest item (a loss, say); `done`
    items were finished before (a resumed phase)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=_console, transient=False, disable=not _console.is_terminal) as bar:
        task = bar.add_task(description, total=total, completed=done, status="")
        for item in items:
            yield item
            bar.update(task, advance=1, status=status(item) if status else "")
