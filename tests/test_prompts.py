"""The NER prompt and the SFT target: built as data, rendered only by a tokenizer's chat template.

The paper instruction is compared byte for byte with the released code's rendering (``released_rner``, a
literal re-implementation of HuiResearch/ReasoningIE's ``rner/prompt.py`` and ``rner/protocol.py``), through a
tokenizer made here, offline, with Qwen3's own chat template (as TRL ships it: no default system prompt,
``enable_thinking`` handled).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import released_rner as released

from schemas import CoTRecord, EvalConfig, GRPOConfig, Mention, NERExample, SFTConfig
from tasks import evaluate
from tasks.parse import parse_completion
from tasks.prompts import (
    ANSWER_ONLY_INSTRUCTION,
    INSTRUCTION,
    OPEN_TYPES,
    PAPER_INSTRUCTION,
    PROMPT_STYLES,
    answer_json,
    assistant_target,
    instruction_template,
    ner_messages,
    paper_answer,
    paper_instruction,
    paper_schema,
    render_prompt,
)

QWEN3_TEMPLATE = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
"""Qwen3's chat template, as TRL keeps it to recognise Qwen3 tokenizers ("Original Qwen3 chat template")."""

SENTENCE = 'Zoë met "Ada Lovelace" at the Göteborg {jazz} café; {{SCHEMA}} stays as written.'
LABELS = ["Person", "location", "MISC", "organisation", " Else ", "musical artist", "N/A"]


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A word-level tokenizer with Qwen3's special tokens and chat template, saved and loaded as a model's is."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|endoftext|>": 3, "<think>": 4, "</think>": 5}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = QWEN3_TEMPLATE
    path = tmp_path_factory.mktemp("qwen3-tokenizer")
    tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


# --- ours -------------------------------------------------------------------------------------------


def test_messages_carry_schema_and_text() -> None:
    [message] = ner_messages("Zoë sang in Göteborg.", ["musical artist", "location"])
    assert message["role"] == "user"
    assert "Entity types: musical artist, location" in message["content"]
    assert "Text: Zoë sang in Göteborg." in message["content"]
    assert OPEN_TYPES in ner_messages("Some text.", [])[0]["content"]
    [answer_only] = ner_messages("Zoë sang in Göteborg.", ["musical artist"], with_cot=False)
    assert "Entity types: musical artist" in answer_only["content"]
    assert "Text: Zoë sang in Göteborg." in answer_only["content"]


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


def test_unknown_prompt_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown prompt 'mine'"):
        ner_messages("t", ["person"], prompt="mine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown prompt 'mine'"):
        assistant_target(None, [], ["person"], prompt="mine")  # type: ignore[arg-type]


# --- the instruction matches the target format ------------------------------------------------------


def _mentions_reasoning(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ("<think>", "</think>", "think", "reason", "step by step"))


@pytest.mark.parametrize("prompt", PROMPT_STYLES)
def test_answer_only_instruction_asks_for_no_reasoning(prompt: Any, qwen3_tokenizer: Any) -> None:
    without = ner_messages(SENTENCE, ["person", "location"], prompt=prompt, with_cot=False)
    with_cot = ner_messages(SENTENCE, ["person", "location"], prompt=prompt, with_cot=True)
    assert not _mentions_reasoning(without[0]["content"])
    # Rendered, too: the chat template adds no reasoning block to the generation prompt.
    assert not _mentions_reasoning(render_prompt(qwen3_tokenizer, without))
    if prompt == "rner":
        content = with_cot[0]["content"]
        assert "<think>" in content and "</think>" in content and "reason" in content
        # No placeholder keys a model could copy as entity types.
        assert "<" not in without[0]["content"] and "label1" not in without[0]["content"]
    else:  # the released instruction, verbatim either way: their models learn to think from the targets
        assert with_cot == without and not _mentions_reasoning(with_cot[0]["content"])


@pytest.mark.parametrize("prompt", PROMPT_STYLES)
def test_sft_prompt_and_target_agree_on_reasoning(prompt: Any) -> None:
    from tasks import sft

    teacher = {"model": "m", "sampling": {}, "request_key": "k"}
    record = CoTRecord(
        id="c", text="Ada Lovelace met Babbage.", labels=["person"], reasoning="Ada Lovelace is a person.",
        entities=[{"text": "Ada Lovelace", "label": "person", "start": 0, "end": 12}], completion="c", teacher=teacher,
    )  # fmt: skip
    trained = sft.sft_example(record, with_cot=True, prompt=prompt)
    answer_only = sft.sft_example(record, with_cot=False, prompt=prompt)
    assert answer_only["prompt"] == ner_messages(record.text, ["person"], prompt=prompt, with_cot=False)
    assert not _mentions_reasoning(answer_only["prompt"][0]["content"])
    assert "<think>" not in answer_only["completion"][0]["content"]
    assert trained["completion"][0]["content"].startswith("<think>\nAda Lovelace is a person.\n</think>\n")
    assert ("<think>" in trained["prompt"][0]["content"]) == (prompt == "rner")


