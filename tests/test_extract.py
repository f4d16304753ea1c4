"""Extraction: offsets into the original text and long texts in chunks, on a scripted server and on the real one.

The scripted model (tests/fault_server.py) names every occurrence of a few known names in the chunk it is
shown, plus one name that is not there and one mention of a type nobody asked for. That makes the right answer
for any text known: every occurrence of every name, once, at its offsets, however the text was chunked. The
real SmolLM2 is too weak to assert on what it finds; with it the test checks that chunked extraction runs and
that whatever it returns points at the original text.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, ok, sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from schemas import Endpoint, Passage, Prediction
from tasks.cli import app
from tasks.extract import ExtractError, Extractor, load_tokenizer, merge, token_counter
from tasks.jsonl import dump_jsonl, read_jsonl
from tasks.prompts import ner_messages, render_prompt

NAMES = ("Ada Vex", "Bo Lind", "Cyra Ng", "Dmitri Olsen", "Élodie Brun", "Kenji Sato")
CONTEXT, MAX_TOKENS = 400, 64


def chunk_of(prompt: str) -> str:
    return re.search(r"\nText: (.*)\n\nFirst reason step by step", prompt, re.DOTALL).group(1)  # type: ignore[union-attr]


def name_spans(text: str) -> list[tuple[int, int]]:
    return sorted(m.span() for name in NAMES for m in re.finditer(re.escape(name), text))


def names_model(prompt: str) -> str:
    text = chunk_of(prompt)
    found = [text[s:e] for s, e in name_spans(text)]
    answer = {"entities": {"person": [*found, "Zed Nobody"], "city": ["Oslo"]}}
    return f"<think>I see {len(found)} names.</think>\n{json.dumps(answer, ensure_ascii=False)}"


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(sequence(ok(answer=names_model))) as fake:
        yield fake


@pytest.fixture(scope="module")
def extractor(server: FaultServer, default_model: Path) -> Extractor:
    return Extractor(server.endpoint, tokenizer=str(default_model), context_tokens=CONTEXT, max_tokens=MAX_TOKENS)


def assert_names_found_once(text: str, found_entities: tuple) -> None:
    assert [(e.start, e.end) for e in found_entities] == name_spans(text)
    assert all(text[e.start : e.end] == e.text and e.label == "person" for e in found_entities)


def test_a_long_text_is_read_in_overlapping_chunks_and_merged(extractor: Extractor, default_model: Path) -> None:
    days = [
        f"On day {i} {NAMES[i % len(NAMES)]} walked along the harbour and counted {7 * i} boats."
        if i % 3
        else f"Nothing happened on day {i}."
        for i in range(90)
    ]
    text = "\n".join(days[:10]) + "\n\n" + " ".join(days[10:])
    count = token_counter(load_tokenizer(str(default_model)))
    assert count([text])[0] > 3 * CONTEXT
    [found, short, own] = extractor.extract(
        [text, "Bo Lind met Kenji Sato.", Passage(id="p", text="Ada Vex", labels=["Person"])], ["person"]
    )
    assert_names_found_once(text, found.entities)
    assert len(found.chunks) >= 4
    # Names in the overlap of two chunks were found by both, and are returned once.
    assert any(sum(s <= e.start and e.end <= t for s, t in found.chunks) == 2 for e in found.entities)
    for s, t in found.chunks:
        prompt = render_prompt(extractor.tokenizer, ner_messages(text[s:t], ["person"]))
        assert count([prompt])[0] + MAX_TOKENS <= CONTEXT
    assert {m.text for m in found.dropped} == {"Zed Nobody", "Oslo"} and found.failures == ()
    assert len(found.reasoning) == len(found.chunks) and found.reasoning[0].startswith("I see")
    assert [e.text for e in short.entities] == ["Bo Lind", "Kenji Sato"] and short.chunks == ((0, 23),)
    assert [(e.text, e.label) for e in own.entities] == [("Ada Vex", "Person")]  # the label as asked


def test_sentences_and_words_longer_than_a_chunk_are_split_not_truncated(extractor: Extractor) -> None:
    words = [NAMES[i // 40 % len(NAMES)] if i % 40 == 0 else f"w{i}" for i in range(800)]
    text = " ".join(words) + " " + "x" * 3000 + " and finally Cyra Ng"
    [found] = extractor.extract([text], ["person"])
    assert_names_found_once(text, found.entities)
    assert any(set(text[s:t]) == {"x"} for s, t in found.chunks)  # the long word, in pieces
    covered = set().union(*(range(s, t) for s, t in found.chunks))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_an_entity_cut_by_a_chunk_edge_gives_way_to_the_whole_one() -> None:
    text = "Met Ada Vex today. Bo Lind too."
    answers = ['{"person": ["Ada", "Met"]}', '{"person": ["Ada Vex", "Bo Lind", "Lind"]}']
    found = merge(text, ["person"], [(0, 7), (4, 31)], answers)  # the first chunk ends inside "Ada Vex"
    assert [(e.text, e.start) for e in found.entities] == [("Met", 0), ("Ada Vex", 4), ("Bo Lind", 19), ("Lind", 22)]


PIECES = [*NAMES, "the", "harbour", "Oslo", "Dr.", "é", "中文", "1999", "x" * 40, "(", ")", '"', "'s"]


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from([" ", ". ", "\n", ", ", "! ", "  "]))))
    return "".join(piece + sep for piece, sep in parts)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts(), min_size=1, max_size=3))
def test_offsets_always_point_at_the_entity_in_the_original_text(extractor: Extractor, batch: list[str]) -> None:
    for text, found in zip(batch, extractor.extract(batch, ["person"]), strict=True):
        assert_names_found_once(text, found.entities)


def test_an_unreadable_answer_is_an_empty_result_not_an_error(default_model: Path) -> None:
    with FaultServer(sequence(ok(answer=lambda prompt: "I would rather not say."))) as fake:
        extractor = Extractor(fake.endpoint, tokenizer=str(default_model), context_tokens=CONTEXT, max_tokens=16)
        [found] = extractor.extract(["Ada Vex met Bo Lind."], ["person"])
    assert found.entities == () and len(found.failures) == 1 and found.failures[0].startswith("chunk [0, 20): no_json")
    prediction = found.prediction("t1")
    assert prediction.entities == () and prediction.parse_error == found.failures[0]


def test_definitions_go_into_the_prompt_under_their_types(extractor: Extractor, server: FaultServer) -> None:
    text = "Ada Vex met Bo Lind in the hall."
    [plain] = extractor.extract([text], ["person"])
    meanings = {" person ": "a real or\nfictional human being", "city": "not asked for"}
    [defined] = extractor.extract([text], ["person"], definitions=meanings)
    assert defined.entities == plain.entities
    [prompt] = [p for p in server.attempts if "What the types mean:" in p and text in p]
    assert "Entity types: person\n\nWhat the types mean:\n- person: a real or fictional human being\n\nText: " in prompt
    assert "- city:" not in prompt  # only the types asked for
    paper = Extractor(server.endpoint, tokenizer=extractor.tokenizer_ref, context_tokens=CONTEXT, prompt="paper")
    with pytest.raises(ExtractError, match=r"^definitions: the paper instruction has no place"):
        paper.extract([text], ["person"], definitions={"person": "a human"})


def test_a_stated_budget_is_in_the_prompt_of_the_extractor_and_the_service(
    extractor: Extractor, server: FaultServer
) -> None:
    from schemas import ServeConfig
    from tasks.service import make_extractor

    options = {"tokenizer": extractor.tokenizer_ref, "context_tokens": CONTEXT}
    stated = Extractor(server.endpoint, reasoning_budget=16, state_budget=True, **options)
    assert stated.messages("Ada Vex.", ["person"])[-1]["content"].endswith("\n\nThink for at most 16 tokens.")
    forced = Extractor(server.endpoint, reasoning_budget=16, **options)
    assert "Think for" not in forced.messages("A.", ["x"])[-1]["content"]  # budget forcing alone does not state it
    with pytest.raises(ExtractError, match=r"^state_budget: give reasoning_budget"):
        Extractor(server.endpoint, state_budget=True, **options)
    service = ServeConfig(server=server.endpoint, state_budget=True, **options)
    assert "Think for at most 8 tokens." in make_extractor(service, 8).messages("A.", ["x"])[-1]["content"]
    assert "Think for" not in make_extractor(service).messages("A.", ["x"])[-1]["content"]  # a request without one


def test_the_command_line_puts_definitions_from_a_file_into_the_prompt(
    server: FaultServer, default_model: Path, tmp_path: Path
) -> None:
    types = tmp_path / "types.yaml"
    types.write_text("person: a named human being\nlocation: 'a place: city, country or region'\n")
    endpoint: Endpoint = server.endpoint
    text = "Cyra Ng flew home."
    options = ["--base-url", endpoint.base_url, "--model", endpoint.model, "--tokenizer", str(default_model)]
    options += ["--context", str(CONTEXT), "--max-tokens", str(MAX_TOKENS), "--labels", "person,location,city"]
    options += ["--definitions", str(types)]
    result = CliRunner().invoke(app, ["extract", *options, "--text", text])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entities"] == [{"text": "Cyra Ng", "label": "person", "start": 0, "end": 7}]
    [prompt] = [p for p in server.attempts if text in p]
    meanings = "- person: a named human being\n- location: a place: city, country or region\n\nText: "
    assert f"Entity types: person, location, city\n\nWhat the types mean:\n{meanings}" in prompt
    paper = CliRunner().invoke(app, ["extract", *options, "--prompt", "paper", "--text", "Bo Lind rests."])
    assert isinstance(paper.exception, ExtractError), paper.output
    assert str(paper.exception).startswith("--definitions: the paper instruction has no place")
    assert not [p for p in server.attempts if "Bo Lind rests." in p]  # refused before any request


def test_requests_that_cannot_be_served_are_clear_errors(extractor: Extractor, server: FaultServer) -> None:
    with pytest.raises(ExtractError, match="text 0: no entity types"):
        extractor.extract(["Ada Vex", "Bo Lind"], [" ", ""])
    tight = Extractor(server.endpoint, tokenizer=extractor.tokenizer_ref, context_tokens=200, max_tokens=64)
    with pytest.raises(ExtractError, match=r"a context of 200 tokens leaves -?\d+ .*raise the context"):
        tight.extract(["Ada Vex"], ["person"])
    with pytest.raises(ExtractError, match="give `tokenizer`"):
        Extractor(server.endpoint, context_tokens=CONTEXT).extract(["Ada Vex"], ["person"])
    with pytest.raises(ExtractError, match="give `context_tokens`"):
        Extractor(server.endpoint, tokenizer=extractor.tokenizer_ref).extract(["Ada Vex"], ["person"])


def extract_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.extract", *args], capture_output=True, text=True, timeout=300)


def test_command_line(server: FaultServer, default_model: Path, tmp_path: Path) -> None:
    docs = [Passage(id="a", text="Kenji Sato wrote to Ada Vex."), Passage(id="b", text="Nobody.", labels=["city"])]
    source = tmp_path / "docs.jsonl"
    source.write_bytes(dump_jsonl(docs, Passage))
    endpoint: Endpoint = server.endpoint
    options = ["--base-url", endpoint.base_url, "--model", endpoint.model, "--tokenizer", str(default_model)]
    options += ["--context", str(CONTEXT), "--max-tokens", str(MAX_TOKENS), "--labels", "person, organization"]
    result = extract_cli(*options, "--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--reasoning")
    assert result.returncode == 0, result.stderr
    a, b = read_jsonl(tmp_path / "out.jsonl", Prediction)
    assert [(e.text, e.start, e.end) for e in a.entities] == [("Kenji Sato", 0, 10), ("Ada Vex", 20, 27)]
    assert a.reasoning == "I see 2 names." and (b.id, b.entities) == ("b", ())  # b asked for cities only
    single = extract_cli(*options, "--text", "Bo Lind is here.")
    assert single.returncode == 0, single.stderr
    [line] = single.stdout.splitlines()
    assert json.loads(line) == {
        "schema_version": 1,
        "id": "text",
        "entities": [{"text": "Bo Lind", "label": "person", "start": 0, "end": 7}],
    }


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["--labels", " , ", "--text", "Ada"], "--labels: no entity types"),
        (None, ["--labels", "person"], "give --text or --input"),
        (b'{"id": "a", "text": "Ada"}\n{"id": "b", "text": \n', ["--labels", "person"], r"in\.jsonl:2: invalid JSON"),
        (
            b'{"id": "a", "text": "Ada", "labels": ["person"]}\n\n{"id": "b", "text": "Bo"}\n',
            [],
            r"in\.jsonl:3: no entity",
        ),
        (b'{"id": "a", "txt": "Ada"}\n', ["--labels", "person"], r"in\.jsonl:1: .*text: Field required"),
        (b"line one\nline \xff two\n", ["--labels", "person"], r"in\.txt:2: not UTF-8 text"),
    ],
)
def test_bad_input_is_named_by_file_and_line(
    tmp_path: Path, content: bytes | None, args: list[str], message: str
) -> None:
    if content is not None:
        path = tmp_path / ("in.txt" if b"\xff" in content else "in.jsonl")
        path.write_bytes(content)
        args = [*args, "--input", str(path)]
    result = extract_cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(message, " ".join(result.stderr.split())), result.stderr


@pytest.mark.slow
def test_chunked_extraction_on_the_real_vllm_server(vllm_endpoint: Endpoint, default_model: Path) -> None:
    # A context smaller than the server's keeps the prompts (and CPU prefill) short; the chunking is the same.
    lecture = " ".join(f"In {1900 + i} Marie Curie lectured in Paris on radium and polonium." for i in range(60))
    extractor = Extractor(vllm_endpoint, tokenizer=str(default_model), context_tokens=640, max_tokens=32)
    texts = [lecture, "Ada Lovelace met Charles Babbage in London."]
    found = extractor.extract(texts, ["person", "location"])
    assert len(found[0].chunks) >= 2 and len(found[1].chunks) == 1
    for text, result in zip(texts, found, strict=True):
        assert len(result.reasoning) == len(result.chunks)
        for e in result.entities:
            assert text[e.start : e.end] == e.text and e.label in ("person", "location")


@pytest.mark.slow
def test_in_process_extraction_with_transformers(default_model: Path) -> None:
    text = "Ada Lovelace met Charles Babbage in London."
    with Extractor(str(default_model), max_tokens=4) as extractor:
        [found] = extractor.extract([text], ["person"])
    assert extractor.context == 8192  # the model's own window
    assert found.chunks == ((0, len(text)),) and len(found.reasoning) == 1
    assert all(text[e.start : e.end] == e.text for e in found.entities)
