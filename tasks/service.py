"""The extraction service: entities with character offsets over HTTP, in front of one model server.

Usage::

    rner serve --model default --backend vllm --labels person,location      # starts a vLLM server, then listens
    rner serve --backend endpoint --base-url http://h:8000/v1 --model ner --tokenizer /models/ner --context 32768
    rner serve --config serve.yaml --port 9000     # a ServeConfig (schemas.service); options override it
    curl -s localhost:8080/v1/extract -H 'content-type: application/json' \\
        -d '{"text": "Ada Lovelace met Charles Babbage in London.", "labels": ["person", "location"]}'

    app = create_app(config, endpoint, extractor)  # the ASGI app (FastAPI), for any ASGI server

API (the OpenAPI document, ``/openapi.json`` and ``/docs``, is generated from ``schemas.service``):

- ``POST /v1/extract``: an ``ExtractRequest`` (one ``text`` or a batch of ``texts``, ``labels``, ``options``) answered
  with an ``ExtractResponse``: per text the entities (label, text, start, end into the text as sent), the mentions
  that could not be grounded, the chunk count and token usage. Extraction is ``tasks.extract.Extractor``'s, the same
  code as ``rner extract``: long texts are read in overlapping chunks, never truncated; model output is parsed as
  JSON data, never evaluated.
- ``GET /health``: 200 when the model server answers (``GET <base_url>/models``), else 503.
- ``GET /metrics``: Prometheus text: ``rner_requests_total{path,status}``, ``rner_request_seconds{path}``
  (histogram), ``rner_texts_total``, ``rner_tokens_total{kind}``, ``rner_errors_total{reason}``,
  ``rner_in_flight``.

Errors are ``{"detail": "<one line naming the field or the limit>"}``: 400 a body that is not UTF-8 or not JSON,
401 a missing or wrong bearer token, 413 a body over ``max_body_bytes``, 422 a request that does not validate
(``labels.0: ...``, ``texts: 80 texts, over the limit of 64``, no entity types), 429 the queue is full
(``Retry-After``), 502 the model server failed, 504 the request took over ``request_timeout_s``.

Concurrency: every chunk of every admitted request goes to one shared client, at most ``concurrency`` chat
requests in flight to the model server (its continuous batching does the rest). At most ``max_queue`` requests are
admitted at once (running or waiting for a slot); the next is answered 429 at once, costing nothing.

Shutdown: SIGTERM (docker stop, kubernetes) stops accepting connections, lets the requests in flight finish (up to
``shutdown_grace_s``), then stops the vLLM server the service started (``tasks.serving.serve``).

Security: with ``RNER_SERVE_TOKEN`` set in the environment, ``/v1/extract`` needs ``Authorization: Bearer
<token>`` (compared in constant time, never logged); ``/health`` and ``/metrics`` stay open for probes and
scrapers. The model server's own key is the endpoint's (``api_key_env``), as for every stage.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from schemas import Endpoint
from schemas.service import (
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    ServeConfig,
    TextResult,
    TokenUsage,
)
from tasks.budget import BudgetError
from tasks.errors import RnerError
from tasks.extract import ExtractError, Extraction, Extractor, clean_labels
from tasks.jsonl import describe
from tasks.llm import LLMClient, LLMRequestError, endpoint_api_key

EXTRACT_PATH = "/v1/extract"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
HEALTH_TIMEOUT_S = 5.0
MAX_BUDGETS = 16
"""Different ``options.reasoning_budget`` values one service plans for (each keeps an extractor and its tokenizer)."""


class ServiceError(RnerError):
    """A request the service answers with an error: its HTTP status, one line of detail, a metrics reason."""

    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason, self.headers = status, detail, reason, headers


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rner_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram(
            "rner_request_seconds", "Time to answer", ["path"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.texts = Counter("rner_texts", "Texts extracted from", registry=r)
        self.tokens = Counter("rner_tokens", "Model tokens, as the model server counted them", ["kind"], registry=r)
        self.errors = Counter("rner_errors", "Requests answered with an error, by reason", ["reason"], registry=r)
        self.in_flight = Gauge("rner_in_flight", "Extraction requests admitted and not yet answered", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def make_extractor(config: ServeConfig, reasoning_budget: int | None = None) -> Extractor:
    """The extractor the service plans and merges with; a launch's model and length are its defaults."""
    try:
        return Extractor(
            config.server,
            max_tokens=config.max_tokens,
            context_tokens=config.context_tokens,
            tokenizer=config.tokenizer,
            prompt=config.prompt,
            with_cot=config.with_cot,
            reasoning_budget=reasoning_budget,
            state_budget=config.state_budget and reasoning_budget is not None,
        )
    except BudgetError as e:
        raise ServiceError(422, f"options.{e}", "invalid") from None


