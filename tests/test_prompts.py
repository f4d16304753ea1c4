"""The NER prompt and the SFT target: built as data, rendered only by a tokenizer's chat template."""

from __future__ import annotations

import json

import pytest

from schemas import Mention
from tasks.parse import parse_completion
from tasks.prompts import OPEN_TYPES, answer_json, assistant_target, ner_messages, render_prompt


def test_messages_carry_schema_and_text() -> None:
    [message] = ner_messages("Zoë sang in Göteborg.", ["musical artist", "location"])
    assert message["role"] == "user"
    assert "Entity types: musical artist, location" in message["content"]
    assert "Text: Zoë sang in Göteborg." in message["content"]
    assert OPEN_TYPES in ner_messages("Some text.", [])[0]["content"]


def test_answer_lists_every_schema_label_in_order() -> None:
    mentions = [Mention(text="Zoë", label="musical artist"), Mention(text="Göteborg", label="location")]
    answer = json.loads(answer_json(mentions, ["location", "band", "musical artist"]))
    assert answer == {"entities": {"location": ["Göteborg"], "band": [], "musical artist": ["Zoë"]}}
    assert list(answer["entities"]) == ["location", "band", "musical artist"]


def test_target_with_and_without_reasoning_parses_back() -> None:
    mentions = [Mention(text="Zoë", label="musical artist")]
    with_cot = assistant_target("  Zoë is the singer.  ", mentions, ["musical artist"])
    assert with_cot.startswith("<think>\nZoë is the singer.\n</think>\n\n{")
    without = assistant_target(None, mentions, ["musical artist"])
    assert "<think>" not in without
    for target in (with_cot, without):
        parsed = parse_completion(target)
        assert parsed.ok and parsed.mentions == tuple(mentions)


def test_a_tokenizer_without_chat_template_is_refused() -> None:
    class Bare:
        chat_template = None
        name_or_path = "bare"

    with pytest.raises(ValueError, match="'bare' has no chat template"):
        render_prompt(Bare(), [{"role": "user", "content": "hi"}])
