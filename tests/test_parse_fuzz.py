"""Fuzz run of tasks.parse (issue 17): ≥10,000 generated completions through the parser and the grounder,
0 crashes, only the documented failure results, a bounded time per case and in all.

The four parser tests share the 10,000 (6,000 + 2,000 + 1,000 + 1,200); strategies are cheap so the
run stays well under 20 s."""

from __future__ import annotations

import re
from bisect import bisect_left, insort

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import Entity, Mention
from tasks.parse import Grounded, Parsed, ground, parse_completion

REASONS = {None, "too_long", "empty", "no_json", "bad_json", "bad_shape"}


CASE_DEADLINE_MS = 5000
"""The bound on one case: far above what a case takes (milliseconds), so that a machine loaded by the rest of
the suite (image builds run beside it) does not fail it, yet a case that goes quadratic or hangs does."""


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=CASE_DEADLINE_MS, database=None, suppress_health_check=list(HealthCheck))


TOKENS = st.sampled_from(
    [
        "<think>", "</think>", "<THINK >", "< / think>", "<answer>", "</answer>", "```", "```json\n", "{", "}",
        "[", "]", '"', ",", ":", "\\", " ", "\n", "entities", '"entities"', '"text"', '"label"', '"person"',
        '"Ada"', "null", "1", "-0", "1e999", "9" * 5000, "\ud800", "\udfff", "\x00", "\x1b", "\u00a0", "\ufeff",
        '{"entities": {"person": ["Ada"]}}', '[{"text": "Ada", "label": "p"}]', '{"a":', '"\\u', "'",
    ]
)  # fmt: skip
CHARS = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)  # lone surrogates included
SOUP = st.lists(st.one_of(TOKENS, st.text(CHARS, max_size=4)), max_size=40).map("".join)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """Nesting from shallow to far past the recursion limit, closed, unclosed or mismatched."""
    depth = draw(st.sampled_from([1, 2, 3, 10, 63, 64, 65, 100, 999, 1000, 3000, 5000]))
    opener = draw(st.sampled_from(["[", "{", '{"a":', '{"entities":', "[[", '["x", ']))
    closer = {"[": "]", "{": "}", '{"a":': "}", '{"entities":': "}", "[[": "]]", '["x", ': "]"}[opener]
    inner = draw(st.sampled_from(["", "1", '"Ada"', "[]", "{}", "1,"]))
    closing = draw(st.sampled_from([depth, depth // 2, 0]))
    wrap = draw(st.sampled_from(["{}", "<think>r</think>{}", "```json\n{}\n```", "<answer>{}</answer>", "x {} y"]))
    return wrap.replace("{}", opener * depth + inner + closer * closing)


def json_ish() -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(CHARS, max_size=6), st.just("Ada")
    ).map(repr)
    tree = st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.lists(kids, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.dictionaries(
                st.sampled_from(['"entities"', '"text"', '"label"', '"person"', '"x"']), kids, max_size=3
            ).map(lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"),
        ),
        max_leaves=8,
    )
    return st.tuples(st.text(max_size=8), tree, st.text(max_size=8)).map("".join)


def check(p: Parsed) -> None:
    assert isinstance(p, Parsed)
    assert p.reason in REASONS
    assert p.ok == (p.reason is None)
    if p.ok:
        assert p.answer is not None and p.detail == ""
    else:
        assert p.mentions == () and p.detail
    for mention in p.mentions:
        assert isinstance(mention, Mention) and mention.label


def check_ground(passage: str, p: Parsed) -> None:
    g = ground(passage, p.mentions)
    assert isinstance(g, Grounded)
    assert len(g.entities) + len(g.ungrounded) == len(p.mentions)
    for e in g.entities:
        assert passage[e.start : e.end] == e.text


@fuzz(6_000)
@given(st.text(CHARS, max_size=60))
def test_fuzz_random_text(completion: str) -> None:
    p = parse_completion(completion, keep_blank=True)
    check(p)
    check_ground(completion, p)


@fuzz(2_000)
@given(SOUP)
def test_fuzz_token_soup(completion: str) -> None:
    p = parse_completion(completion)
    check(p)
    check_ground(completion, p)


@fuzz(1_000)
@given(deep())
def test_fuzz_deep_nesting(completion: str) -> None:
    p = parse_completion(completion)
    check(p)


@fuzz(1_200)
@given(json_ish(), st.sampled_from(["", "<think>r</think>", "</think>", "<think>"]))
def test_fuzz_json_ish(answer: str, prefix: str) -> None:
    p = parse_completion(prefix + answer, keep_blank=True)
    check(p)
    check_ground(prefix + answer, p)


# --- the grounder against the plain (quadratic) reference it replaced -------------------------------


def reference_ground(text: str, mentions: list[Mention]) -> Grounded:
    tiers_of: dict[str, list[list[tuple[int, int]]]] = {}
    cursor: dict[str, int] = {}
    taken: list[tuple[int, int]] = []
    placed: dict[int, Entity] = {}
    for i in sorted(range(len(mentions)), key=lambda i: -len(mentions[i].text)):
        m = mentions[i]
        if not m.text:
            continue
        tiers = tiers_of.setdefault(m.text, reference_tiers(text, m.text))
        tier = next((t for t in tiers if t), None)
        if tier is None:
            continue
        free = [s for s in tier if not overlaps(s, taken)]
        if not free:
            span = tier[0]
        else:
            span = next((s for s in free if s[0] >= cursor.get(m.text, 0)), free[0])
            insort(taken, span)
        try:
            placed[i] = Entity(text=text[span[0] : span[1]], label=m.label, start=span[0], end=span[1])
        except ValueError:
            continue
        cursor[m.text] = span[1]
    entities = tuple(placed[i] for i in range(len(mentions)) if i in placed)
    return Grounded(entities, tuple(m for i, m in enumerate(mentions) if i not in placed))


def overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    k = bisect_left(taken, span)
    return (k > 0 and taken[k - 1][1] > span[0]) or (k < len(taken) and taken[k][0] < span[1])


def reference_tiers(text: str, surface: str) -> list[list[tuple[int, int]]]:
    exact = [(i, i + len(surface)) for i in range(len(text)) if text.startswith(surface, i)]
    folded = [m.span() for m in re.finditer(re.escape(surface), text, re.IGNORECASE)]
    folded = [s for s in folded if text[s[0] : s[1]] != surface]

    def on_words(s: tuple[int, int]) -> bool:
        def word(ch: str) -> bool:
            return ch.isalnum() or ch == "_"

        left = s[0] == 0 or not (word(text[s[0] - 1]) and word(text[s[0]]))
        right = s[1] == len(text) or not (word(text[s[1] - 1]) and word(text[s[1]]))
        return left and right

    return [[s for s in pool if on_words(s)] for pool in (exact, folded)] + [
        [s for s in pool if not on_words(s)] for pool in (exact, folded)
    ]


PASSAGE_CHARS = st.sampled_from([*"aAbB ._-éÉ\u212aK\u017fsS", "\ud800"])
SURFACES = st.text(PASSAGE_CHARS, min_size=0, max_size=3)


@settings(max_examples=600, deadline=CASE_DEADLINE_MS, database=None, suppress_health_check=list(HealthCheck))
@given(st.text(PASSAGE_CHARS, max_size=40), st.lists(st.tuples(SURFACES, st.sampled_from(["p", "q"])), max_size=10))
def test_ground_matches_the_reference(text: str, raw: list[tuple[str, str]]) -> None:
    mentions = []
    for surface, label in raw:
        try:
            mentions.append(Mention(text=surface, label=label))
        except ValueError:
            continue
    assert ground(text, mentions) == reference_ground(text, mentions)