def create_app(config: ServeConfig, endpoint: Endpoint, extractor: Extractor, token: str | None = None) -> FastAPI:
    """The service's ASGI app: extraction with ``extractor`` on ``endpoint`` (see the module docstring)."""
    metrics = Metrics()
    admitted = 0
    # One extractor per reasoning budget asked for: each plans its chunks with room for that much thinking.
    extractors: dict[int | None, Extractor] = {None: extractor}

    def extractor_for(budget: int | None) -> Extractor:
        if budget not in extractors:
            if len(extractors) > MAX_BUDGETS:
                raise ServiceError(
                    422, f"options.reasoning_budget: at most {MAX_BUDGETS} different budgets per service", "invalid"
                )
            extractors[budget] = make_extractor(config, budget)
        return extractors[budget]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client for every request: its semaphore is the service-wide limit of chat requests in flight.
        app.state.llm = LLMClient(
            endpoint, concurrency=config.concurrency, timeout_s=config.request_timeout_s, max_retries=config.max_retries
        )
        try:
            yield
        finally:
            await app.state.llm.aclose()  # after uvicorn let the requests in flight finish

    app = FastAPI(
        title="reasoning-ner extraction service",
        summary="Named entities with character offsets, from a reasoning NER model.",
        version="1",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        known = request.url.path in {EXTRACT_PATH, "/health", "/metrics"}
        path = request.url.path if known else "other"
        started = time.perf_counter()
        response = await call_next(request)
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.exception_handler(ServiceError)
    async def refuse(request: Request, error: ServiceError) -> Response:
        metrics.errors.labels(error.reason).inc()
        body = ErrorResponse(detail=error.detail).model_dump()
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": what}
        for code, what in (
            (400, "Not UTF-8, or not JSON"),
            (401, "Missing or wrong bearer token"),
            (413, "Body too large"),
            (422, "Invalid request (the detail names the field)"),
            (429, "Queue full: retry later"),
            (502, "The model server failed"),
            (504, "Timed out"),
        )
    }

    @app.post(EXTRACT_PATH, response_model=ExtractResponse, responses=errors)
    async def extract(request: Request) -> Response:
        """Entities with character offsets in one text or a batch (body: ``ExtractRequest``)."""
        nonlocal admitted
        _authorize(request, token)
        body = _parse(await _read_body(request, config.max_body_bytes))
        labels, texts = _check(body, config)
        if admitted >= config.max_queue:
            raise ServiceError(
                429, f"queue full: {config.max_queue} requests in progress (max_queue); retry later", "queue_full",
                {"Retry-After": "1"},
            )  # fmt: skip
        admitted += 1
        metrics.in_flight.inc()
        try:
            answer = await _extract(
                extractor_for(body.options.reasoning_budget), request.app.state.llm, config, texts, labels, body
            )
        finally:
            admitted -= 1
            metrics.in_flight.dec()
        metrics.texts.inc(len(texts))
        metrics.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        metrics.tokens.labels("completion").inc(answer.usage.completion_tokens)
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.get("/health", responses={503: {"model": ErrorResponse, "description": "The model server is not ready"}})
    async def health() -> dict[str, str]:
        """200 when the model server answers; 503 while it does not."""
        problem = await _model_server_problem(endpoint)
        if problem:
            raise ServiceError(503, f"model server not ready: {problem}", "not_ready")
        return {"status": "ok", "model": endpoint.model}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        # The body is read and validated by hand (size limit, UTF-8, one-line errors), so its schema is added here:
        # the same ExtractRequest model.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            request = ExtractRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request.pop("$defs", {}))
            components["ExtractRequest"] = request
            content = {"application/json": {"schema": {"$ref": "#/components/schemas/ExtractRequest"}}}
            schema["paths"][EXTRACT_PATH]["post"]["requestBody"] = {"required": True, "content": content}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _authorize(request: Request, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ServiceError(
            401, "missing or wrong bearer token (Authorization: Bearer <token>)", "unauthorized",
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit`` bytes: by its Content-Length, or while
    it streams in."""
    too_large = ServiceError(413, f"body over the limit of {limit} bytes (max_body_bytes)", "too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _parse(body: bytes) -> ExtractRequest:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ServiceError(400, f"body is not UTF-8 (byte {e.start})", "bad_body") from None
    try:
        return ExtractRequest.model_validate_json(body)
    except ValidationError as e:
        syntax = any(problem["type"] == "json_invalid" for problem in e.errors())
        raise ServiceError(400 if syntax else 422, describe(e), "bad_json" if syntax else "invalid") from None


def _check(body: ExtractRequest, config: ServeConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The entity types and texts of a valid request the service can serve; else 422 naming the field."""
    labels = clean_labels(body.names or config.labels)
    if not labels:
        raise ServiceError(422, "labels: no entity types (give labels, or start the service with --labels)", "invalid")
    texts = body.batch
    if len(texts) > config.max_batch:
        raise ServiceError(
            422, f"texts: {len(texts)} texts, over the limit of {config.max_batch} (max_batch)", "too_large"
        )
    return labels, texts


async def _extract(
    extractor: Extractor,
    client: LLMClient,
    config: ServeConfig,
    texts: tuple[str, ...],
    labels: tuple[str, ...],
    body: ExtractRequest,
) -> ExtractResponse:
    sampling = extractor.sampling.model_copy(update={"temperature": body.options.temperature})
    try:
        async with asyncio.timeout(config.request_timeout_s):
            found = await extractor.extract_async(
                texts, labels, client=client, sampling=sampling, definitions=body.definitions
            )
    except TimeoutError:
        raise ServiceError(504, f"not answered within {config.request_timeout_s:g} s", "timeout") from None
    except ExtractError as e:
        raise ServiceError(422, str(e), "invalid") from None
    except LLMRequestError as e:
        raise ServiceError(502, str(e), "model_server") from None
    results = tuple(_result(e, body.options.reasoning) for e in found)
    total = TokenUsage(
        prompt_tokens=sum(r.usage.prompt_tokens for r in results),
        completion_tokens=sum(r.usage.completion_tokens for r in results),
    )
    return ExtractResponse(model=client.endpoint.model, results=results, usage=total)


def _result(found: Extraction, reasoning: bool) -> TextResult:
    thoughts = "\n\n".join(r for r in found.reasoning if r) if reasoning else ""
    return TextResult(
        entities=found.entities,
        ungrounded=found.dropped,
        failures=found.failures,
        chunks=len(found.chunks),
        reasoning=thoughts or None,
        usage=TokenUsage(prompt_tokens=found.prompt_tokens, completion_tokens=found.completion_tokens),
    )


async def _model_server_problem(endpoint: Endpoint) -> str | None:
    """Why the model server is not ready (one line), or None when it lists its models."""
    headers = {"Authorization": f"Bearer {endpoint_api_key(endpoint)}"}
    try:
        # trust_env=False: a proxy from the environment must not capture requests to the model server.
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S, trust_env=False) as http:
            response = await http.get(f"{endpoint.base_url.rstrip('/')}/models", headers=headers)
    except httpx.HTTPError as e:
        return f"{type(e).__name__}"
    return None if response.status_code == 200 else f"HTTP {response.status_code}"
