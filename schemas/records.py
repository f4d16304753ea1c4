"""Dataset records: what flows between stages, one JSON object per line of a shard.

Offsets are character offsets into ``text`` (Python string indices, end exclusive): an entity is valid
only where ``text[start:end] == entity.text``. Records that carry a passage check that on construction,
so a record that made it into a shard is grounded by construction.

Usage::

    ex = NERExample(id="n1", text="Ada Lovelace met Babbage.", labels=["person"],
                    entities=[Entity(text="Ada Lovelace", label="person", start=0, end=12)])
    ex.model_dump_json()        # one JSONL line
    NERExample.model_validate_json(line)
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal, Self

from pydantic import Field, NonNegativeInt, model_validator

from schemas.base import Name, Record, Seq

SCHEMA_VERSION: Literal[1] = 1

Score = Annotated[float, Field(ge=0, le=10)]


class Mention(Record):
    """An entity as a model states it: surface text and type, no position (yet).

    The text may be empty: a model that answers ``"person": [""]`` has predicted something, and the paper's
    metric counts it (``tasks.parse`` keeps such mentions only when asked to, for evaluation)."""

    text: Annotated[str, Field(min_length=0)]  # a length constraint makes pydantic refuse lone surrogates
    label: Name


class Entity(Mention):
    """A mention grounded in its passage: never empty."""

    text: Annotated[str, Field(min_length=1)]
    start: NonNegativeInt
    end: NonNegativeInt

    @model_validator(mode="after")
    def _span_matches_length(self) -> Self:
        if self.end - self.start != len(self.text):
            raise ValueError(
                f"span [{self.start}, {self.end}) has length {self.end - self.start} "
                f"but text {self.text!r} has length {len(self.text)}"
            )
        return self


def check_grounded(text: str, entities: tuple[Entity, ...]) -> None:
    for i, e in enumerate(entities):
        if text[e.start : e.end] != e.text:
            raise ValueError(f"entities[{i}]: text[{e.start}:{e.end}] is {text[e.start : e.end]!r}, not {e.text!r}")


class Passage(Record):
    """Raw input for annotation: a passage and, optionally, the entity types to look for.

    Empty text is allowed here so that a raw file with a blank passage loads; stages skip and count it.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Name
    text: str
    labels: Seq[Name] = ()
    source: str = ""

    @model_validator(mode="after")
    def _labels_unique(self) -> Self:
        repeated = sorted(label for label, n in Counter(self.labels).items() if n > 1)
        if repeated:
            raise ValueError(f"labels repeat: {repeated}")
        return self


class NERExample(Passage):
    """A labelled example: gold entities, each of a type in ``labels`` (the example's schema)."""

    entities: Seq[Entity] = ()

    @model_validator(mode="after")
    def _entities_in_text_and_schema(self) -> Self:
        check_grounded(self.text, self.entities)
        schema = set(self.labels)
        for i, e in enumerate(self.entities):
            if e.label not in schema:
                raise ValueError(f"entities[{i}]: label {e.label!r} is not in labels {list(self.labels)}")
        return self


class SamplingParams(Record):
    """Decoding parameters of one LLM request (a subset of the OpenAI/vLLM parameters)."""

    temperature: Annotated[float, Field(ge=0)] = 0.0
    """Sampling temperature; 0 is greedy."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Nucleus sampling: draw from the smallest set of tokens whose probability reaches this."""
    max_tokens: Annotated[int, Field(gt=0)] = 1024
    """Most tokens one completion may have."""
    seed: int | None = None
    """Seed of the server's sampling; ``None``: unseeded."""
    stop: Annotated[Seq[Annotated[str, Field(min_length=1)]], Field(exclude_if=lambda stops: not stops)] = ()
    """Strings that end a completion at their first occurrence, which stays in the text (the OpenAI ``stop``, with
    the string put back). Left out of serialization when empty, so requests without it keep their keys."""


class Generation(Record):
    """Provenance of one LLM completion: what was asked and what came back, never how long it took (a record is
    a function of its inputs and the model's answer, so a rerun, on any backend, writes the same bytes)."""

    model: Name
    sampling: SamplingParams
    request_key: Annotated[str, Field(min_length=1)]
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0
    finish_reason: str | None = None
    reasoning_tokens: Annotated[NonNegativeInt | None, Field(exclude_if=lambda tokens: tokens is None)] = None
    """Of ``completion_tokens``, those spent thinking, when a reasoning budget split the completion into a
    thinking and an answer request (``tasks.budget``); ``None`` otherwise, and then left out of serialization,
    so records without a budget keep their bytes."""


class CoTRecord(Passage):
    """A teacher's annotation of a passage: its reasoning, its entities, and how it was produced.

    ``entities`` are the grounded mentions; ``ungrounded`` those whose text is not in the passage
    (validation rejects records that have any). Labels outside ``labels`` are kept as the teacher
    gave them, for the same reason.
    """

    reasoning: str
    entities: Seq[Entity] = ()
    ungrounded: Seq[Mention] = ()
    completion: str
    parse_error: str | None = None
    teacher: Generation
    passage_id: Annotated[Name | None, Field(exclude_if=lambda passage: passage is None)] = None
    """The passage's id when the teacher was sampled several times per passage (annotate's
    ``samples_per_passage``; ``id`` is then ``<passage id>#<k>``); ``None`` otherwise, and then left out of
    serialization, so records of one sample per passage keep their bytes."""

    @model_validator(mode="after")
    def _entities_grounded(self) -> Self:
        check_grounded(self.text, self.entities)
        return self


class JudgeVerdict(Record):
    """A judge's 0-10 score of one CoT record's reasoning. No score means the reply could not be read."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Name
    score: Score | None
    rationale: str = ""
    completion: str
    parse_error: str | None = None
    judge: Generation

    @model_validator(mode="after")
    def _score_or_reason(self) -> Self:
        if (self.score is None) == (self.parse_error is None):
            raise ValueError("exactly one of score and parse_error must be set")
        return self


class Prediction(Record):
    """A model's answer for one example: the raw completion and/or the entities.

    ``entities`` items are grounded (``Entity``) where the span is known and bare ``Mention``s where
    it is not. As input to ``rner score`` either field may be given alone; a completion without
    entities is parsed then.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Name
    completion: str | None = None
    reasoning: str | None = None
    entities: Seq[Entity | Mention] | None = None
    parse_error: str | None = None
    generation: Generation | None = None

    @model_validator(mode="after")
    def _has_answer(self) -> Self:
        if self.completion is None and self.entities is None:
            raise ValueError("a prediction needs 'entities' or 'completion'")
        return self


RejectReason = Literal[
    "empty_text",  # annotate: nothing to annotate
    "text_too_long",  # annotate: over the configured limit
    "parse_error",  # validate: the completion has no readable answer
    "no_reasoning",  # validate: no reasoning before the answer
    "reasoning_too_long",
    "answer_too_long",
    "too_many_entities",
    "ungrounded_entity",  # validate: an entity text that is not in the passage
    "label_not_in_schema",
    "entity_not_in_reasoning",
    "duplicate_entity",  # the same span listed twice with the same label
    "conflicting_labels",  # the same span listed with two labels
    "no_score",  # judge: the reply has no readable 0-10 score
]


class Rejection(Record):
    """Why a record left the CG pipeline, with every reason that applies (not just the first)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Name
    stage: Name
    reasons: Annotated[Seq[RejectReason], Field(min_length=1)]
    detail: str = ""
