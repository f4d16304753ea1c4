"""``rner serve``: the extraction service (``tasks.service``) from the command line or a ``ServeConfig`` file.

    rner serve --model default --labels person,location                 # starts a vLLM server for the model
    rner serve --backend endpoint --base-url http://h:8000/v1 --model ner --tokenizer /models/ner --context 32768
    rner serve --config serve.yaml --port 9000                          # a ServeConfig; options override it
    python -m tasks.serve_cli ...                                       # the same

Apart from the app itself: FastAPI, uvicorn and prometheus_client (the ``serve`` extra) are imported only when the
service starts, so ``rner`` keeps working in the images that do not have them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.configs import DEFAULT_MODEL
from schemas.service import TOKEN_ENV, ServeConfig
from tasks.config import ConfigError, build_config, load_config
from tasks.errors import RnerError
from tasks.extract import clean_labels
from tasks.serving import raise_on_sigterm, serve
from tasks.stage_cli import clean_errors


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C: the tokenizer loaded and the context checked first (a bad model reference
    fails before a vLLM server is started), then the model server (started if a launch), then the HTTP server."""
    try:
        import uvicorn

        from tasks.service import create_app, make_extractor
    except ImportError as e:  # the stage images without the serve extra still run every other command
        raise RnerError(f"rner serve needs the serve extra (pip install 'reasoning-ner[serve]'): {e}") from e
    extractor = make_extractor(config)
    # Loads the tokenizer and checks that a prompt with these types (or a placeholder) leaves room for text.
    extractor.budget(clean_labels(config.labels) or ("entity",))
    raise_on_sigterm()  # uvicorn re-raises the SIGTERM it drained on: this turns it into an unwinding exit
    token = os.environ.get(TOKEN_ENV) or None
    with serve(config.server) as endpoint:
        app = create_app(config, endpoint, extractor, token)
        settings = uvicorn.Config(
            app, host=config.host, port=config.port, timeout_graceful_shutdown=config.shutdown_grace_s
        )
        uvicorn.Server(settings).run()


def cli_serve(
    model: Annotated[
        str | None,
        typer.Option(help="Model reference (default, a directory, s3://, store:); with --backend endpoint its name."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="vllm (start a vLLM server) or endpoint (a running one at --base-url).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="The running server (--backend endpoint).")] = None,
    labels: Annotated[str | None, typer.Option(help='Entity types for requests that give none: "person,city".')] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (0.0.0.0 in a container).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer reference (default: the model's).")] = None,
    context: Annotated[int | None, typer.Option(help="Context window in tokens (default: the model's).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Answer budget per chunk, reasoning included.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Requests admitted at once; more get 429.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Chat requests in flight to the model server.")] = None,
    config: Annotated[Path | None, typer.Option(help="A ServeConfig YAML; the options above override it.")] = None,
) -> None:
    """Serve extraction over HTTP (POST /v1/extract, GET /health, GET /metrics, /docs) until SIGTERM."""
    base = load_config(ServeConfig, config).model_dump(exclude_unset=True) if config else {}
    server: dict[str, Any] = dict(base.get("server", {}))
    if backend is not None or "kind" not in server:
        server["kind"] = backend or "vllm"
    if server["kind"] not in ("vllm", "endpoint"):
        raise ConfigError(f"--backend: {server['kind']!r} is not vllm or endpoint")
    if model is not None or "model" not in server:
        server["model"] = model or DEFAULT_MODEL
    if base_url is not None:
        server["base_url"] = base_url
    if server["kind"] == "vllm":
        server.pop("base_url", None)
        if context is not None:
            server["max_model_len"] = context
    options = {
        "labels": clean_labels(labels.split(",")) if labels is not None else None, "host": host, "port": port,
        "tokenizer": tokenizer, "context_tokens": context, "max_tokens": max_tokens, "max_queue": max_queue,
        "concurrency": concurrency,
    }  # fmt: skip
    values = {**base, "server": server, **{k: v for k, v in options.items() if v is not None}}
    run(build_config(ServeConfig, values, source=str(config or "rner serve options")))


def main() -> None:
    with clean_errors():
        typer.run(cli_serve)


if __name__ == "__main__":
    main()
