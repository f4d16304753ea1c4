"""The NER instruction as chat messages, rendered by the model's own chat template.

One prompt serves annotation (the teacher), training (SFT/GRPO) and evaluation, so a model is always
asked the same way. The answer format is the paper's: ``{"entities": {"<type>": ["<text>", ...]}}``,
after the reasoning in ``<think>...</think>``.

Usage::

    messages = ner_messages("Ada Lovelace met Charles Babbage.", ["person", "location"])
    prompt = render_prompt(tokenizer, messages)          # the tokenizer's chat template, no hand-written tags
    target = assistant_target(reasoning, entities, labels)   # what SFT teaches the model to answer
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from schemas import Mention, sha256_hex

Message = dict[str, str]

INSTRUCTION = """\
Extract the named entities from the text below.

Entity types: {types}

Text: {text}

First reason step by step inside <think> and </think>: go through the text, consider each candidate \
span, and decide whether it is an entity and which type it has. Then answer with JSON only, in the form \
{{"entities": {{"<entity type>": ["<entity text>", ...]}}}}, with one key per entity type and each entity \
copied exactly as it appears in the text."""

OPEN_TYPES = "any (name each type with a short lowercase noun phrase)"

TEACHER_GUIDANCE = """

Your answer will teach a smaller model to reason, so make the reasoning explicit: quote every entity you \
extract exactly as it is written in the text and say why it has its type, and mention spans you considered \
and rejected."""

JUDGE_INSTRUCTION = """\
You are reviewing the reasoning an annotator wrote while extracting named entities from a text.

Text: {text}

Entity types: {types}

Annotator's reasoning:
{reasoning}

Annotator's entities: {entities}

Rate the reasoning from 0 to 10 for logical coherence (each step follows from the text and from the \
previous steps) and factual accuracy (what it says about the text is true, and it supports exactly the \
extracted entities with the right types). 10 means flawless; 0 means unrelated or wrong. Write one or \
two sentences of justification, then end with a final line of the form "Score: N"."""


def ner_messages(text: str, labels: Sequence[str]) -> list[Message]:
    """The user turn asking for entities of ``labels`` in ``text`` (any types when ``labels`` is empty)."""
    types = ", ".join(labels) if labels else OPEN_TYPES
    return [{"role": "user", "content": INSTRUCTION.format(types=types, text=text)}]


def teacher_messages(text: str, labels: Sequence[str]) -> list[Message]:
    """The annotation request: the NER instruction plus guidance that makes the reasoning teachable."""
    [message] = ner_messages(text, labels)
    return [{"role": "user", "content": message["content"] + TEACHER_GUIDANCE}]


def judge_messages(text: str, labels: Sequence[str], reasoning: str, mentions: Iterable[Mention]) -> list[Message]:
    """The judge's request to score one annotation's reasoning 0-10."""
    types = ", ".join(labels) if labels else OPEN_TYPES
    entities = json.dumps([{"text": m.text, "label": m.label} for m in mentions], ensure_ascii=False)
    content = JUDGE_INSTRUCTION.format(text=text, types=types, reasoning=reasoning.strip(), entities=entities)
    return [{"role": "user", "content": content}]


def prompt_digest(*templates: str) -> str:
    """A short hash of prompt templates: part of output addresses and dataset cards."""
    return sha256_hex("\x00".join(templates))[:16]


def answer_json(mentions: Iterable[Mention], labels: Sequence[str]) -> str:
    """The paper's answer object: every schema label present, mentions in the order given."""
    grouped: dict[str, list[str]] = {label: [] for label in labels}
    for m in mentions:
        grouped.setdefault(m.label, []).append(m.text)
    return json.dumps({"entities": grouped}, ensure_ascii=False)


def assistant_target(reasoning: str | None, mentions: Iterable[Mention], labels: Sequence[str]) -> str:
    """The assistant turn SFT trains on: reasoning then answer, or the answer alone (``reasoning=None``)."""
    answer = answer_json(mentions, labels)
    return answer if reasoning is None else f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"


def render_prompt(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
    """Messages → prompt text via the tokenizer's chat template (fails loudly if it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
