"""The command line every stage shares: ``python -m tasks.<stage> --config X.yaml``.

The stage's result is its manifest: the last line on stdout is ``{"address": ..., "digest": ...}`` of the
published output, which is what job backends read back. Progress goes to stderr. SIGTERM (what Prefect
and docker send on cancellation) unwinds the stage like Ctrl-C, so servers it started are stopped.
"""

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from schemas import Config, Endpoint
from tasks.config import ConfigError, build_config, load_config
from tasks.errors import RnerError
from tasks.jsonl import describe
from tasks.redact import install_log_redaction, redact_url
from tasks.store import Published, Store

C = TypeVar("C", bound=Config)

err = Console(stderr=True, soft_wrap=True)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Expected failures become one red line on stderr and exit status 1; bugs keep their traceback.

    Every command runs in here, so this is where URL credentials leave logs and messages (``tasks.redact``)."""
    install_log_redaction()
    try:
        yield
    except (RnerError, ValidationError, FileNotFoundError) as e:
        message = redact_url(describe(e) if isinstance(e, ValidationError) else str(e))
        err.print(f"[bold red]error:[/] {message}", highlight=False)
        sys.exit(1)


def print_progress(done: int, total: int, step: str = "") -> None:
    err.print(f"{step} progress {done}/{total}".strip(), highlight=False)


def read_config(cls: type[C], config: Path | None, config_json: str | None, preset: str | None) -> C:
    """The stage's config from exactly one of a YAML file and inline JSON, on top of ``preset``."""
    if (config is None) == (config_json is None):
        raise ConfigError("give exactly one of --config (a YAML file) and --config-json (the config inline)")
    if config is not None:
        return load_config(cls, config, preset=preset)
    try:
        data = json.loads(config_json)  # type: ignore[arg-type]
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config-json is not JSON: {e}") from None
    return build_config(cls, {"preset": preset, **data} if preset else data, source="--config-json")


def run_stage(
    cls: type[C],
    run: Callable[..., Published],
    *,
    config: Path | None = None,
    config_json: str | None = None,
    preset: str | None = None,
    store: str | None = None,
    endpoint: Endpoint | None = None,
) -> Published:
    """Load the config (a YAML file or inline JSON), run the stage, print the result line."""
    from tasks.serving import raise_on_sigterm

    raise_on_sigterm()
    loaded = read_config(cls, config, config_json, preset)
    extra = {"endpoint": endpoint} if endpoint is not None else {}
    if store:
        # The process's store from here on: `store:` model references in the config (a CT model to evaluate, a
        # base to train from) resolve in the store the stage writes to, as they do under a job backend.
        os.environ["RNER_STORE"] = store
    target = Store(store) if store else Store.from_settings()
    published = run(loaded, target, progress=print_progress, **extra)
    print(json.dumps({"address": published.manifest.address, "digest": published.digest}))
    return published


ConfigPath = Annotated[Path | None, typer.Option("--config", help="YAML config (may start with `preset:`).")]
ConfigJSON = Annotated[str | None, typer.Option("--config-json", help="The config as inline JSON, instead of a file.")]
PresetName = Annotated[str | None, typer.Option("--preset", help="Preset to start from when the config names none.")]
StoreURL = Annotated[str | None, typer.Option("--store", help="Store URL (default: RNER_STORE).")]
EndpointURL = Annotated[
    str | None, typer.Option("--endpoint", help="A running OpenAI-compatible server to use instead of starting one.")
]
EndpointModel = Annotated[str | None, typer.Option("--endpoint-model", help="The model name that server serves.")]


def stage_command(cls: type[C], run: Callable[..., Published]) -> Callable[..., None]:
    """The typer command of a stage: the same options for ``python -m tasks.<stage>`` and ``rner ...``."""

    def command(
        config: ConfigPath = None,
        config_json: ConfigJSON = None,
        preset: PresetName = None,
        store: StoreURL = None,
        endpoint: EndpointURL = None,
        endpoint_model: EndpointModel = None,
    ) -> None:
        server = None
        if endpoint is not None:
            if endpoint_model is None:
                raise ConfigError("--endpoint needs --endpoint-model (the name the server serves)")
            server = Endpoint(base_url=endpoint, model=endpoint_model)
        run_stage(cls, run, config=config, config_json=config_json, preset=preset, store=store, endpoint=server)

    command.__doc__ = f"Run the stage with a {cls.__name__}; prints the published output's address and digest."
    return command


def stage_main(cls: type[C], run: Callable[..., Published]) -> Callable[[], Any]:
    """A ``main()`` for ``python -m tasks.<stage>``."""

    def main() -> None:
        with clean_errors():
            typer.run(stage_command(cls, run))

    return main
