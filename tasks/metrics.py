"""Span-level micro precision / recall / F1 for NER, in two modes. Pure Python, standard library only.

Usage::

    from tasks.metrics import score, f1_score

    report = score((example, predicted_entities) for example, predicted_entities in pairs)
    report.micro.f1             # micro F1 over every example
    report.average_f1           # unweighted mean of the per-dataset F1s (the usual zero-shot "Avg")
    report.per_dataset["crossner_ai"].micro.recall
    report.per_label["person"].precision
    json.dumps(report.to_dict())

    f1_score(example.entities, predicted_entities)   # one example's F1, e.g. as an RL reward

Modes
-----
``paper`` (default) reproduces the paper's released evaluation (``rner/metric.py`` ``compute_f1`` and
``rner/protocol.py`` ``InputExample.to_set`` of HuiResearch/ReasoningIE), which is the UniversalNER one,
itself SQuAD's answer normalisation. Per example, gold and prediction are each turned into a SET of
``(normalize(text), label.lower().strip())`` pairs, where ``normalize`` lowercases, deletes every character
of ``string.punctuation``, replaces the whole words a/an/the with a space, and collapses whitespace, in that
order ("The U.S." -> "us", "theater" and "Anne" are kept whole). Offsets are ignored, so bare
``Mention`` predictions (no span) score exactly like ``Entity`` ones, and a mention predicted twice, or
at two places of the passage, counts once.

Nothing is dropped for normalising to nothing, as in the released code: an empty mention (``"type": [""]``,
which the parser keeps for evaluation, see ``tasks.parse``), a whitespace-only one and a punctuation-only
one ("-", "...") are each the pair ``("", type)``, so they count as one prediction per type, a false
positive unless the gold has a mention of that type that normalises to nothing too.

Gold entities whose label is a catch-all are dropped, and ``paper_labels`` drops them from an example's
schema before it is put in a prompt. A label is a catch-all as the released ``is_valid_label`` decides:
blank, or lowercased and stripped one of ``DROPPED_LABELS`` (na, n a, misc, else, other, nan). "MISC" and
" Other " are; "N/A" ("n/a") is not, and stays a label like any other. Predictions are never filtered: a
prediction with such a label counts as predicted and, since no gold pair carries that label, can only be
a false positive.

``strict`` compares exact character spans: ``(start, end, label)`` as a MULTISET (a duplicated
prediction counts twice; it matches twice only if the gold has the span twice). No normalisation, no
label dropping, labels compared case-sensitively. A bare ``Mention`` has no span: it counts as
predicted and never matches.

Counting
--------
tp, n_pred and n_gold are summed over examples (micro averaging), then, at corpus level,
P = tp / n_pred (0 when n_pred is 0), R = tp / n_gold (0 when n_gold is 0), F1 = 2PR / (P + R) (0 when
both are 0). So a corpus with no gold and no predictions scores F1 = 0, never a division error. The
single-example ``f1_score`` differs on exactly that case: with nothing to find and nothing predicted
it returns ``empty_match`` (1.0 by default: a correct "no entities" answer is rewarded; the released
code gives 0.0, pass ``empty_match=0.0`` for that).

Examples are grouped into datasets by ``NERExample.source`` (an empty source is dataset
``"default"``). Each dataset gets its own micro scores and per-label scores; ``average_f1`` is the
unweighted mean of the dataset F1s, so a small dataset weighs as much as a large one. Per-label keys
are the labels that occur in the gold or the predictions (lowercased and stripped in paper mode, as given
in strict mode); a schema label never seen in either has nothing to report and is absent.

The released ``evaluate.py`` prints each dataset's F1 in percent rounded to two decimals, and as
"Average" the mean of those ROUNDED numbers, rounded again; ``Report.released`` gives exactly these
numbers (``average_f1`` rounded can differ from their Average in the last digit).

Speed
-----
``score`` runs at >100k predictions/s on one core (``python bench/bench_metrics.py``). Normalised
texts and lowercased labels are memoised per distinct string in bounded module-level dicts (cleared
when full; ``clear_caches()`` empties them), so repeated mentions cost a dict probe.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, Literal, TypeVar

from schemas.records import Entity, Mention, NERExample

Mode = Literal["paper", "strict"]
MODES: tuple[Mode, ...] = ("paper", "strict")

DROPPED_LABELS: frozenset[str] = frozenset({"na", "n a", "misc", "else", "other", "nan"})
"""Catch-all labels the paper removes from schemas and gold (compared lowercased and stripped)."""

DEFAULT_DATASET = "default"

# Memo size. Bounded, so scoring a huge corpus cannot grow memory without limit; large enough
# that one evaluation run's distinct mentions almost always fit.
_CACHE_SIZE = 1 << 18

_PUNCTUATION = string.punctuation.encode()
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# Every match key ends with its label, whatever the mode; per-label tallies read it from there.
_label_of = itemgetter(-1)

# Strict mode's stand-in span for a bare Mention: gold offsets are never negative, so it cannot match.
_NO_SPAN = -1


@lru_cache(maxsize=_CACHE_SIZE)
def normalize(text: str) -> str:
    """SQuAD/UniversalNER answer normalisation: lower, drop ASCII punctuation, drop a/an/the, squeeze."""
    # Deleting the punctuation bytes from the UTF-8 encoding is exact (every byte of a multi-byte
    # character is >= 0x80, so no ASCII byte belongs to one) and several times faster than
    # str.translate; surrogatepass lets lone surrogates through unchanged, as the reference does.
    text = text.lower().encode("utf-8", "surrogatepass").translate(None, _PUNCTUATION)
    text = text.decode("utf-8", "surrogatepass")
    return " ".join(_ARTICLES.sub(" ", text).split())


@lru_cache(maxsize=1024)
def is_dropped_label(label: str) -> bool:
    """Whether the paper drops this label, as the released ``is_valid_label`` decides: blank, or one of
    ``DROPPED_LABELS`` once lowercased and stripped ("MISC" and " other " are, "N/A" is not)."""
    key = label.lower().strip()
    return not key or key in DROPPED_LABELS


def paper_label(label: str) -> str:
    """A label as the paper compares it (the released ``process_label``): lowercased, stripped."""
    return label.lower().strip()


def paper_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """An example's schema as the paper prompts with it: catch-all labels removed, order kept."""
    return tuple(label for label in labels if not is_dropped_label(label))


