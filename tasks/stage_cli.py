"""The command line every stage shares: ``python -m tasks.<stage> --config X.yaml``.

The stage's result is its manifest: the last line on stdout is ``{"address": ..., "digest": ...}`` of the
published output, which is what job backends read back. Progress goes to stderr. SIGTERM (what Prefect
and docker send on cancellation) unwinds the stage like Ctrl-C, so servers it started are stopped.
"""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from schemas import Config
from tasks.config import load_config
from tasks.errors import RnerError
from tasks.jsonl import describe
from tasks.store import Published, Store

C = TypeVar("C", bound=Config)

err = Console(stderr=True, soft_wrap=True)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Expected failures become one red line on stderr and exit status 1; bugs keep their traceback."""
    try:
        yield
    except (RnerError, ValidationError, FileNotFoundError) as e:
        message = describe(e) if isinstance(e, ValidationError) else str(e)
        err.print(f"[bold red]error:[/] {message}", highlight=False)
        sys.exit(1)


def print_progress(done: int, total: int, step: str = "") -> None:
    err.print(f"{step} progress {done}/{total}".strip(), highlight=False)


def run_stage(
    cls: type[C], run: Callable[..., Published], config: Path, preset: str | None, store: str | None
) -> Published:
    from tasks.serving import raise_on_sigterm

    raise_on_sigterm()
    published = run(
        load_config(cls, config, preset=preset),
        Store(store) if store else Store.from_settings(),
        progress=print_progress,
    )
    print(json.dumps({"address": published.manifest.address, "digest": published.digest}))
    return published


def stage_main(cls: type[C], run: Callable[..., Published]) -> Callable[[], Any]:
    """A ``main()`` for ``python -m tasks.<stage>``."""

    def command(
        config: Annotated[Path, typer.Option(help=f"YAML with {cls.__name__} fields (may start with `preset:`).")],
        preset: Annotated[str | None, typer.Option(help="Preset to start from when the file names none.")] = None,
        store: Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")] = None,
    ) -> None:
        run_stage(cls, run, config, preset, store)

    def main() -> None:
        with clean_errors():
            typer.run(command)

    return main
