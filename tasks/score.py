"""Score predictions against gold: the logic behind ``rner score``.

Gold is NERExample JSONL; predictions are Prediction JSONL (``id`` plus ``entities`` and/or a raw
``completion``). Entities without offsets and parsed completions are grounded in the gold text, so
strict (span) scoring works for both. An example without a prediction counts as predicting nothing;
a prediction for an id that is not in gold is an error, as is an id given twice, and so is an empty file
(gold or predictions: a run that wrote nothing, not a model that found nothing).

Usage::

    report = score_files("gold.jsonl", "pred.jsonl", mode="paper")
    report.to_dict()["average_f1"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from schemas import Entity, Mention, NERExample, Prediction
from tasks.errors import RnerError
from tasks.jsonl import read_jsonl
from tasks.metrics import Mode, Report, score
from tasks.parse import ground, parse_completion


class ScoreInputError(RnerError, ValueError):
    """Gold and predictions that cannot be paired."""


def prediction_entities(example: NERExample, prediction: Prediction | None) -> list[Entity | Mention]:
    """What ``prediction`` claims for ``example``: grounded entities first, then ungrounded mentions."""
    if prediction is None:
        return []
    if prediction.entities is None:
        mentions: Sequence[Entity | Mention] = parse_completion(prediction.completion or "", keep_blank=True).mentions
    else:
        mentions = prediction.entities
    spanned = [m for m in mentions if isinstance(m, Entity)]
    for i, e in enumerate(spanned):
        if example.text[e.start : e.end] != e.text:
            raise ScoreInputError(
                f"prediction {prediction.id!r}: entity {i} {e.text!r} at [{e.start}, {e.end}) "
                f"does not match the gold text there ({example.text[e.start : e.end]!r})"
            )
    grounded = ground(example.text, [m for m in mentions if not isinstance(m, Entity)])
    return [*spanned, *grounded.entities, *grounded.ungrounded]


def pair(gold: Sequence[NERExample], predictions: Sequence[Prediction]) -> list[tuple[NERExample, list]]:
    _unique_ids([g.id for g in gold], "gold")
    _unique_ids([p.id for p in predictions], "predictions")
    by_id = {p.id: p for p in predictions}
    unknown = sorted(set(by_id) - {g.id for g in gold})
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        raise ScoreInputError(f"{len(unknown)} prediction id(s) are not in gold: {shown}")
    return [(g, prediction_entities(g, by_id.get(g.id))) for g in gold]


def score_files(gold_path: str | Path, pred_path: str | Path, mode: Mode = "paper") -> Report:
    gold = read_jsonl(gold_path, NERExample)
    if not gold:
        raise ScoreInputError(f"{gold_path}: no gold examples (an empty file?)")
    predictions = read_jsonl(pred_path, Prediction)
    if not predictions:
        raise ScoreInputError(f"{pred_path}: no predictions (an empty file?)")
    return score(pair(gold, predictions), mode)


def _unique_ids(ids: list[str], what: str) -> None:
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ScoreInputError(f"{what}: id {repeated[0]!r} appears {Counter(ids)[repeated[0]]} times")


def report_table(report: Report) -> Table:
    table = Table(title=f"span-level micro F1 ({report.mode} mode)")
    for column in ("dataset", "examples", "gold", "pred", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "dataset" else "right")
    for name, ds in sorted(report.per_dataset.items()):
        m = ds.micro
        table.add_row(name, str(ds.examples), str(m.n_gold), str(m.n_pred), *_pct(m.precision, m.recall, m.f1))
    table.add_section()
    m = report.micro
    examples = sum(ds.examples for ds in report.per_dataset.values())
    table.add_row("micro (all)", str(examples), str(m.n_gold), str(m.n_pred), *_pct(m.precision, m.recall, m.f1))
    table.add_row("average over datasets", "", "", "", "", "", f"{100 * report.average_f1:.2f}")
    return table


def _pct(*values: float) -> list[str]:
    return [f"{100 * v:.2f}" for v in values]