@dataclass(frozen=True, slots=True)
class PRF:
    """Counts of true positives, predictions and gold items; the ratios are derived, never stored."""

    tp: int = 0
    n_pred: int = 0
    n_gold: int = 0

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: PRF) -> PRF:
        if not isinstance(other, PRF):
            return NotImplemented
        return PRF(self.tp + other.tp, self.n_pred + other.n_pred, self.n_gold + other.n_gold)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "n_pred": self.n_pred,
            "n_gold": self.n_gold,
        }


# --- matching: one example's gold and predictions -> keys -------------------------------------------
# Each matcher returns (gold keys, predicted keys, matched keys); their lengths are n_gold, n_pred, tp.
# This is the hot path: one comprehension per side, C-level dict probes per mention, no objects beyond
# the key tuples and their containers.

_V = TypeVar("_V")


class _Memo(dict[str, _V]):
    """A dict that computes and keeps missing values, so a hit is one C-level subscript.

    Faster than lru_cache (no recency bookkeeping) and keyed by plain strings, which the garbage
    collector never traverses, unlike tuple keys. Cleared when full: memory stays bounded and the
    only cost is recomputing.
    """

    __slots__ = ("_compute",)

    def __init__(self, compute: Callable[[str], _V]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, key: str) -> _V:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        value = self[key] = self._compute(key)
        return value


