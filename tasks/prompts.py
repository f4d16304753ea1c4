"""The NER instruction as chat messages, rendered by the model's own chat template.

One prompt serves annotation (the teacher), training (SFT/GRPO) and evaluation, so a model is always
asked the same way. Two instructions, chosen by the stage configs' ``prompt`` field:

- ``rner`` (the default): ours. It names the entity types and the text and says what the answer looks
  like. When the model is to reason (``with_cot``) it asks for the reasoning inside ``<think>`` tags
  first; for a model trained on answers alone (``with_cot: false``) it asks for the answer alone, so the
  instruction never describes a format its training targets do not have. The answer is
  ``{"entities": {"<type>": ["<text>", ...]}}`` with every type of the schema, in schema order.
- ``paper``: the authors' released instruction (``NER_PROMPT`` of ``rner/prompt.py`` in
  HuiResearch/ReasoningIE), verbatim: the schema as a JSON list (lowercased, sorted, catch-all labels left
  out, as their ``InputExample.to_prompt`` does), an output-format example with ``label1``/``x1``
  placeholders, the sentence. It says nothing of reasoning, with or without it: their models learn to
  think from the SFT targets alone. Its SFT answer is their ``to_completion``: only the types that have
  entities, lowercased, as JSON indented by two spaces, after the reasoning in ``<think>`` tags when
  trained with reasoning. Use it to evaluate the authors' checkpoints (trained with it) and to reproduce
  their training.

Ours stays the default because it asks for exactly what the model is trained to give (the reasoning, or
none), lists every type in the answer (an empty list is an explicit "none of these"), and has no
placeholder keys for a model to copy: small models trained on little data answered the paper's with
``{"entities": {"label1": [], ...}}``.

Either is plain text in one user turn, rendered by the tokenizer's chat template (``render_prompt``),
never by a hand-written template. For a Qwen3 tokenizer that is byte for byte the released
``build_prompt(prompt, "qwen3")`` (tests/test_prompts.py checks it).

Usage::

    messages = ner_messages("Ada Lovelace met Charles Babbage.", ["person", "location"])
    messages = ner_messages(text, labels, prompt="paper")     # the released instruction
    messages = ner_messages(text, labels, with_cot=False)     # a model trained on answers alone
    messages = ner_messages(text, labels, budget=128)         # "... Think for at most 128 tokens." (L1 training)
    prompt = render_prompt(tokenizer, messages)          # the tokenizer's chat template, no hand-written tags
    target = assistant_target(reasoning, entities, labels)   # what SFT teaches the model to answer
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from schemas import Mention, sha256_hex
from schemas.configs import PromptStyle
from tasks.metrics import is_dropped_label

Message = dict[str, str]

PROMPT_STYLES: tuple[PromptStyle, ...] = ("rner", "paper")
NO_PLACE_FOR_DEFINITIONS = "the paper instruction has no place for entity-type definitions"
"""Why ``paper`` prompts refuse entity-type definitions (its released instruction has no slot for them)."""

INSTRUCTION = """\
Extract the named entities from the text below.

Entity types: {types}

Text: {text}

First reason step by step inside <think> and </think>: go through the text, consider each candidate \
span, and decide whether it is an entity and which type it has. Then answer with JSON only, in the form \
{{"entities": {{"<entity type>": ["<entity text>", ...]}}}}, with one key per entity type and each entity \
copied exactly as it appears in the text."""
"""Ours, for a model that reasons before it answers (``with_cot``)."""

ANSWER_ONLY_INSTRUCTION = """\
Extract the named entities from the text below.

Entity types: {types}

Text: {text}

Answer with one JSON object and nothing else. Its only key is "entities", which maps each entity type \
above, in the order given, to the list of the entities of that type, each copied exactly as it appears in \
the text; a type the text does not contain maps to an empty list."""
"""Ours, for a model trained on answers alone (``with_cot: false``): nothing about reasoning, and no
placeholder keys to copy."""

PAPER_INSTRUCTION = """
You are an excellent information extraction assistant. Please extract the corresponding entities from the following sentence based on the provided schema and return them in JSON format.

Note:
1) The schema specifies the list of entity types that can be extracted;
2) Only extract entities that are included in the schema.

Schema：
{{SCHEMA}}

Output format:
{
  "entities": {
    "label1": [
      "x1",
      "x2"
    ],
    "label2": [
      "x3"
    ]
  }
}

