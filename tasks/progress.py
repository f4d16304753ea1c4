"""Progress a person can follow: a rich bar on a terminal, plain lines in a log.

Usage::

    with progress_bar("generating") as progress:       # a progress(done, total) callback
        run(config, store, progress=progress)

On a terminal, stderr shows a rich bar. Anywhere else (a log file, a pipe, a CI job) a bar would show nothing
until the end, so plain lines go to stderr instead: the first report, then at most one every ``every_s`` seconds,
and the last (``generating: 3/6, 41 s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from tasks.llm_stage import Progress
from tasks.stage_cli import err


class ProgressLines:
    """A ``progress(done, total)`` callback that prints ``<description>: done/total, N s`` lines, throttled."""

    def __init__(self, description: str, every_s: float = 10.0, console: Console = err) -> None:
        self.description = description
        self.every_s = every_s
        self.console = console
        self.start = time.monotonic()
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.last is None or done >= total or now - self.last >= self.every_s:
            self.last = now
            elapsed = now - self.start
            self.console.print(f"{self.description}: {done}/{total}, {elapsed:.0f} s", highlight=False)


@contextmanager
def progress_bar(description: str, *, every_s: float = 10.0) -> Iterator[Progress]:
    """A rich progress bar on stderr when it is a terminal, else ``ProgressLines``."""
    if not err.is_terminal:
        yield ProgressLines(description, every_s)
        return
    from rich.progress import Progress as Bar

    with Bar(console=err) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