# Texts recur across examples (same names, same products) and labels recur always, so normalisation
# and lowercasing are paid once per distinct string. Gold labels map to None when the paper drops them.
_NORMALIZED: _Memo[str] = _Memo(normalize.__wrapped__)
_GOLD_LABEL: _Memo[str | None] = _Memo(lambda label: None if is_dropped_label(label) else paper_label(label))
_PRED_LABEL: _Memo[str] = _Memo(paper_label)


def clear_caches() -> None:
    """Forget every memoised normalisation (for benchmarks of a cold start, and for tests)."""
    normalize.cache_clear()
    is_dropped_label.cache_clear()
    for memo in (_NORMALIZED, _GOLD_LABEL, _PRED_LABEL):
        memo.clear()


def _paper_match(
    gold: Iterable[Mention], pred: Iterable[Mention]
) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str]]]:
    norm, gold_label, pred_label = _NORMALIZED, _GOLD_LABEL, _PRED_LABEL
    g = {(norm[e.text], label) for e in gold if (label := gold_label[e.label]) is not None}
    p = {(norm[e.text], pred_label[e.label]) for e in pred}
    return g, p, g & p


_SpanKey = tuple[int, int, str]


def _strict_match(
    gold: Sequence[Entity], pred: Iterable[Entity | Mention]
) -> tuple[Sequence[_SpanKey], Sequence[_SpanKey], Iterable[_SpanKey]]:
    g = [(e.start, e.end, e.label) for e in gold]
    p = [(e.start, e.end, e.label) if isinstance(e, Entity) else (_NO_SPAN, _NO_SPAN, e.label) for e in pred]
    gs, ps = set(g), set(p)
    # Duplicates are rare; while there are none, multiset intersection is set intersection, and sets
    # are several times cheaper than Counter arithmetic.
    if len(gs) == len(g) and len(ps) == len(p):
        return g, p, gs & ps
    return g, p, (Counter(g) & Counter(p)).elements()


def _matcher(mode: Mode) -> Any:
    if mode == "paper":
        return _paper_match
    if mode == "strict":
        return _strict_match
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")


def _per_label(gold: Iterable[Any], pred: Iterable[Any], tp: Iterable[Any]) -> dict[str, PRF]:
    n_gold = Counter(map(_label_of, gold))
    n_pred = Counter(map(_label_of, pred))
    n_tp = Counter(map(_label_of, tp))
    return {label: PRF(n_tp[label], n_pred[label], n_gold[label]) for label in sorted(n_gold | n_pred)}


def example_counts(gold: Sequence[Entity], pred: Sequence[Entity | Mention], mode: Mode) -> dict[str, PRF]:
    """One example's counts per label (paper mode: lowercased labels, dropped labels gone from gold)."""
    g, p, tp = _matcher(mode)(gold, pred)
    return _per_label(g, p, tp)


def f1_score(
    gold: Sequence[Entity],
    pred: Sequence[Entity | Mention],
    mode: Mode = "paper",
    *,
    empty_match: float = 1.0,
) -> float:
    """One example's F1; ``empty_match`` when there is nothing to find and nothing was predicted.

    "Nothing" is judged after the mode's own rules: in paper mode gold holding only catch-all labels
    is empty, while a prediction is never empty once it names anything.
    """
    g, p, tp = _matcher(mode)(gold, pred)
    if not g and not p:
        return empty_match
    return PRF(sum(1 for _ in tp), len(p), len(g)).f1


# --- corpus scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetScores:
    micro: PRF
    per_label: dict[str, PRF]
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.micro.to_dict(),
            "support": self.micro.n_gold,
            "examples": self.examples,
            "per_label": _labels_dict(self.per_label),
        }


