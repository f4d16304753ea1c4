"""GRPO rewards against hand-computed cases: F1 in the paper's metric, the schema check, the empty-gold case."""

from __future__ import annotations

import json
from functools import partial

import pytest

from schemas import Entity, NERExample
from tasks.rewards import f1_reward, schema_reward

TEXT = "Ada Lovelace met Charles Babbage in London."
ADA = Entity(text="Ada Lovelace", label="person", start=0, end=12)
BABBAGE = Entity(text="Charles Babbage", label="person", start=17, end=32)
LONDON = Entity(text="London", label="location", start=36, end=42)


def example(*entities: Entity, labels: tuple[str, ...] = ("person", "location")) -> str:
    return NERExample(id="e", text=TEXT, labels=labels, entities=entities).model_dump_json()


def answer(entities: dict[str, list[str]], reasoning: str = "Ada Lovelace is a person.") -> str:
    return f"<think>{reasoning}</think>\n{json.dumps({'entities': entities})}"


def rewards(completion: str, gold: str, **kwargs: float) -> tuple[float, float]:
    [f1] = f1_reward([completion], example=[gold], **kwargs)
    [schema] = schema_reward([completion], example=[gold])
    return f1, schema


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        # All three found: P = R = 1.
        (
            answer({"person": ["Ada Lovelace", "Charles Babbage"], "location": ["London"]}),
            (ADA, BABBAGE, LONDON),
            (1.0, 1.0),
        ),
        # One of two right, one of two found: P = 1/2, R = 1/2, F1 = 1/2.
        (answer({"person": ["Ada Lovelace"], "location": ["Paris"]}), (ADA, LONDON), (0.5, 1.0)),
        # Two predicted, one right, three gold: P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4.
        (answer({"person": ["Ada Lovelace", "Babbage"], "location": []}), (ADA, BABBAGE, LONDON), (0.4, 1.0)),
        # The paper's normalisation: case, punctuation and articles do not matter; labels compare lowercased.
        (answer({"Person": ["ada lovelace."], "location": ["the London"]}), (ADA, LONDON), (1.0, 1.0)),
        # A type outside the schema: F1 still counts what matches, the schema reward is lost.
        (answer({"person": ["Ada Lovelace"], "city": ["London"]}), (ADA, LONDON), (0.5, 0.0)),
        # Lenient parsing reads a list of objects for F1; it is not the paper's shape, so no schema reward.
        ('[{"text": "Ada Lovelace", "label": "person"}]', (ADA,), (1.0, 0.0)),
        # A string where a list belongs: one mention for F1, not the required shape.
        ('{"entities": {"person": "Ada Lovelace"}}', (ADA,), (1.0, 0.0)),
        # No readable answer: nothing to score.
        ("<think>Ada Lovelace is a person.</think> I am not sure.", (ADA,), (0.0, 0.0)),
        ('{"entities": {"person": ["Ada Lovelace"],}}', (ADA,), (1.0, 0.0)),  # trailing comma: forgiven, not the shape
    ],
)
def test_hand_computed_rewards(completion: str, gold: tuple[Entity, ...], expected: tuple[float, float]) -> None:
    f1, schema = rewards(completion, example(*gold))
    assert (f1, schema) == pytest.approx(expected)


def test_catch_all_gold_labels_are_dropped() -> None:
    gold = example(ADA, Entity(text="London", label="misc", start=36, end=42), labels=("person", "misc"))
    assert rewards(answer({"person": ["Ada Lovelace"]}), gold) == (1.0, 1.0)
    # "misc" is not in the schema the prompt shows (paper_labels drops it), so naming it breaks the schema.
    assert rewards(answer({"person": ["Ada Lovelace"], "misc": ["London"]}), gold) == (0.5 * 2 / 1.5, 0.0)


def test_empty_gold_both_ways() -> None:
    gold = example()
    nothing = answer({"person": [], "location": []}, reasoning="No person or location is named.")
    assert rewards(nothing, gold) == (1.0, 1.0)  # our default: nothing to find, nothing found
    assert rewards(nothing, gold, empty_match=0.0) == (0.0, 1.0)  # the released code's behaviour
    assert rewards('{"entities": {}}', gold) == (1.0, 1.0)
    assert rewards(answer({"person": ["Ada Lovelace"]}), gold) == (0.0, 1.0)  # something where nothing was
    assert rewards("no answer at all", gold) == (0.0, 0.0)  # unreadable is not "nothing found"
    # Gold whose only entity has a catch-all label is empty too.
    misc_only = example(Entity(text="London", label="other", start=36, end=42), labels=("person", "other"))
    assert rewards(answer({"person": []}), misc_only, empty_match=0.0) == (0.0, 1.0)


def test_open_schema_accepts_any_type_and_conversational_completions() -> None:
    gold = example(labels=())  # no schema: any type goes (and such an example carries no gold entities)
    conversational = [{"role": "assistant", "content": answer({"scientist": ["Ada Lovelace"]})}]
    assert f1_reward([conversational], example=[gold]) == [0.0]
    assert schema_reward([conversational], example=[gold]) == [1.0]


def test_batches_and_the_trainer_form() -> None:
    gold = [example(ADA), example(ADA, LONDON)]
    completions = [answer({"person": ["Ada Lovelace"]}), answer({"location": ["London"]})]
    reward = partial(f1_reward, empty_match=0.0)  # as GRPOTrainer calls it, with its extra keyword columns
    assert reward(completions, example=gold, prompts=["p", "p"], trainer_state=None) == pytest.approx([1.0, 2 / 3])
    with pytest.raises(ValueError):
        f1_reward(completions, example=gold[:1])