def test_instruction_templates_and_digests() -> None:
    assert instruction_template() == INSTRUCTION
    assert instruction_template(with_cot=False) == ANSWER_ONLY_INSTRUCTION
    assert instruction_template("paper") == instruction_template("paper", with_cot=False) == PAPER_INSTRUCTION
    default = EvalConfig(datasets=["demo:test"])
    assert evaluate.prompt_id(default) == evaluate.PROMPT  # the default keeps its digest
    ids = {
        evaluate.prompt_id(default.model_copy(update=update))
        for update in ({}, {"with_cot": False}, {"prompt": "paper"})
    }
    assert len(ids) == 3


# --- the paper's instruction ------------------------------------------------------------------------


def test_paper_instruction_is_the_released_text() -> None:
    assert PAPER_INSTRUCTION == released.NER_PROMPT
    source = released.released_prompt_source()
    if source is None:
        pytest.skip(f"no mirror of the released repository at {released.MIRROR}")
    namespace: dict[str, Any] = {}
    exec(compile(source, "rner/prompt.py", "exec"), namespace)  # the released file: constants and functions only
    assert namespace["NER_PROMPT"] == PAPER_INSTRUCTION
    assert namespace["build_prompt"]("x", "qwen3") == released.build_prompt("x", "qwen3")


def test_paper_schema_is_processed_as_released() -> None:
    assert paper_schema(LABELS) == released.InputExample(schema=LABELS).schema
    assert paper_schema(LABELS) == ["location", "musical artist", "n/a", "organisation", "person"]
    content = paper_instruction(SENTENCE, LABELS)
    assert '["location", "musical artist", "n/a", "organisation", "person"]' in content
    assert "{{SCHEMA}} stays as written." in content  # replaced before the sentence went in, as released
    assert content == released.InputExample(sentence=SENTENCE, schema=LABELS).to_prompt()