@dataclass(frozen=True)
class Report:
    mode: Mode
    micro: PRF
    per_dataset: dict[str, DatasetScores]
    per_label: dict[str, PRF]
    average_f1: float

    @property
    def released(self) -> dict[str, Any]:
        """The numbers the released ``evaluate.py`` prints and stores, in percent: each dataset's F1 rounded to
        two decimals (``round(f1 * 100, 2)``), and its "Average", the mean of those ROUNDED values rounded again
        (0 with no datasets, where the released code divides by zero)."""
        per_dataset = {name: round(d.micro.f1 * 100, 2) for name, d in self.per_dataset.items()}
        average = round(sum(per_dataset.values()) / len(per_dataset), 2) if per_dataset else 0.0
        return {"per_dataset": per_dataset, "average": average}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ratios as floats in [0, 1], per-dataset and per-label entries sorted by name;
        ``released``: the released evaluation's rounded percentages (``Report.released``)."""
        return {
            "mode": self.mode,
            "micro": self.micro.to_dict(),
            "per_dataset": {name: self.per_dataset[name].to_dict() for name in sorted(self.per_dataset)},
            "average_f1": self.average_f1,
            "released": self.released,
            "per_label": _labels_dict(self.per_label),
        }


def _labels_dict(per_label: dict[str, PRF]) -> dict[str, dict[str, float | int]]:
    return {label: {**prf.to_dict(), "support": prf.n_gold} for label, prf in sorted(per_label.items())}


class _Tally:
    """One dataset's running counts.

    The hot loop appends labels to flat lists (C-level ``extend``) and folds them into Counters every
    ``_FOLD`` examples: memory stays bounded and no Counter call or PRF object is paid per example.
    Labels rather than whole keys, because strings are invisible to the garbage collector, which
    otherwise spends a measurable share of the run walking the pending tuples.
    """

    __slots__ = ("examples", "gold", "n_gold", "n_pred", "n_tp", "pred", "tp")
    _FOLD = 1 << 14  # a power of two: the loop tests it with a mask

    def __init__(self) -> None:
        self.examples = 0
        self.gold: list[str] = []
        self.pred: list[str] = []
        self.tp: list[str] = []
        self.n_gold: Counter[str] = Counter()
        self.n_pred: Counter[str] = Counter()
        self.n_tp: Counter[str] = Counter()

    def fold(self) -> None:
        self.n_gold.update(self.gold)
        self.n_pred.update(self.pred)
        self.n_tp.update(self.tp)
        self.gold.clear()
        self.pred.clear()
        self.tp.clear()

    def scores(self) -> DatasetScores:
        self.fold()
        labels = sorted(self.n_gold.keys() | self.n_pred.keys())
        per_label = {lab: PRF(self.n_tp[lab], self.n_pred[lab], self.n_gold[lab]) for lab in labels}
        micro = PRF(self.n_tp.total(), self.n_pred.total(), self.n_gold.total())
        return DatasetScores(micro=micro, per_label=per_label, examples=self.examples)


def score(pairs: Iterable[tuple[NERExample, Sequence[Entity | Mention]]], mode: Mode = "paper") -> Report:
    """Score (gold example, predicted entities) pairs: micro, per-dataset, per-label and average F1."""
    match = _matcher(mode)
    tallies: dict[str, _Tally] = {}
    for example, pred in pairs:
        name = example.source or DEFAULT_DATASET
        tally = tallies.get(name)
        if tally is None:
            tally = tallies[name] = _Tally()
        g, p, tp = match(example.entities, pred)
        tally.examples += 1
        tally.gold.extend(map(_label_of, g))
        tally.pred.extend(map(_label_of, p))
        tally.tp.extend(map(_label_of, tp))
        if not tally.examples & (_Tally._FOLD - 1):
            tally.fold()

    per_dataset = {name: tallies[name].scores() for name in sorted(tallies)}
    micro = sum((d.micro for d in per_dataset.values()), PRF())
    per_label: dict[str, PRF] = {}
    for d in per_dataset.values():
        for label, prf in d.per_label.items():
            per_label[label] = per_label.get(label, PRF()) + prf
    per_label = dict(sorted(per_label.items()))
    average_f1 = sum(d.micro.f1 for d in per_dataset.values()) / len(per_dataset) if per_dataset else 0.0
    return Report(mode=mode, micro=micro, per_dataset=per_dataset, per_label=per_label, average_f1=average_f1)
