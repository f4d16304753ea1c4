"""tasks.parse: completions → (reasoning, mentions), and mentions → spans in the passage."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import Mention
from tasks.parse import MAX_COMPLETION_CHARS, Grounded, Parsed, ground, parse_completion

PAPER = '{"entities": {"person": ["Ada Lovelace"], "location": ["London"]}}'
ADA_LONDON = (Mention(text="Ada Lovelace", label="person"), Mention(text="London", label="location"))


def pairs(parsed: Parsed) -> list[tuple[str, str]]:
    return [(m.text, m.label) for m in parsed.mentions]


def assert_ok(parsed: Parsed) -> None:
    assert parsed.ok, (parsed.reason, parsed.detail)
    assert parsed.reason is None
    assert parsed.detail == ""


# --- shapes -----------------------------------------------------------------------------------------


def test_paper_shape() -> None:
    p = parse_completion(f"<think>Ada is a person.</think>\n{PAPER}")
    assert_ok(p)
    assert p.mentions == ADA_LONDON
    assert p.reasoning == "Ada is a person."
    assert p.answer == PAPER


def test_paper_shape_string_value_and_empty_lists() -> None:
    p = parse_completion('{"entities": {"person": "Ada", "location": [], "org": ["IBM", "ACM"]}}')
    assert_ok(p)
    assert pairs(p) == [("Ada", "person"), ("IBM", "org"), ("ACM", "org")]


def test_unwrapped_label_map() -> None:
    p = parse_completion('{"person": ["Ada", "Bob"], "location": [], "org": "IBM"}')
    assert_ok(p)
    assert pairs(p) == [("Ada", "person"), ("Bob", "person"), ("IBM", "org")]


@pytest.mark.parametrize("text_key", ["text", "entity", "name", "span", "mention", "Text"])
@pytest.mark.parametrize("label_key", ["label", "type", "category", "entity_type", "LABEL"])
def test_list_of_objects_with_key_synonyms(text_key: str, label_key: str) -> None:
    items = [{text_key: "Ada", label_key: "person", "start": 0, "end": 3}, {text_key: "Paris", label_key: "loc"}]
    for answer in (json.dumps(items), json.dumps({"entities": items})):
        p = parse_completion(answer)
        assert_ok(p)
        assert pairs(p) == [("Ada", "person"), ("Paris", "loc")]


def test_lone_entity_object_is_one_mention() -> None:
    p = parse_completion('{"text": "Ada", "label": "person"}')
    assert_ok(p)
    assert pairs(p) == [("Ada", "person")]


def test_entities_key_is_case_insensitive_and_extra_keys_ignored() -> None:
    p = parse_completion('{"Entities": {"person": ["Ada"]}, "note": 3}')
    assert_ok(p)
    assert pairs(p) == [("Ada", "person")]


@pytest.mark.parametrize("answer", ['{"entities": {}}', '{"entities": []}', "[]", "{}", '{"entities": {"person": []}}'])
def test_empty_answers_are_ok(answer: str) -> None:
    p = parse_completion(f"<think>nothing here</think>\n{answer}")
    assert_ok(p)
    assert p.mentions == ()
    assert p.answer == answer


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ('{"entities": 5}', '"entities" is int 5'),
        ('{"entities": "Ada"}', '"entities" is str'),
        ("[1, 2]", "[0] is int 1"),
        ('["Ada", "Bob"]', "[0] is str 'Ada'"),
        ('[{"text": "Ada"}]', "has no label"),
        ('[{"label": "person"}]', "has no text"),
        ('[{"text": 5, "label": "person"}]', "int 5"),
        ('[{"text": "Ada", "label": null}]', "NoneType"),
        ('{"person": [1]}', "['person'][0] is int 1"),
        ('{"person": {"a": 1}}', "['person'] is dict"),
        ('{"person": null}', "['person'] is NoneType"),
        ('{"entities": {"person": [["Ada"]]}}', "['person'][0] is list"),
        ('{"entities": [{"text": "Ada", "label": "p"}, 7]}', '"entities"[1] is int 7'),
    ],
)
def test_bad_shapes(answer: str, says: str) -> None:
    p = parse_completion(f"<think>r</think>{answer}")
    assert p.reason == "bad_shape"
    assert not p.ok
    assert says in p.detail
    assert p.mentions == ()
    assert p.answer == answer
    assert p.reasoning == "r"


# --- reason codes -----------------------------------------------------------------------------------


def test_too_long_is_refused_unread() -> None:
    p = parse_completion("x" * 11 + PAPER, max_chars=10)
    assert p.reason == "too_long"
    assert (p.reasoning, p.answer, p.mentions) == (None, None, ())
    assert "more than the 10" in p.detail
    assert parse_completion("a" * (MAX_COMPLETION_CHARS + 1)).reason == "too_long"
    assert parse_completion(PAPER, max_chars=len(PAPER)).ok


@pytest.mark.parametrize("completion", ["", " ", "\n\t  \n"])
def test_empty(completion: str) -> None:
    p = parse_completion(completion)
    assert p.reason == "empty"
    assert p.detail


@pytest.mark.parametrize(
    "completion",
    ["There are no entities.", "<think>only reasoning</think>", "<think>cut off mid-thou", "42", '"Ada"'],
)
def test_no_json(completion: str) -> None:
    p = parse_completion(completion)
    assert p.reason == "no_json"
    assert p.answer is None
    assert p.mentions == ()


@pytest.mark.parametrize(
    "completion",
    [
        "{entities: {person: [Ada]}}",
        "{'entities': {'person': ['Ada']}}",  # a Python literal is not JSON, and is never evaluated
        '{"entities": {"person": ["Ada"]',
        '</think>{"entities": {"person": ["Ada" "Bob"]}}',
    ],
)
def test_bad_json(completion: str) -> None:
    p = parse_completion(completion)
    assert p.reason == "bad_json"
    assert "JSON" in p.detail
    assert p.answer is None
    assert p.mentions == ()


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    p = parse_completion('{"entities": ' + "[" * 5000 + "]" * 5000 + "}")
    assert p.reason == "bad_json"
    assert "too deeply" in p.detail


@pytest.mark.parametrize(
    "completion",
    [
        '{"entities": [{"text": "Ada", "label": "person"}, {"text": "Bob", "label": "person"}',
        '<think>r</think>{"entities": {"person": ["Ada"], "location": ["Lon',
        '[{"text": "Ada", "label": "person"}, {"text": "Bo',
    ],
)
def test_cut_off_json_is_bad_json_not_its_fragments(completion: str) -> None:
    p = parse_completion(completion)
    assert p.reason == "bad_json"
    assert "never closed" in p.detail
    assert p.mentions == ()


def test_cut_off_json_after_a_complete_answer() -> None:
    p = parse_completion(f'{PAPER}\nCorrection: {{"entities": {{"person": ["Bo')
    assert p.mentions == ADA_LONDON
    p = parse_completion(f"[Note: prose bracket never closed. {PAPER}")
    assert p.mentions == ADA_LONDON


# --- think tags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reasoning"),
    [
        (f"<think>\n  Ada is a person.\n</think>\n\n{PAPER}", "Ada is a person."),
        (f"Ada is a person.\n</think>\n{PAPER}", "Ada is a person."),  # <think> was in the prompt
        (f"<think>Ada is a person.\n{PAPER}", "Ada is a person."),  # never closed
        (f"<THINK>Ada is a person.</Think>{PAPER}", "Ada is a person."),
        (f"<think>Ada is a person.</THINK>\n```json\n{PAPER}\n```", "Ada is a person."),
        (f"<think></think>{PAPER}", ""),
        (PAPER, None),
        (f"Sure! {PAPER}", None),
    ],
)
def test_think_variants(completion: str, reasoning: str | None) -> None:
    p = parse_completion(completion)
    assert_ok(p)
    assert p.reasoning == reasoning
    assert p.mentions == ADA_LONDON


def test_answer_is_looked_for_after_the_close_tag_only() -> None:
    p = parse_completion(f'<think>e.g. {{"person": ["Zed"]}} {PAPER}</think>\nNo entities.')
    assert p.reason == "no_json"
    assert p.reasoning is not None and "Zed" in p.reasoning
    p = parse_completion(f'<think>e.g. {{"person": ["Zed"]}}</think>\n{PAPER}')
    assert p.mentions == ADA_LONDON


def test_open_think_truncated_keeps_all_reasoning() -> None:
    p = parse_completion("<think>Ada is a person; London is")
    assert p.reason == "no_json"
    assert p.reasoning == "Ada is a person; London is"


def test_open_think_reasoning_stops_at_fence_and_answer_tag() -> None:
    p = parse_completion(f"<think>why\n```json\n{PAPER}\n```")
    assert (p.reasoning, p.mentions) == ("why", ADA_LONDON)
    p = parse_completion(f"<think>why\n<answer>{PAPER}</answer>")
    assert (p.reasoning, p.mentions) == ("why", ADA_LONDON)
    p = parse_completion("<think>why\n<answer>nothing")
    assert (p.reasoning, p.reason) == ("why", "no_json")


# --- where the answer is ----------------------------------------------------------------------------


@pytest.mark.parametrize("fence", ["```json", "```JSON", "```", "``` json"])
def test_fences(fence: str) -> None:
    p = parse_completion(f"</think>Here it is:\n{fence}\n{PAPER}\n```\nHope that [helps].")
    assert_ok(p)
    assert p.mentions == ADA_LONDON
    assert p.answer == PAPER


def test_last_decodable_fence_wins() -> None:
    first = "```json\n" + '{"person": ["Ada"]}' + "\n```"
    broken = "```json\n" + '{"person": ["Bob"' + "\n```"
    p = parse_completion(f"{first}\nthen\n{broken}\n")
    assert pairs(p) == [("Ada", "person")]
    second = "```\n" + '{"person": ["Cy"]}' + "\n```"
    assert pairs(parse_completion(f"{first}\n{second}")) == [("Cy", "person")]


def test_fence_beats_later_bare_json_and_non_json_fences_are_skipped() -> None:
    p = parse_completion('```json\n{"person": ["Ada"]}\n```\nor maybe {"person": ["Bob"]}')
    assert pairs(p) == [("Ada", "person")]
    p = parse_completion('```python\nx = {"person": ["Bob"]}\n```\n{"person": ["Ada"]}')
    assert pairs(p) == [("Ada", "person")]


def test_answer_tag_is_the_only_place_looked_at() -> None:
    p = parse_completion('{"person": ["Bob"]} <answer>\n{"person": ["Ada"]}\n</answer> {"person": ["Cy"]}')
    assert pairs(p) == [("Ada", "person")]
    assert p.answer == '{"person": ["Ada"]}'
    p = parse_completion('{"person": ["Bob"]}\n<ANSWER>```json\n{"person": ["Ada"]}\n```</Answer>')
    assert pairs(p) == [("Ada", "person")]
    p = parse_completion('{"person": ["Bob"]}\n<answer>none</answer>')
    assert p.reason == "no_json"
    p = parse_completion('<answer>{"person": ["Ada"]}')  # unclosed
    assert pairs(p) == [("Ada", "person")]


def test_prose_around_the_json() -> None:
    completion = (
        "</think>Sure! Based on my analysis [see above], here's the answer: "
        f"{PAPER} I hope this helps; let me know if you'd like {{more}} detail."
    )
    p = parse_completion(completion)
    assert p.mentions == ADA_LONDON
    assert p.answer == PAPER


def test_unbalanced_prose_before_the_json() -> None:
    p = parse_completion(f'Types [person, location and a stray " quote: {PAPER}')
    assert p.mentions == ADA_LONDON


@pytest.mark.parametrize(
    "answer",
    [
        '{"entities": {"person": ["Ada Lovelace",], "location": ["London",],},}',
        '{"entities": {"person": ["Ada Lovelace" ,\n ], "location": ["London"]\n,\n}}',
        '[{"text": "Ada Lovelace", "label": "person",}, {"text": "London", "label": "location"},]',
    ],
)
def test_trailing_commas_are_forgiven(answer: str) -> None:
    p = parse_completion(f"</think>{answer}")
    assert_ok(p)
    assert p.mentions == ADA_LONDON
    assert p.answer == answer


def test_trailing_comma_repair_leaves_strings_alone() -> None:
    p = parse_completion('{"entities": {"misc": ["a, ]", "b,}",],}}')
    assert pairs(p) == [("a, ]", "misc"), ("b,}", "misc")]


def test_multiple_blobs_last_valid_wins() -> None:
    a, b = '{"person": ["Ada"]}', '{"person": ["Bob"]}'
    assert pairs(parse_completion(f"First {a}, corrected: {b}")) == [("Bob", "person")]
    assert pairs(parse_completion(f"{a} then {b} and [1, 2] and {{broken")) == [("Bob", "person")]
    assert pairs(parse_completion(f'{a} then {{"entities": 3}}')) == [("Ada", "person")]


def test_brackets_and_quotes_inside_strings() -> None:
    answer = r'{"entities": {"misc": ["a ] b", "{c}", "say \"hi\" [x]", "back\\slash"]}}'
    p = parse_completion(f"</think>{answer} trailing [note]")
    assert pairs(p) == [("a ] b", "misc"), ("{c}", "misc"), ('say "hi" [x]', "misc"), ("back\\slash", "misc")]


# --- mentions ---------------------------------------------------------------------------------------


def test_mentions_are_stripped_empty_ones_dropped_duplicates_kept() -> None:
    p = parse_completion(
        '{"entities": {" person ": ["  Ada ", "", "   ", "Ada"], "  ": ["Bob"], "loc": ["\\tParis\\n"]}}'
    )
    assert_ok(p)
    assert pairs(p) == [("Ada", "person"), ("Ada", "person"), ("Paris", "loc")]


def test_mentions_the_contract_rejects_are_dropped() -> None:
    long_label = "x" * 600
    p = parse_completion(json.dumps({"entities": {long_label: ["Ada"], "person": ["Bob", "\ud800"]}}))
    assert_ok(p)
    assert pairs(p) == [("Bob", "person")]


def test_unicode() -> None:
    answer = {"entities": {"人物": ["阿达·洛芙莱斯"], "地点": ["伦敦"], "emoji": ["🦄 Ünïcode"]}}
    for ensure_ascii in (True, False):
        p = parse_completion(f"<think>推理……</think>{json.dumps(answer, ensure_ascii=ensure_ascii)}")
        assert_ok(p)
        assert p.reasoning == "推理……"
        assert pairs(p) == [("阿达·洛芙莱斯", "人物"), ("伦敦", "地点"), ("🦄 Ünïcode", "emoji")]


def test_huge_integer_is_handled() -> None:
    p = parse_completion('{"person": [' + "1" * 5000 + "]}")
    assert not p.ok


# --- grounding --------------------------------------------------------------------------------------


def m(text: str, label: str = "x") -> Mention:
    return Mention(text=text, label=label)


def spans(g: Grounded) -> list[tuple[str, str, int, int]]:
    return [(e.text, e.label, e.start, e.end) for e in g.entities]


def test_ground_basic_keeps_label_and_order() -> None:
    text = "Ada Lovelace met Babbage in London."
    g = ground(text, [m("London", "loc"), m("Ada Lovelace", "person")])
    assert spans(g) == [("London", "loc", 28, 34), ("Ada Lovelace", "person", 0, 12)]
    assert g.ungrounded == ()


def test_ground_repeats_take_successive_occurrences_then_reuse_the_first() -> None:
    text = "Ada met Ada, then Ada."
    g = ground(text, [m("Ada"), m("Ada"), m("Ada"), m("Ada")])
    assert [e.start for e in g.entities] == [0, 8, 18, 0]


def test_ground_cursor_is_per_surface_string() -> None:
    text = "Ada and Bob; Bob and Ada"
    g = ground(text, [m("Bob"), m("Ada"), m("Bob"), m("Ada")])
    assert [e.start for e in g.entities] == [8, 0, 13, 21]


def test_ground_prefers_word_boundaries() -> None:
    text = "Bart met Art. Art left; Bart stayed."
    g = ground(text, [m("Art"), m("Art"), m("Art")])
    assert [e.start for e in g.entities] == [9, 14, 9]  # never inside "Bart"
    g = ground("Bart met Art.", [m("art")])  # a whole word, differently cased, beats an inside-word hit
    assert spans(g) == [("Art", "x", 9, 12)]
    g = ground("Bartholomew", [m("art")])  # inside a word only: still grounded
    assert spans(g) == [("art", "x", 1, 4)]
    g = ground("(Ada) said 'Ada'", [m("(Ada)"), m("'Ada'")])  # punctuation edges are boundaries
    assert spans(g) == [("(Ada)", "x", 0, 5), ("'Ada'", "x", 11, 16)]


def test_ground_case_insensitive_fallback_uses_passage_casing() -> None:
    text = "Visiting NEW YORK and new york."
    g = ground(text, [m("New York"), m("New York"), m("new york")])
    assert spans(g) == [("NEW YORK", "x", 9, 17), ("new york", "x", 22, 30), ("new york", "x", 22, 30)]
    for e in g.entities:
        assert text[e.start : e.end] == e.text


def test_ground_ungrounded() -> None:
    g = ground("Ada met Bob.", [m("Ada"), m("Charles"), m("Bob"), m("Ada Lovelace")])
    assert [e.text for e in g.entities] == ["Ada", "Bob"]
    assert g.ungrounded == (m("Charles"), m("Ada Lovelace"))


def test_ground_unicode_offsets_are_code_points() -> None:
    text = "🦄🦄 北京的阿达 met Ünïcode"
    g = ground(text, [m("阿达"), m("Ünïcode"), m("北京")])
    assert spans(g) == [("阿达", "x", 6, 8), ("Ünïcode", "x", 13, 20), ("北京", "x", 3, 5)]


def test_ground_overlapping_surfaces() -> None:
    g = ground("aaaa", [m("aa"), m("aa"), m("aa")])
    assert [e.start for e in g.entities] == [0, 2, 0]


def test_parse_then_ground() -> None:
    text = "Ada Lovelace was born in London."
    g = ground(text, parse_completion(f"<think>r</think>{PAPER}").mentions)
    assert spans(g) == [("Ada Lovelace", "person", 0, 12), ("London", "location", 25, 31)]


# --- bounded work on hostile input ------------------------------------------------------------------

HOSTILE = {
    "open brackets": "[" * MAX_COMPLETION_CHARS,
    "open braces": "{" * MAX_COMPLETION_CHARS,
    "open keys": '{"a":' * (MAX_COMPLETION_CHARS // 5),
    "fences": "```" * (MAX_COMPLETION_CHARS // 3),
    "fenced openers": ("```json\n{" * (MAX_COMPLETION_CHARS // 9)),
    "deep valid": "[" * (MAX_COMPLETION_CHARS // 2) + "]" * (MAX_COMPLETION_CHARS // 2),
    "mismatched": "{" * (MAX_COMPLETION_CHARS // 2) + "]" * (MAX_COMPLETION_CHARS // 2),
    "open string": '{"a": "' + '{"' * (MAX_COMPLETION_CHARS // 2 - 4),
    "many objects": '[{"text": "a", "label": "b"}, ' * (MAX_COMPLETION_CHARS // 31),
    "empty pairs": "[]" * (MAX_COMPLETION_CHARS // 2),
    "quotes": '"' * MAX_COMPLETION_CHARS,
    "think tags": "<think></think>" * (MAX_COMPLETION_CHARS // 15),
    "answer tags": "<answer>{" * (MAX_COMPLETION_CHARS // 9),
    "commas": "[" + "," * (MAX_COMPLETION_CHARS - 2) + "]",
    "backslashes": '["' + "\\" * (MAX_COMPLETION_CHARS - 4) + '"]',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_are_fast_and_do_not_raise(name: str) -> None:
    completion = HOSTILE[name]
    assert len(completion) <= MAX_COMPLETION_CHARS
    start = time.perf_counter()
    p = parse_completion(completion)
    assert time.perf_counter() - start < 2.0
    assert isinstance(p, Parsed)
    assert p.ok == (p.reason is None)


def test_valid_answer_after_hostile_prefix_is_found() -> None:
    prefix = "[" * 100_000 + '{"a":' * 10_000
    start = time.perf_counter()
    p = parse_completion(prefix + "</think>" + PAPER)
    assert time.perf_counter() - start < 2.0
    assert p.mentions == ADA_LONDON


def test_many_mentions_are_all_read() -> None:
    items = [{"text": f"e{i}", "label": "t"} for i in range(2000)]
    p = parse_completion(json.dumps({"entities": items}))
    assert_ok(p)
    assert len(p.mentions) == 2000
    assert p.mentions[-1] == m("e1999", "t")


# --- properties -------------------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        "<think>", "</think>", "<THINK>", "<answer>", "</answer>", "```", "```json\n", "{", "}", "[", "]",
        '"', ",", ":", "\\", " ", "\n", "entities", '"entities"', '"text"', '"label"', '"Ada"', "null", "1",
    ]
)  # fmt: skip
TOKEN_SOUP = st.lists(st.one_of(TOKENS, st.text(max_size=5)), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), TOKEN_SOUP))
def test_parse_never_raises(completion: str) -> None:
    p = parse_completion(completion)
    assert p.ok == (p.reason is None)
    if p.ok:
        assert p.answer is not None
    else:
        assert p.mentions == () and p.detail
    for mention in p.mentions:
        assert mention.text == mention.text.strip() and mention.text
        assert mention.label == mention.label.strip() and mention.label


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=80), st.data())
def test_ground_invariants(text: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 8))
    mentions = []
    for _ in range(n):
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(text) - 1))
            j = data.draw(st.integers(i + 1, len(text)))
            surface = text[i:j]
        else:
            surface = data.draw(st.text(min_size=1, max_size=6))
        mentions.append(Mention(text=surface, label=data.draw(st.sampled_from(["person", "loc"]))))
    g = ground(text, mentions)
    assert len(g.entities) + len(g.ungrounded) == len(mentions)
    findable = [mn for mn in mentions if re.search(re.escape(mn.text), text, re.IGNORECASE)]
    assert list(g.ungrounded) == [mn for mn in mentions if mn not in findable]
    assert len(g.entities) == len(findable)
    for e, mn in zip(g.entities, findable, strict=True):
        assert text[e.start : e.end] == e.text
        assert e.label == mn.label
        assert re.fullmatch(re.escape(mn.text), e.text, re.IGNORECASE)
        if mn.text in text and e.text != mn.text:  # only a whole-word case variant may replace it
            assert e.start == 0 or not (text[e.start - 1].isalnum() and e.text[0].isalnum())


# JSON strings may hold anything but the tags and fences that the wrapping itself is found by.
SAFE_TEXT = st.text(st.characters(blacklist_characters="<`", blacklist_categories=("Cs",)), max_size=15)
LABEL = SAFE_TEXT.filter(lambda s: 0 < len(s.strip()) <= 512)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(LABEL, st.lists(SAFE_TEXT, max_size=4), max_size=4),
    SAFE_TEXT,
    st.booleans(),
    st.sampled_from(["", "Here you go:\n", "```json\n"]),
)
def test_round_trip_paper_shape(grouped: dict[str, list[str]], reasoning: str, ensure_ascii: bool, before: str) -> None:
    answer = json.dumps({"entities": grouped}, ensure_ascii=ensure_ascii)
    after = "\n```" if before.startswith("```") else "\nThat is all."
    p = parse_completion(f"<think>{reasoning}</think>\n{before}{answer}{after}")
    assert_ok(p)
    assert p.reasoning == reasoning.strip()
    assert p.answer == answer
    expected = [(t.strip(), label.strip()) for label, texts in grouped.items() for t in texts if t.strip()]
    assert pairs(p) == expected


def test_ground_gives_a_surname_its_own_occurrence_not_the_inside_of_the_full_name() -> None:
    text = "Marcus Oyelaran spoke first. Later, Oyelaran left the hall."
    g = ground(text, [m("Oyelaran"), m("Marcus Oyelaran")])  # surname listed first, as models often do
    assert spans(g) == [("Oyelaran", "x", 36, 44), ("Marcus Oyelaran", "x", 0, 15)]
    g = ground("Marcus Oyelaran spoke.", [m("Oyelaran"), m("Marcus Oyelaran")])  # no standalone one: shared
    assert spans(g) == [("Oyelaran", "x", 7, 15), ("Marcus Oyelaran", "x", 0, 15)]


def test_ground_recovers_every_gold_span_of_the_demo_corpus_from_a_paper_answer() -> None:
    from tasks.demo import DEMO_SPLITS, load_demo
    from tasks.prompts import assistant_target

    for split in DEMO_SPLITS:
        for ex in load_demo(split):
            parsed = parse_completion(assistant_target("...", ex.entities, ex.labels))  # grouped by label
            got = sorted((e.start, e.end, e.label) for e in ground(ex.text, parsed.mentions).entities)
            assert got == sorted((e.start, e.end, e.label) for e in ex.entities), ex.id


# --- bounded work (issue 17, item 6) ----------------------------------------------------------------


def _at_stack_depth(frames: int, f: Callable[[], Parsed]) -> Parsed:
    return f() if frames == 0 else _at_stack_depth(frames - 1, f)


@pytest.mark.parametrize("depth", [150, 500, 900, 990, 5000])
@pytest.mark.parametrize("frames", [0, 400, 800])
def test_deep_nesting_is_refused_the_same_way_at_any_stack_depth(depth: int, frames: int) -> None:
    # The verdict must not depend on how deep the caller's stack is, and nothing may raise.
    for answer in (
        '{"entities": {"person": ' + "[" * depth + "]" * depth + "}}",
        '{"entities": [' + "[" * depth + "1," + "]" * depth + "]}",
    ):
        p = _at_stack_depth(frames, lambda a=answer: parse_completion(a))
        assert p.reason == "bad_json", (depth, frames, p.reason, p.detail[:80])
        assert "too deeply" in p.detail
        assert p.mentions == ()


def test_shallow_nesting_is_judged_on_its_shape() -> None:
    p = parse_completion('{"entities": {"person": ' + "[" * 20 + "]" * 20 + "}}")
    assert p.reason == "bad_shape"


def test_ground_many_repeated_short_mentions_in_a_long_text_is_fast() -> None:
    text = ("Ada met Bob in Rome. " * 5000)[:100_000]
    mentions = [m("Ada", "person"), m("Bob", "person"), m("a", "x"), m("Ro", "x")] * 500
    start = time.perf_counter()
    g = ground(text, mentions)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert len(g.entities) == 2000 and g.ungrounded == ()
    ada = [e.start for e in g.entities if e.text == "Ada"]
    assert ada == sorted(ada) and len(set(ada)) == 500  # successive occurrences, none shared
    for e in g.entities:
        assert text[e.start : e.end] == e.text


def test_ground_many_distinct_mentions_in_a_long_text_is_fast() -> None:
    text = ("Ada met Bob in Rome. " * 5000)[:100_000]
    mentions = [m(f"w{i}", "x") for i in range(2000)] + [m("rome", "loc")] * 2000
    start = time.perf_counter()
    g = ground(text, mentions)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert len(g.entities) == 2000 and all(e.text == "Rome" for e in g.entities)


def test_ground_reuses_the_first_occurrence_once_all_are_taken() -> None:
    g = ground("Ada and Ada", [m("Ada", "p")] * 4)
    assert [(e.start, e.end) for e in g.entities] == [(0, 3), (8, 11), (0, 3), (0, 3)]


def test_deep_value_beside_a_good_answer_never_raises_near_the_recursion_limit() -> None:
    # Before: the decoder took this (900 levels fit), then repr() in the bad_shape message recursed
    # past the limit when the caller's stack was ~90 frames deep (as under a CLI), a RecursionError.
    depth = 900
    answer = '{"person": ["Ada"], "x": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    frame, used = sys._getframe(), 0
    while frame is not None:
        frame, used = frame.f_back, used + 1
    room = sys.getrecursionlimit() - used - depth
    for frames in range(max(0, room - 60), room - 10):
        p = _at_stack_depth(frames, lambda: parse_completion(answer))
        assert p.reason == "bad_json" and "too deeply" in p.detail, (frames, p.reason)
