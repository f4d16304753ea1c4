"""The length-aware GRPO rewards (tasks.rewards.length_reward, target_length_reward) against hand-computed groups,
the budget stated in the prompt (L1/LCPO), and their wiring."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Entity, EvalConfig, GRPOConfig, NERExample, config_hash
from schemas.configs import TargetLength
from tasks import evaluate, grpo
from tasks.prompts import ner_messages
from tasks.rewards import length_reward, target_length_reward
from tasks.settings import Settings
from tasks.store import Published

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


# --- L1/LCPO: the budget stated in the prompt, the distance to it in the reward ------------------------------


def test_target_length_reward_exact_and_max() -> None:
    # Budgets 10, 10, 20, 20; lengths 4, 15, 20, 26. Exact: -|10-4| = -6, -|10-15| = -5, 0, -|20-26| = -6.
    # Max: only the excess: 0 (under), -5, 0 (on it), -6.
    ids = [tokens(n) for n in (4, 15, 20, 26)]
    budgets = [10, 10, 20, 20]
    assert target_length_reward(completion_ids=ids, target_tokens=budgets) == [-6.0, -5.0, 0.0, -6.0]
    assert target_length_reward(completion_ids=ids, target_tokens=budgets, mode="max") == [0.0, -5.0, 0.0, -6.0]


def test_target_length_is_off_in_the_paper_preset_and_weighted_when_set() -> None:
    paper = GRPOConfig.preset("paper")
    assert paper.target_length is None and "target_length" not in paper.hash_payload()
    config = GRPOConfig.preset("paper", target_length={"min_tokens": 64, "max_tokens": 256, "mode": "max"})
    assert grpo.reward_weights(config) == [10.0, 1.0, 0.003]
    *_, reward = grpo.reward_functions(config)
    assert reward(completion_ids=[tokens(70)], target_tokens=[64]) == [-6.0]  # mode max, from the config
    assert config_hash(config) != config_hash(paper)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"target_length": {"min_tokens": 256, "max_tokens": 64}},
            r"target_length\n.*max_tokens 64 is below min_tokens 256",
        ),
        ({"target_length": {"min_tokens": 0, "max_tokens": 64}}, r"target_length\.min_tokens\n"),
        ({"target_length": {"min_tokens": 8, "max_tokens": 64, "mode": "about"}}, r"target_length\.mode\n"),
        (
            {"target_length": {"min_tokens": 8, "max_tokens": 64}, "length_reward_weight": 1.0},
            r"target_length: one length reward at a time",
        ),
        (
            {"target_length": {"min_tokens": 8, "max_tokens": 64}, "with_cot": False},
            r"target_length: with_cot is false",
        ),
    ],
)
def test_bad_target_lengths_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GRPOConfig.preset("smoke", **values)


def test_the_prompt_states_the_budget_drawn_per_example() -> None:
    target = TargetLength(min_tokens=32, max_tokens=256)
    example = NERExample.model_validate_json(ONE)
    row = grpo.grpo_example(example, target=target, seed=7)
    budget = row["target_tokens"]
    assert 32 <= budget <= 256
    assert row["prompt"][-1]["content"].endswith(f"\n\nThink for at most {budget} tokens.")
    # The same example and seed keep their budget; other examples and seeds draw their own.
    assert grpo.grpo_example(example, target=target, seed=7) == row
    draws = {grpo.target_tokens(target, f"ex{i}", 7) for i in range(50)}
    assert len(draws) > 10 and min(draws) >= 32 and max(draws) <= 256
    fixed = grpo.grpo_example(example, target=TargetLength(min_tokens=100, max_tokens=100), prompt="paper")
    assert fixed["target_tokens"] == 100 and fixed["prompt"][-1]["content"].endswith("Think for at most 100 tokens.")
    # Without a target the prompt and the row are as before.
    assert grpo.grpo_example(example) == {"prompt": ner_messages(TEXT, ["person", "location"]), "example": ONE}
    with pytest.raises(ValueError, match="budget: a model asked to answer alone"):
        ner_messages(TEXT, ["person"], with_cot=False, budget=64)


def test_evaluation_can_state_the_budget_as_training_did() -> None:
    stated = EvalConfig(datasets=["demo:test"], reasoning_budget=96, state_budget=True)
    example = NERExample.model_validate_json(ONE)
    [message] = evaluate.config_messages(stated)(example)
    assert message["content"].endswith("Think for at most 96 tokens.")
    plain = stated.model_copy(update={"state_budget": False})
    assert "Think for" not in evaluate.config_messages(plain)(example)[0]["content"]
    assert evaluate.prompt_id(stated) != evaluate.prompt_id(plain)
    with pytest.raises(ValidationError, match="state_budget: give reasoning_budget"):
        EvalConfig(datasets=["demo:test"], state_budget=True)


@pytest.mark.slow
def test_grpo_trains_with_a_stated_target_length(
    sft_model: Published,
    training_data: Any,
    train_settings: Settings,
    log_history: Callable[..., list[dict[str, Any]]],
) -> None:
    store = training_data.store
    config = GRPOConfig.preset(
        "smoke",
        dataset=training_data.re.manifest.address,
        model=f"store:{sft_model.manifest.address}",
        max_steps=1,
        target_length={"min_tokens": 8, "max_tokens": 24, "mode": "max", "weight": 0.05},
    )
    published = grpo.run(config, store, settings=train_settings)
    [step] = [h for h in log_history(store, published) if "reward" in h]
    f1, schema = step["rewards/f1_reward/mean"], step["rewards/schema_reward/mean"]
    target = step["rewards/target_length_reward/mean"]
    assert -48 <= target <= 0  # at most max_completion_length (48) minus the smallest budget over it
    assert step["reward"] == pytest.approx(10 * f1 + schema + 0.05 * target)