Sentence:
{{SENTENCE}}
"""  # noqa: E501 - the released text, byte for byte (its colon after "Schema" is the full-width U+FF1A)
"""The released ``NER_PROMPT``. ``{{SCHEMA}}`` and ``{{SENTENCE}}`` are replaced in that order and the
result stripped, as their ``InputExample.to_prompt`` does (``paper_instruction``)."""

OPEN_TYPES = "any (name each type with a short lowercase noun phrase)"

BUDGET_STATEMENT = "\n\nThink for at most {budget} tokens."
"""The length budget stated at the end of the user turn (L1/LCPO, Aggarwal & Welleck 2025: "Think for N tokens."),
for a model trained to keep to it (GRPO ``target_length``)."""

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


def instruction_template(prompt: PromptStyle = "rner", *, with_cot: bool = True) -> str:
    """The instruction text before the schema and text go in: what a prompt digest is taken of."""
    if prompt == "paper":
        return PAPER_INSTRUCTION
    if prompt == "rner":
        return INSTRUCTION if with_cot else ANSWER_ONLY_INSTRUCTION
    raise ValueError(f"unknown prompt {prompt!r} (known: {', '.join(PROMPT_STYLES)})")


def ner_messages(
    text: str,
    labels: Sequence[str],
    *,
    prompt: PromptStyle = "rner",
    with_cot: bool = True,
    source: str | None = None,
    definitions: Mapping[str, str] | None = None,
    budget: int | None = None,
) -> list[Message]:
    """The user turn asking for entities of ``labels`` in ``text`` (any types when ``labels`` is empty).

    ``with_cot``: whether the model is to reason before it answers (ours asks for it or not; the paper's
    instruction is the same either way). ``source``: the paper instruction's optional first line naming the
    dataset (the released ``add_source``). ``definitions``: a one-line meaning for some of the ``labels``,
    listed under them in ours ("What the types mean:"); the paper's instruction has no place for them.
    ``budget``: tokens the model may think, stated at the end (``BUDGET_STATEMENT``); needs ``with_cot``."""
    if budget is not None and not with_cot:
        raise ValueError("budget: a model asked to answer alone (with_cot false) has no thinking to budget")
    statement = "" if budget is None else BUDGET_STATEMENT.format(budget=budget)
    if prompt == "paper":
        if definitions:
            raise ValueError(f"definitions: {NO_PLACE_FOR_DEFINITIONS}")
        return [{"role": "user", "content": paper_instruction(text, labels, source=source) + statement}]
    if source is not None:
        raise ValueError("source: only the paper instruction names the dataset (the released add_source)")
    template = instruction_template(prompt, with_cot=with_cot)
    types = ", ".join(labels) if labels else OPEN_TYPES
    if definitions:
        types += "\n\nWhat the types mean:" + "".join(
            f"\n- {label}: {' '.join(definitions[label].split())}" for label in labels if label in definitions
        )
    return [{"role": "user", "content": template.format(types=types, text=text) + statement}]


def paper_schema(labels: Iterable[str]) -> list[str]:
    """The schema as the released code puts it in the prompt (``InputExample.process_schema``): each label
    lowercased and stripped, sorted, blank and catch-all labels left out (repeats kept)."""
    return [label for label in sorted(label.lower().strip() for label in labels) if not is_dropped_label(label)]


def paper_instruction(text: str, labels: Sequence[str], *, source: str | None = None) -> str:
    """The released instruction for one sentence (``InputExample.to_prompt``); with ``source``, as with
    ``add_source``: first a line "This sentence is from <source> dataset." and a blank line."""
    prompt = PAPER_INSTRUCTION.replace("{{SCHEMA}}", json.dumps(paper_schema(labels), ensure_ascii=False))
    prompt = prompt.replace("{{SENTENCE}}", text)
    if source is not None:
        prompt = f"This sentence is from {source} dataset.\n\n" + prompt.strip()
    return prompt.strip()


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


ANSWER_STOPS: tuple[str, ...] = ("}}", "}\n}")
"""Where an answer object closes: ours with ``}}`` (``answer_json``), the paper's with ``}\\n}`` (``paper_answer``,
indented). Generation stops there (``SamplingParams.stop``) instead of running on to ``max_tokens`` when a model
keeps writing after its answer. Neither occurs inside an answer of either format; a model that writes one in its
reasoning is cut there (its answer is then a parse error, shown with the raw text)."""


def answer_json(mentions: Iterable[Mention], labels: Sequence[str]) -> str:
    """Our answer object: every schema label present, mentions in the order given."""
    grouped: dict[str, list[str]] = {label: [] for label in labels}
    for m in mentions:
        grouped.setdefault(m.label, []).append(m.text)
    return json.dumps({"entities": grouped}, ensure_ascii=False)


def paper_answer(mentions: Iterable[Mention]) -> str:
    """The released answer (``InputExample.to_completion``): texts stripped, grouped under their lowercased,
    stripped label in order of first appearance, only labels that have entities, indented by two spaces."""
    grouped: dict[str, list[str]] = {}
    for m in mentions:
        grouped.setdefault(m.label.lower().strip(), []).append(m.text.strip())
    return json.dumps({"entities": grouped}, ensure_ascii=False, indent=2)


def assistant_target(
    reasoning: str | None, mentions: Iterable[Mention], labels: Sequence[str], *, prompt: PromptStyle = "rner"
) -> str:
    """The assistant turn SFT trains on: reasoning then answer, or the answer alone (``reasoning=None``).

    ``rner``: ``<think>``, the stripped reasoning, ``</think>``, a blank line, ``answer_json``. ``paper``: the
    released ``to_completion(add_cot=True)``: the reasoning as given between the tags, one line break, then
    ``paper_answer``."""
    if prompt == "paper":
        answer = paper_answer(mentions)
        return answer if reasoning is None else f"<think>\n{reasoning}\n</think>\n{answer}"
    instruction_template(prompt)  # refuses an unknown style
    answer = answer_json(mentions, labels)
    return answer if reasoning is None else f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"


def render_prompt(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
    """Messages → prompt text via the tokenizer's chat template (fails loudly if it has none). Messages that end
    with an assistant turn are rendered with that turn left open, to be continued (``continue_final_message``,
    as vLLM's request field of that name: budget forcing's answer request)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    if messages and messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
