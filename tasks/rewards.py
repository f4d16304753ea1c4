"""GRPO rewards (RE): how good a completion's answer is, against the example's gold entities.

Two functions, in the form TRL's ``GRPOTrainer`` calls them (one float per completion; the dataset's other
columns arrive as keyword lists). The stage weights them 10 : 1, as the paper does.

- ``f1_reward``: span-level micro F1 of the answer's entities against the gold, in [0, 1], in the paper's
  metric (``tasks.metrics.f1_score``: normalised text, lowercased label, catch-all gold labels dropped).
  An empty mention (``"person": [""]``) counts as a prediction, a wrong one, as in the released code.
  A completion without a readable answer scores 0. When the gold is empty and the answer names nothing,
  the score is ``empty_match``: 1.0 by default (nothing to find, nothing found, which is what the model
  should learn to say), while the paper's released code gives 0.0 there (pass ``empty_match=0.0`` for it).
- ``schema_reward``: 1 when the answer is the paper's shape, ``{"entities": {"<type>": ["<text>", ...]}}``
  (every value a list of strings), and every type it names is in the example's schema (case-insensitively,
  as the metric compares labels); else 0. An example with no schema (open types) accepts any type.
- ``length_reward`` (off unless ``length_reward_weight`` > 0; not in the paper): a length penalty in [-1, 0]
  after Kimi k1.5's, applied only where it cannot cost correctness. Within a group (the completions of one
  example), the completions whose F1 is at least the group's median are penalised by how far their length
  (tokens) exceeds the shortest of them, relative to the longest of them: ``-(len - shortest) / (longest -
  shortest)``; the others, and a group whose good completions are all as long, get 0. So among equally good
  answers the shorter reasoning wins, and a wrong answer never gains by being short. TRL calls a reward with
  one process's share of the generation batch, so with several training processes "the group" is the part of
  it this process generated (the whole group on one process).
- ``target_length_reward`` (off unless ``target_length`` is set; not in the paper): L1/LCPO's (Aggarwal & Welleck
  2025) penalty for missing the budget ``N`` the prompt stated (the ``target_tokens`` column): ``-|N - len|``
  (``exact``) or ``-max(0, len - N)`` (``max``: only the excess), in tokens, weighted per token.

Both length rewards measure a completion as ``token_lengths`` does: the tokens TRL generated for it, the reasoning
and the (short) answer after it, as L1 counts a budget.

Usage::

    example = NERExample(...).model_dump_json()              # the ``example`` column of the RE dataset
    f1_reward([[{"role": "assistant", "content": text}]], example=[example])      # [0.67]
    GRPOTrainer(..., reward_funcs=[partial(f1_reward, empty_match=1.0), schema_reward],
                args=GRPOConfig(reward_weights=[10.0, 1.0], ...))
    length_reward(completions, example=examples, completion_ids=ids)   # [0.0, -0.5, -1.0, 0.0] for one group
    target_length_reward(completion_ids=ids, target_tokens=[64, 64], mode="max")   # [0.0, -36.0] for 50, 100 tokens
"""

from __future__ import annotations

import json
from statistics import median
from typing import Any, Literal

from schemas import NERExample
from tasks.metrics import f1_score, paper_labels
from tasks.parse import parse_completion

Completion = str | list[dict[str, str]]
"""A plain completion, or a conversational one (a list with the assistant's message)."""


def completion_text(completion: Completion) -> str:
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


def token_lengths(completion_ids: list[list[int]]) -> list[int]:
    """The length of each completion, in tokens: those TRL generated for it (``completion_ids``, without padding)."""
    return [len(ids) for ids in completion_ids]


def f1_reward(completions: list[Completion], example: list[str], *, empty_match: float = 1.0, **_: Any) -> list[float]:
    """Micro F1 of each completion's entities against its example's gold (``example``: NERExample JSON)."""
    rewards = []
    for completion, raw in zip(completions, example, strict=True):
        parsed = parse_completion(completion_text(completion), keep_blank=True)  # "type": [""] is a wrong answer
        gold = NERExample.model_validate_json(raw).entities
        rewards.append(f1_score(gold, parsed.mentions, empty_match=empty_match) if parsed.ok else 0.0)
    return rewards


def length_reward(
    completions: list[Completion],
    example: list[str],
    completion_ids: list[list[int]],
    *,
    empty_match: float = 1.0,
    **_: Any,
) -> list[float]:
    """Kimi k1.5's length penalty on the completions at least as good as their group's median (module docs).
    Groups are the completions that share an ``example``; lengths are ``completion_ids``' (TRL passes them)."""
    f1s = f1_reward(completions, example, empty_match=empty_match)
    groups: dict[str, list[int]] = {}
    for i, raw in enumerate(example):
        groups.setdefault(raw, []).append(i)
    rewards = [0.0] * len(completions)
    lengths_of = token_lengths(completion_ids)
    for members in groups.values():
        middle = median(f1s[i] for i in members)
        good = [i for i in members if f1s[i] >= middle]
        lengths = {i: lengths_of[i] for i in good}
        shortest, longest = min(lengths.values()), max(lengths.values())
        if longest > shortest:
            for i, n in lengths.items():
                rewards[i] = -(n - shortest) / (longest - shortest)
    return rewards


def target_length_reward(
    completion_ids: list[list[int]],
    target_tokens: list[int],
    *,
    mode: Literal["exact", "max"] = "exact",
    **_: Any,
) -> list[float]:
    """L1/LCPO: minus the tokens by which each completion misses its prompt's budget (``target_tokens``, a dataset
    column): either way (``exact``), or only over it (``max``)."""
    misses = [n - budget for n, budget in zip(token_lengths(completion_ids), target_tokens, strict=True)]
    return [-float(abs(miss) if mode == "exact" else max(0, miss)) for miss in misses]


def schema_reward(completions: list[Completion], example: list[str], **_: Any) -> list[float]:
    """1.0 for an answer in the paper's shape with every type in the example's schema, else 0.0."""
    rewards = []
    for completion, raw in zip(completions, example, strict=True):
        parsed = parse_completion(completion_text(completion))
        schema = {label.lower() for label in paper_labels(NERExample.model_validate_json(raw).labels)}
        rewards.append(1.0 if parsed.ok and _in_schema(parsed.answer, schema) else 0.0)
    return rewards


def _in_schema(answer: str | None, schema: set[str]) -> bool:
    """``answer`` is ``{"entities": {type: [text, ...]}}`` with every type in ``schema`` (any, when empty)."""
    try:
        value = json.loads(answer or "")
    except ValueError:  # the parser forgives trailing commas; the required shape does not
        return False
    if not isinstance(value, dict) or set(value) != {"entities"} or not isinstance(value["entities"], dict):
        return False
    for label, texts in value["entities"].items():
        if schema and label.strip().lower() not in schema:
            return False
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return False
    return True
