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
from rich.markup import escape

from schemas import STAGE_CONFIGS, Config, Endpoint
from tasks.config import MAX_DEPTH, ConfigError, build_config, load_config
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
        check_arguments(sys.argv[1:])
        yield
    except (RnerError, ValidationError, OSError) as e:
        if isinstance(e, OSError) and e.filename is None:
            raise  # not about a file the user named: a bug, or a failure that needs its traceback
        message = redact_url(_one_line(e))
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # a path like a[/b] is no markup
        sys.exit(1)


def _one_line(e: Exception) -> str:
    """The message as one line any terminal takes: whitespace runs (newlines in a field name, say) as one space,
    text that is not Unicode (a lone surrogate from a file or an argument) as backslash escapes."""
    if isinstance(e, ValidationError):
        message = describe(e)
    elif isinstance(e, OSError):  # a file in the way: say which and what, without Python's errno prefix
        message = f"{e.filename}: {e.strerror}"
    else:
        message = str(e)
    return " ".join(message.split()).encode(errors="backslashreplace").decode()


def check_arguments(args: list[str]) -> None:
    """Command-line arguments must be UTF-8 text: Python turns other bytes into lone surrogates, which no file,
    record or terminal can take later (``UnicodeEncodeError`` after the work is done)."""
    for i, arg in enumerate(args, start=1):
        try:
            arg.encode()
        except UnicodeEncodeError as e:
            raise RnerError(f"argument {i} ({ascii(arg)[:60]}) is not UTF-8 (at character {e.start + 1})") from None


def check_writable(path: Path, option: str, *, folder: bool = False) -> None:
    """Check an output path before any work starts, so no result is lost to it at the end: not a directory (or,
    with ``folder``, not a file), and in a directory that exists and is writable or can be made (no file in the
    way)."""
    want, other = ("directory", "file") if folder else ("file", "directory")
    if path.exists() and path.is_dir() != folder:
        raise RnerError(f"{option} {path}: a {other}, not a {want}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise RnerError(f"{option} {path}: not writable")
        return
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise RnerError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise RnerError(f"{option} {path}: cannot create it: {existing} is not writable")


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
    except RecursionError:
        raise ConfigError(f"--config-json: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # not JSON, or an integer longer than Python converts (4,300 digits)
        raise ConfigError(f"--config-json is not JSON: {str(e).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config-json: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
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
    # The stage resolves `store:` model references (a CT model to evaluate, a base to train from) in this store,
    # the one it writes to (``Store.settings``).
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


def config_help(cls: type[Config]) -> str:
    """The epilog of a stage command's ``--help``: its config's fields, and where each is explained."""
    stage = next(name for name, known in STAGE_CONFIGS.items() if known is cls)
    names = ", ".join(name for name in cls.model_fields if name != "schema_version")
    return f"Config fields ({cls.__name__}; `rner config show {stage} --fields` says what each means): {names}."


def stage_main(cls: type[C], run: Callable[..., Published]) -> Callable[[], Any]:
    """A ``main()`` for ``python -m tasks.<stage>``."""

    def main() -> None:
        app = typer.Typer(add_completion=False)
        app.command(epilog=config_help(cls))(stage_command(cls, run))
        with clean_errors():
            app()

    return main
