"""Throughput of ``tasks.metrics.score`` against the bare counting loop it cannot beat.

    python bench/bench_metrics.py [--examples 50000] [--repeats 3] [--seed 0]

Builds a seeded synthetic corpus (3-5 gold entities per example, predictions that keep ~80% of the
gold, sometimes with the wrong label, plus the odd spurious mention), then times, best of
``--repeats``, on one core:

- ``score()`` in paper and strict mode, cold (normalisation caches cleared before each run, as in a
  fresh evaluation process) and warm (caches already filled, as when scoring the same data again);
- the ceiling: a hand-inlined loop over key sets precomputed outside the timer (already normalised,
  no per-label or per-dataset bookkeeping), and the same with Counters for multiset semantics.

A "prediction" is one example's predicted entity list scored against its gold.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.records import Entity, Mention, NERExample
from tasks import metrics
from tasks.metrics import is_dropped_label, normalize, score

LABELS = ["person", "organization", "location", "product", "event", "misc"]
# Syllable pools give ~10^5 possible surfaces, so a 50k-example corpus has tens of thousands of
# distinct mentions and the cold runs really do miss the normalisation cache.
SYLLABLES = ["al", "be", "ca", "do", "el", "fa", "gu", "ha", "in", "jo", "ka", "lu", "mo", "ne"]
FIRST = [(a + b).title() for a in SYLLABLES for b in ("ra", "nto", "lo", "mi", "sa")]
LAST = [(a + b + c).title() for a in SYLLABLES for b in ("r", "st", "k") for c in ("tin", "son", "ez", "ova")]
SHAPES = ["{f} {l}", "The {l} Group", "{l}, Inc.", "{f}-{l}", "{l}'s {f}", "U.S. {l}", "{f}"]
# (source, weight, share of gold entities predicted): datasets of unequal size and quality, so the
# per-dataset average differs from the micro F1 as it does on real benchmarks.
DATASETS = [("crossner_ai", 4, 0.85), ("mit_movie", 2, 0.75), ("conll03", 1, 0.9), ("", 1, 0.6)]


def make_corpus(n: int, seed: int) -> list[tuple[NERExample, list[Entity | Mention]]]:
    rng = random.Random(seed)
    choices = [(name, keep) for name, weight, keep in DATASETS for _ in range(weight)]
    pairs: list[tuple[NERExample, list[Entity | Mention]]] = []
    for i in range(n):
        parts: list[str] = []
        gold: list[Entity] = []
        pos = 0
        for _ in range(rng.randint(3, 5)):
            filler = "said that " if rng.random() < 0.5 else "and "
            parts.append(filler)
            pos += len(filler)
            surface = rng.choice(SHAPES).format(f=rng.choice(FIRST), l=rng.choice(LAST))
            gold.append(Entity(text=surface, label=rng.choice(LABELS), start=pos, end=pos + len(surface)))
            parts.append(surface + " ")
            pos += len(surface) + 1
        source, keep = rng.choice(choices)
        example = NERExample(id=f"ex{i}", text="".join(parts), labels=LABELS, entities=gold, source=source)
        pred: list[Entity | Mention] = []
        for e in gold:
            r = rng.random()
            if r < keep:
                pred.append(e)
            elif r < keep + 0.1:
                pred.append(Entity(text=e.text, label=rng.choice(LABELS), start=e.start, end=e.end))
        if rng.random() < 0.3:
            pred.append(Mention(text=rng.choice(FIRST), label=rng.choice(LABELS)))
        rng.shuffle(pred)
        pairs.append((example, pred))
    return pairs


def best_of(repeats: int, fn: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ceiling_sets(keys: list[tuple[set, set]]) -> tuple[int, int, int]:
    tp = n_pred = n_gold = 0
    for g, p in keys:
        tp += len(g & p)
        n_pred += len(p)
        n_gold += len(g)
    return tp, n_pred, n_gold


def ceiling_counters(keys: list[tuple[Counter, Counter]]) -> tuple[int, int, int]:
    tp = n_pred = n_gold = 0
    for g, p in keys:
        tp += (g & p).total()
        n_pred += p.total()
        n_gold += g.total()
    return tp, n_pred, n_gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # One core: pin where the OS allows it, so the numbers do not depend on the scheduler.
    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = f"cpu {min(os.sched_getaffinity(0))}"

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, cpu_count={os.cpu_count()}, pinned to {pinned}"
    )
    t0 = time.perf_counter()
    pairs = make_corpus(args.examples, args.seed)
    n = len(pairs)
    n_gold = sum(len(ex.entities) for ex, _ in pairs)
    n_pred = sum(len(p) for _, p in pairs)
    distinct = len({e.text for ex, _ in pairs for e in ex.entities})
    print(
        f"corpus: {n} examples, {n_gold} gold / {n_pred} predicted entities, {distinct} distinct surfaces, "
        f"built in {time.perf_counter() - t0:.1f}s; best of {args.repeats}"
    )

    # Precomputed outside the timers: the ceiling does only the counting.
    paper_sets = [
        (
            {(normalize(e.text), e.label.lower()) for e in ex.entities if not is_dropped_label(e.label)},
            {(normalize(e.text), e.label.lower()) for e in p},
        )
        for ex, p in pairs
    ]
    span = [
        (
            [(e.start, e.end, e.label) for e in ex.entities],
            [(e.start, e.end, e.label) if isinstance(e, Entity) else (-1, -1, e.label) for e in p],
        )
        for ex, p in pairs
    ]
    span_sets = [(set(g), set(p)) for g, p in span]
    span_counters = [(Counter(g), Counter(p)) for g, p in span]

    ceilings = {
        "paper": best_of(args.repeats, lambda: ceiling_sets(paper_sets)),
        "strict": best_of(args.repeats, lambda: ceiling_sets(span_sets)),
    }
    counters = best_of(args.repeats, lambda: ceiling_counters(span_counters))
    cold = {m: best_of(args.repeats, lambda m=m: score(pairs, m), before=metrics.clear_caches) for m in ceilings}
    warm = best_of(args.repeats, lambda: score(pairs, "paper"))

    def row(label: str, seconds: float, ceiling: float | None = None) -> None:
        ratio = f"{ceiling / seconds:>10.3f}" if ceiling is not None else ""
        print(f"{label:52}{n / seconds:>14,.0f}{ratio}")

    print(f"\n{'':52}{'predictions/s':>14}{'ours/ceil':>10}")
    row("ceiling paper: sets of pre-normalised keys", ceilings["paper"])
    row("ceiling strict: sets of span keys", ceilings["strict"])
    row("ceiling strict, multiset: Counters of span keys", counters)
    row("score(mode='paper'), cold caches", cold["paper"], ceilings["paper"])
    row("score(mode='paper'), warm caches", warm, ceilings["paper"])
    row("score(mode='strict')", cold["strict"], ceilings["strict"])
    row("score(mode='strict') vs the Counter ceiling", cold["strict"], counters)

    paper, strict = score(pairs, "paper"), score(pairs, "strict")
    print(
        f"\nsanity: paper micro F1 {paper.micro.f1:.4f}, average F1 {paper.average_f1:.4f} "
        f"over {len(paper.per_dataset)} datasets; strict micro F1 {strict.micro.f1:.4f}; "
        f"ceiling tp/pred/gold paper {ceiling_sets(paper_sets)} = ours "
        f"{(paper.micro.tp, paper.micro.n_pred, paper.micro.n_gold)}"
    )


if __name__ == "__main__":
    main()
