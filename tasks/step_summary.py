"""One console line per CG step: its counts, and why records fell out, where it happens.

The UI artifacts and the dataset card tell the whole story; these lines tell enough of it on the console that
a run whose dataset came out empty says why without opening anything::

    annotate: 36 of 36 passages annotated; 36 answers unreadable: no_json 36 (e.g. 'The entity type ...')
    validate: 0 of 36 kept; rejected: parse_error 36 (e.g. no_json: no JSON object or array in the answer)
    judge: 0 judged
    publish: 0 new records kept (judge score >= 9); 36 passages -> 36 annotated -> 0 valid -> 0 judged -> 0 kept

Usage::

    from tasks.step_summary import step_summary
    print(step_summary("validate", published, store))     # any CG step's published output

Everything comes from the output's manifest stats; an example is read from the output only when something
was rejected, and reading stops at the first one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schemas import CoTRecord, JudgeVerdict, Rejection
from tasks.store import Published, Store

EXAMPLE_CHARS = 120


def step_summary(stage: str, published: Published, store: Store) -> str:
    """The line for ``stage`` (annotate, validate, judge or publish) from its published output."""
    stats = published.manifest.stats
    return f"{stage}: " + _SUMMARIES[stage](stats, lambda role: store.records(published.manifest, role))


Records = Callable[[str], Iterable[Any]]
"""The records of one file role of the output, read lazily."""


def _annotate(stats: Mapping[str, Any], records: Records) -> str:
    line = f"{stats['annotated']} of {stats['passages']} passages annotated"
    if skipped := stats.get("rejected"):
        line += f"; not sent: {_counts(skipped)}"
    if unreadable := stats.get("parse_errors"):
        reasons = stats.get("parse_reasons")
        example = _first(r.completion for r in records("data") if isinstance(r, CoTRecord) and r.parse_error)
        line += f"; {unreadable} answers unreadable" + (f": {_counts(reasons)}" if reasons else "")
        line += f" (e.g. {_quoted(example)})"
    return line


def _validate(stats: Mapping[str, Any], records: Records) -> str:
    line = f"{stats['valid']} of {stats['checked']} kept"
    if reasons := stats.get("reasons"):
        top = max(reasons, key=reasons.get)
        example = _first(r.detail for r in records("rejects") if isinstance(r, Rejection) and top in r.reasons)
        line += f"; rejected: {_counts(reasons)}" + (f" (e.g. {top}: {example})" if example else "")
    return line


def _judge(stats: Mapping[str, Any], records: Records) -> str:
    line = f"{stats['judged']} judged"
    if stats.get("mean_score") is not None:
        line += f", mean score {stats['mean_score']:.1f}"
    if unscored := stats.get("no_score"):
        example = _first(r.completion for r in records("data") if isinstance(r, JudgeVerdict) and r.parse_error)
        line += f"; {unscored} replies without a score (e.g. {_quoted(example)})"
    return line


def _publish(stats: Mapping[str, Any], records: Records) -> str:
    steps = ("passages", "annotated", "valid", "judged", "kept")
    funnel = " -> ".join(f"{stats[key]} {key}" for key in steps)
    line = f"v{stats['version']}: {stats['kept']} new records kept (of {stats['judged']} judged); {funnel}"
    if below := stats.get("below_threshold"):
        line += f"; {below} scored below the threshold"
    if longer := stats.get("longer_duplicates"):
        line += f"; {longer} longer chains of a passage dropped for its shortest"
    if stats["kept"] == 0:
        line += f" — nothing kept: {_why_empty(stats)}"
    return line


def _why_empty(stats: Mapping[str, Any]) -> str:
    """The first step that left nothing, in words."""
    if not stats["passages"]:
        return "there were no passages"
    if not stats["annotated"]:
        return f"no passage was annotated (not sent: {_counts(stats['rejected_at_annotate']) or 'none'})"
    if not stats["valid"]:
        return f"no annotation passed validation ({_counts(stats['rejected_at_validate'])})"
    if not stats["judged"] or stats["no_score"] == stats["judged"]:
        return "the judge gave no readable score"
    return "every judged record scored below the threshold"


_SUMMARIES: dict[str, Callable[[Mapping[str, Any], Records], str]] = {
    "annotate": _annotate,
    "validate": _validate,
    "judge": _judge,
    "publish": _publish,
}


def _counts(counts: Mapping[str, int]) -> str:
    """``{"no_json": 30, "bad_json": 6}`` as ``no_json 30, bad_json 6``, the most frequent first."""
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))


def _first(texts: Iterable[str]) -> str:
    return next(iter(texts), "")


def _quoted(text: str) -> str:
    """The start of a model's raw text, quoted on one line."""
    return repr(text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…")
