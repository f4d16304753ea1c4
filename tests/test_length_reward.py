"""The length-aware GRPO reward (tasks.rewards.length_reward) against hand-computed groups, and its wiring."""

from __future__ import annotations

import json

import pytest

from schemas import Entity, GRPOConfig, NERExample
from tasks import grpo
from tasks.rewards import length_reward

TEXT = "Ada Lovelace met Charles Babbage in London."
ADA = Entity(text="Ada Lovelace", label="person", start=0, end=12)
LONDON = Entity(text="London", label="location", start=36, end=42)
ONE = NERExample(id="one", text=TEXT, labels=("person", "location"), entities=(ADA,)).model_dump_json()
TWO = NERExample(id="two", text=TEXT, labels=("person", "location"), entities=(ADA, LONDON)).model_dump_json()
RIGHT = json.dumps({"entities": {"person": ["Ada Lovelace"], "location": []}})
BOTH = json.dumps({"entities": {"person": ["Ada Lovelace"], "location": ["London"]}})
WRONG = json.dumps({"entities": {"person": ["Charles Babbage"], "location": []}})


def tokens(n: int) -> list[int]:
    return list(range(n))


def test_only_completions_at_least_as_good_as_the_median_pay_for_length() -> None:
    # Group ONE: F1s 1, 1, 1, 0 (median 1). The three right ones are 10, 20 and 30 tokens long: penalties
    # -(10-10)/20 = 0, -(20-10)/20 = -0.5, -(30-10)/20 = -1. The wrong one, however short, gets 0.
    # Group TWO, interleaved: RIGHT has F1 2/3 (P 1, R 1/2), BOTH 1, WRONG 0: median 2/3, so RIGHT (8 tokens)
    # and BOTH (40) are measured: 0 and -(40-8)/(40-8) = -1; WRONG (2 tokens) gets 0.
    completions = [RIGHT, RIGHT, BOTH, RIGHT, RIGHT, WRONG, WRONG]
    examples = [ONE, ONE, TWO, ONE, TWO, ONE, TWO]
    lengths = [10, 20, 40, 30, 8, 5, 2]
    rewards = length_reward(completions, example=examples, completion_ids=[tokens(n) for n in lengths])
    assert rewards == pytest.approx([0.0, -0.5, -1.0, -1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("completions", "lengths", "expected"),
    [
        ([RIGHT, RIGHT, WRONG], [12, 12, 3], [0.0, 0.0, 0.0]),  # the good ones are equally long
        ([RIGHT], [50], [0.0]),  # a group of one
        ([WRONG, WRONG], [4, 90], [0.0, -1.0]),  # equally bad is equally good: both at the median
    ],
)
def test_small_groups(completions: list[str], lengths: list[int], expected: list[float]) -> None:
    ids = [tokens(n) for n in lengths]
    assert length_reward(completions, example=[ONE] * len(completions), completion_ids=ids) == expected


def test_the_paper_preset_has_no_length_reward_and_a_weight_adds_it() -> None:
    paper = GRPOConfig.preset("paper")
    assert paper.length_reward_weight == 0.0
    assert len(grpo.reward_functions(paper)) == 2 and grpo.reward_weights(paper) == [10.0, 1.0]
    weighted = GRPOConfig.preset("paper", length_reward_weight=0.5)
    f1, _, length = grpo.reward_functions(weighted)
    assert grpo.reward_weights(weighted) == [10.0, 1.0, 0.5]
    # The length reward scores F1 as the F1 reward does (the released empty-gold F1 of 0 in the paper preset).
    empty = NERExample(id="e", text=TEXT, labels=("person",)).model_dump_json()
    nothing = json.dumps({"entities": {"person": []}})
    assert f1([nothing, BOTH], example=[empty, empty]) == [0.0, 0.0]
    assert length([nothing, BOTH], example=[empty, empty], completion_ids=[tokens(3), tokens(9)]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="length_reward_weight"):
        GRPOConfig.preset("paper", length_reward_weight=-1)
