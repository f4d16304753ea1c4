"""What an evaluation reports besides F1: generation statistics, a markdown table, PNG bar charts.

Reasoning length and parse failures are reported next to F1 because the paper names verbose reasoning as
ReasoningNER's main limitation: users need to see what a point of F1 costs in tokens, and how often the
answer never came (cut off at ``max_tokens``, or not in the answer format).

Usage::

    stats = generation_stats(examples, predictions, reasoning_tokens)   # per dataset and "all"
    image = bar_chart(["ai", "music"], [0.61, 0.72], "F1 per dataset (paper mode)", average=0.665)
    text = report_markdown(header_lines, paper_report, strict_report, stats, {"F1 per dataset": "chart.png"})
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from statistics import fmean
from typing import TYPE_CHECKING, Any

from schemas import NERExample, Prediction
from tasks.metrics import DEFAULT_DATASET, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ALL = "all"


def generation_stats(
    examples: Sequence[NERExample], predictions: Sequence[Prediction], reasoning_tokens: Sequence[int] | None
) -> dict[str, dict[str, Any]]:
    """Per dataset (by ``source``) and over ``"all"``: examples, parse failures and their rate, answers cut at
    ``max_tokens``, mean completion tokens, and mean reasoning and answer tokens (``None`` without counts of the
    reasoning: the server's under a reasoning budget, else a tokenizer's).
    ``predictions`` and ``reasoning_tokens`` are aligned with ``examples``."""
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.source or DEFAULT_DATASET, []).append(i)
    groups = {name: groups[name] for name in sorted(groups)} | {ALL: list(range(len(examples)))}
    return {name: _stats(indices, predictions, reasoning_tokens) for name, indices in groups.items()}


def _stats(indices: list[int], predictions: Sequence[Prediction], reasoning_tokens: Sequence[int] | None) -> dict:
    chosen = [predictions[i] for i in indices]
    generations = [p.generation for p in chosen if p.generation is not None]
    failures = sum(p.parse_error is not None for p in chosen)
    return {
        "examples": len(chosen),
        "parse_failures": failures,
        "parse_failure_rate": failures / len(chosen) if chosen else 0.0,
        "hit_max_tokens": sum(g.finish_reason == "length" for g in generations),
        "completion_tokens_mean": fmean(g.completion_tokens for g in generations) if generations else 0.0,
        "reasoning_tokens_mean": (
            fmean(reasoning_tokens[i] for i in indices) if reasoning_tokens is not None and indices else None
        ),
        "answer_tokens_mean": _answer_tokens_mean(indices, predictions, reasoning_tokens),
    }


def _answer_tokens_mean(
    indices: list[int], predictions: Sequence[Prediction], reasoning_tokens: Sequence[int] | None
) -> float | None:
    """Completion tokens that were not reasoning, per example (``None`` without reasoning counts)."""
    if reasoning_tokens is None:
        return None
    answers = [g.completion_tokens - reasoning_tokens[i] for i in indices if (g := predictions[i].generation)]
    return fmean(answers) if answers else None


def report_markdown(
    header: Sequence[str], paper: Report, strict: Report, stats: dict[str, dict[str, Any]], charts: dict[str, str]
) -> str:
    """The report: header lines, one table row per dataset and the average, then the charts (title -> path)."""
    columns = ["dataset", "examples", "gold", "pred", "P", "R", "F1", "strict F1", "parse failures"]
    columns += ["reasoning tok/ex", "answer tok/ex", "completion tok/ex"]
    lines = ["# Evaluation report", "", *header, ""]
    lines += ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for name, scores in paper.per_dataset.items():
        m = scores.micro
        row = [name, str(scores.examples), str(m.n_gold), str(m.n_pred), *percent(m.precision, m.recall, m.f1)]
        lines.append(_row(row, strict.per_dataset[name].micro.f1, stats[name]))
    average = ["**average**", str(stats[ALL]["examples"]), "", "", "", "", *percent(paper.average_f1)]
    lines.append(_row(average, strict.average_f1, stats[ALL]))
    lines += ["", "F1 is span-level micro F1 in %, paper mode (the released evaluation) unless marked strict; the "
              "average is unweighted over datasets. A parse failure counts as an empty prediction."]  # fmt: skip
    for title, path in charts.items():
        lines += ["", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"


def _row(cells: list[str], strict_f1: float, stats: dict[str, Any]) -> str:
    failures = f"{stats['parse_failures']} ({100 * stats['parse_failure_rate']:.1f}%)"
    reasoning, answer = (
        "n/a" if stats[key] is None else f"{stats[key]:.1f}" for key in ("reasoning_tokens_mean", "answer_tokens_mean")
    )
    cells = [*cells, *percent(strict_f1), failures, reasoning, answer, f"{stats['completion_tokens_mean']:.1f}"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def percent(*values: float) -> list[str]:
    """F1-style ratios in [0, 1] as percentages with two decimals, as every table here prints them."""
    return [f"{100 * v:.2f}" for v in values]


def bar_chart(names: Sequence[str], values: Sequence[float], title: str, *, average: float | None = None) -> bytes:
    """A horizontal bar chart of F1 values in [0, 1] as PNG bytes (no pyplot: no global state, no display)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 1.4 + 0.32 * max(len(names), 1)), dpi=100)
    axes = figure.add_subplot()
    rows = range(len(names))
    axes.barh(rows, [100 * v for v in values], color="#4c72b0")
    axes.set_yticks(rows, labels=names)
    axes.invert_yaxis()  # first name on top, like the table
    axes.set_xlim(0, 110)
    axes.set_xlabel("F1 (%)")
    axes.set_title(title)
    for row, value in zip(rows, values, strict=True):
        axes.text(100 * value + 0.5, row, f"{100 * value:.1f}", va="center", fontsize=8)
    if average is not None:
        axes.axvline(100 * average, color="#c44e52", linestyle="--", label=f"average {100 * average:.1f}")
        axes.legend(loc="lower right")
    return png(figure)


def png(figure: Figure) -> bytes:
    """A laid-out figure as PNG bytes."""
    figure.tight_layout()
    buffer = io.BytesIO()
    # No "Software" tag (it names the matplotlib version): the bytes depend only on what is drawn.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