def test_paper_prompt_renders_byte_for_byte_as_the_released_code(qwen3_tokenizer: Any) -> None:
    expected = released.build_prompt(released.InputExample(sentence=SENTENCE, schema=LABELS).to_prompt(), "qwen3")
    ours = render_prompt(qwen3_tokenizer, ner_messages(SENTENCE, LABELS, prompt="paper"))
    assert ours.encode() == expected.encode()
    assert ours.startswith("<|im_start|>user\nYou are an excellent") and ours.endswith("<|im_start|>assistant\n")
    # What the stages ask with: the example's schema without catch-alls first (evaluate, GRPO), same bytes.
    example = NERExample(id="x", text=SENTENCE, labels=[label.strip() for label in LABELS])
    assert render_prompt(qwen3_tokenizer, evaluate.messages(example, prompt="paper")) == expected
    # Thinking on (the template's default) is the released prompt; thinking off would prefill an empty block.
    thinking = qwen3_tokenizer.apply_chat_template(
        ner_messages(SENTENCE, LABELS, prompt="paper"), tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert thinking == expected
    no_thinking = qwen3_tokenizer.apply_chat_template(
        ner_messages(SENTENCE, LABELS, prompt="paper"),
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert no_thinking == expected + "<think>\n\n</think>\n\n"


def test_grpo_asks_with_the_configured_instruction() -> None:
    from tasks import grpo

    example = NERExample(id="x", text=SENTENCE, labels=["person", "MISC"])
    assert grpo.grpo_example(example, prompt="paper")["prompt"] == [
        {"role": "user", "content": released.InputExample(sentence=SENTENCE, schema=["person"]).to_prompt()}
    ]
    assert grpo.grpo_example(example)["prompt"] == ner_messages(SENTENCE, ["person"])


def test_paper_presets_ask_with_the_paper_instruction() -> None:
    assert SFTConfig.preset("paper").prompt == "paper"
    assert GRPOConfig.preset("paper").prompt == "paper"
    assert EvalConfig.preset("paper").prompt == "paper"  # what `rner eval --preset paper` runs
    assert SFTConfig.preset("smoke").prompt == GRPOConfig.preset("smoke").prompt == "rner"
    assert EvalConfig(datasets=["demo:test"]).prompt == "rner"


def test_paper_target_is_the_released_completion() -> None:
    mentions = [
        Mention(text="Zoë", label="Musical Artist"),
        Mention(text=" Göteborg ", label="location"),
        Mention(text="Ada Lovelace", label="musical artist"),
    ]
    spans = [released.Span(m.text, m.label) for m in mentions]
    cot = "Zoë sings; Göteborg is a city.\n"
    reference = released.InputExample(entities=spans, cot=cot)
    assert assistant_target(cot, mentions, ["musical artist", "location"], prompt="paper") == reference.to_completion(
        add_cot=True
    )
    assert assistant_target(None, mentions, ["person"], prompt="paper") == reference.to_completion(add_cot=False)
    assert paper_answer(mentions) == (
        '{\n  "entities": {\n    "musical artist": [\n      "Zoë",\n      "Ada Lovelace"\n    ],\n'
        '    "location": [\n      "Göteborg"\n    ]\n  }\n}'
    )
    assert paper_answer([]) == '{\n  "entities": {}\n}'


def test_released_answers_parse_with_the_right_labels() -> None:
    parsed = parse_completion('{"entities": {"person": ["x"]}}')
    assert parsed.ok and parsed.mentions == (Mention(text="x", label="person"),)
    spans = [released.Span("Ada Lovelace", "person"), released.Span("London", "location")]
    completion = released.InputExample(entities=spans, cot="Ada is a person.").to_completion(add_cot=True)
    parsed = parse_completion(completion)
    assert parsed.ok and parsed.reasoning == "Ada is a person."
    assert parsed.mentions == (Mention(text="Ada Lovelace", label="person"), Mention(text="London", label="location"))
    # What the released model writes when nothing is found, and the placeholder keys it must not copy.
    assert parse_completion('<think>\nNone.\n</think>\n{\n  "entities": {}\n}').mentions == ()


def test_paper_prompt_renders_with_any_chat_template(tmp_path: Path) -> None:
    """The project's rule holds for the paper instruction too: the tokenizer's template, whatever it is."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[bot]"
    rendered = render_prompt(tokenizer, ner_messages("Ada.", ["person"], prompt="paper"))
    assert rendered == f"[user]{paper_instruction('Ada.', ['person'])}[bot]"


def test_the_released_source_line(qwen3_tokenizer: Any) -> None:
    """The released 8B SFT config's ``add_source: true``: the prompt names the example's dataset first."""
    from tasks import sft

    reference = released.InputExample(sentence=SENTENCE, schema=LABELS, source="CoNLL 2003")
    content = paper_instruction(SENTENCE, LABELS, source="CoNLL 2003")
    assert content == reference.to_prompt(add_source=True)
    assert content.startswith("This sentence is from CoNLL 2003 dataset.\n\nYou are an excellent")
    rendered = render_prompt(qwen3_tokenizer, ner_messages(SENTENCE, LABELS, prompt="paper", source="CoNLL 2003"))
    assert rendered == released.build_prompt(reference.to_prompt(add_source=True), "qwen3")
    with pytest.raises(ValueError, match="only the paper instruction names the dataset"):
        ner_messages(SENTENCE, LABELS, source="CoNLL 2003")

    record = NERExample(id="x", text=SENTENCE, labels=["person"], source="CoNLL 2003")
    row = sft.sft_example(record, with_cot=False, prompt="paper", add_source=True)
    assert row["prompt"][0]["content"] == paper_instruction(SENTENCE, ["person"], source="CoNLL 2003")
    no_source = record.model_copy(update={"source": ""})  # a record without one: no line
    assert sft.sft_example(no_source, with_cot=False, prompt="paper", add_source=True)["prompt"] == ner_messages(
        SENTENCE, ["person"], prompt="paper"
    )
    assert SFTConfig.preset("paper").add_source and not SFTConfig.preset("paper-1.7b").add_source
    with pytest.raises(ValueError, match="add_source: the source line belongs to the paper instruction"):
        SFTConfig(dataset="d", add_source=True)


def test_extract_asks_with_the_configured_instruction() -> None:
    from tasks.extract import ExtractError, Extractor

    assert Extractor("default").messages("Ada.", ["person"]) == ner_messages("Ada.", ["person"])
    paper = Extractor("default", prompt="paper")
    assert paper.messages("Ada.", ["person"]) == ner_messages("Ada.", ["person"], prompt="paper")
    answer_only = Extractor("default", with_cot=False).messages("Ada.", ["person"])
    assert not _mentions_reasoning(answer_only[0]["content"])
    with pytest.raises(ExtractError, match="unknown prompt 'mine'"):
        Extractor("default", prompt="mine")  # type: ignore[arg-type]
