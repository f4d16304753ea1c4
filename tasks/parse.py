"""Read a model's completion: its reasoning, the entities it names, and where they are in the passage.

A ReasoningNER model thinks, then answers with the paper's JSON::

    <think>Ada Lovelace is a person; London is a place ...</think>
    {"entities": {"person": ["Ada Lovelace"], "location": ["London"]}}

Usage::

    from tasks.parse import ground, parse_completion

    p = parse_completion(completion)
    p.ok, p.reason, p.detail     # reason: "too_long" | "empty" | "no_json" | "bad_json" | "bad_shape"
    p.reasoning                  # the think block, stripped (None if there is none)
    p.mentions                   # (Mention(text, label), ...) in the order the model gave them
    g = ground(passage, p.mentions)
    g.entities                   # (Entity(text, label, start, end), ...): passage[e.start:e.end] == e.text
    g.ungrounded                 # mentions whose text is nowhere in the passage

Models drift from the format, and a metric or a reward should see what they meant, so parsing is
lenient about the wrapping and strict about the content:

- Reasoning. ``<think>...</think>``. Only ``</think>`` (the chat template opened the block in the
  prompt): the reasoning is everything before it. Only ``<think>`` (cut off, or never closed): the
  answer is looked for after it, and the reasoning is what lies between the tag and the answer. Tags
  are case-insensitive. With a ``</think>``, the answer is looked for after the last one only.
- Answer. The JSON inside the last ``<answer>...</answer>`` if there is one (and nowhere else then);
  else inside the last ```json (or plain ```) fence that holds a usable answer; else the last JSON
  object or array in the text, prose around it ignored. Trailing commas are forgiven. A candidate with
  a usable shape beats one closer to the end; among usable ones the last wins. A JSON value that is
  opened and never closed (a truncated answer) is "bad_json": its complete inner pieces are not
  taken for the answer.
- Shapes. ``{"entities": {"person": ["Ada"], "location": []}}`` (a string instead of a list is one
  mention); the same without the ``"entities"`` wrapper when every value is a string or a list of
  strings; ``[{"text": "Ada", "label": "person"}, ...]``, bare or under ``"entities"``, with the key
  synonyms text|entity|name|span|mention and label|type|category|entity_type (other keys ignored);
  a lone ``{"text": "Ada", "label": "person"}`` object is one mention. ``{}``, ``[]``,
  ``{"entities": {}}`` and ``{"entities": []}`` are valid empty answers. Anything else is "bad_shape".
- Mentions. Text and label are stripped; a mention left with an empty label, or one the ``Mention``
  contract rejects (a label over 512 characters, a lone surrogate), is dropped. One left with an empty
  text (``"person": [""]``, ``"person": ["  "]``) is dropped too, unless ``keep_blank=True``: then it is
  kept as ``Mention(text="", ...)``, as the released evaluation keeps it (it counts as a prediction in
  the paper metric; evaluation and scoring ask for it, annotation and extraction do not). Duplicates
  are kept: the metric decides what they are worth.

Nothing here raises on any string, and work is bounded: completions over ``max_chars`` are refused
unread, and at most 64 JSON start positions and 64 fences are tried, so a worst-case input of the
maximum size parses in about 0.1 s. JSON nested more than 64 levels deep is "bad_json" (detail "JSON
nested too deeply ...") and is refused before it is decoded, so no recursion depth is up to the input
and the verdict does not depend on how deep the caller's stack is.

``ground`` gives each mention one span (an empty mention none: it is ungrounded). Longer mentions are
placed first and no two mentions share a span while a free occurrence remains, so "Oyelaran" listed
beside "Marcus Oyelaran" finds the later, standalone "Oyelaran"; repeats of a surface string take
successive occurrences left to right; when none is free, a mention reuses the first one. Occurrences are
ranked in tiers (exact on word boundaries, case-insensitive on word boundaries, exact inside a word as
"Art" in "Bart", case-insensitive inside a word) and only the best tier that has any occurrence is used.
A case-insensitive match carries the passage's own casing, so ``passage[e.start:e.end] == e.text``
always holds. Entities come back in mention order. Grounding costs one C-speed search of the passage
per distinct surface string plus O(log n) per occurrence and per mention (an occurrence found taken is
never looked at again): 2,000 repeated short mentions in a 100 KB passage take about 0.02 s.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from schemas.records import Entity, Mention

MAX_COMPLETION_CHARS: int = 200_000

Reason = Literal["too_long", "empty", "no_json", "bad_json", "bad_shape"]

# Limits that keep adversarial completions cheap: each JSON attempt is linear in what it reads.
_MAX_CANDIDATES = 64
_MAX_FENCES = 64
# Deeper JSON is refused before it is decoded: an answer needs three levels, and the decoder (and repr)
# recurse once per level, so a deep value would fail or not depending on the caller's stack.
_MAX_DEPTH = 64

_TEXT_KEYS = ("text", "entity", "name", "span", "mention")
_LABEL_KEYS = ("label", "type", "category", "entity_type")
_JSON_FENCE_INFO = frozenset({"", "json", "jsonc", "json5"})

_OPEN_THINK = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_CLOSE_THINK = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_OPEN_ANSWER = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_CLOSE_ANSWER = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_FENCE_INFO = re.compile(r"[A-Za-z0-9_.+-]*")
_STRUCTURE = re.compile(r'[\[\]{}"\\]')
_OPENER = re.compile(r"[\[{]")
_JSON_START = re.compile(r'\{\s*["}]|\[\s*[{\["\]]')
# Strings are matched (possessively, so no backtracking) and kept, so a ", ]" inside one survives.
_TRAILING_COMMA = re.compile(r'("(?:[^"\\]++|\\.)*+")|,\s*([}\]])', re.DOTALL)
_DECODER = json.JSONDecoder()
_TOO_DEEP = f"JSON nested too deeply (more than {_MAX_DEPTH} levels)"


@dataclass(frozen=True)
class Parsed:
    reasoning: str | None
    answer: str | None
    mentions: tuple[Mention, ...]
    reason: Reason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Grounded:
    entities: tuple[Entity, ...]
    ungrounded: tuple[Mention, ...]


@dataclass(frozen=True)
class _Found:
    """What one search for the answer turned up; ``at`` is where the answer starts (None: nowhere)."""

    at: int | None
    answer: str | None
    pairs: tuple[tuple[str, str], ...]
    """(text, label) as the answer gives them, unstripped."""
    reason: Reason | None
    detail: str


def parse_completion(completion: str, *, max_chars: int = MAX_COMPLETION_CHARS, keep_blank: bool = False) -> Parsed:
    """Split ``completion`` into reasoning and answer and read the answer's mentions. Never raises.

    ``keep_blank``: keep mentions whose text is empty once stripped, as ``Mention(text="")`` (see module docs)."""
    if len(completion) > max_chars:
        detail = f"completion has {len(completion)} characters, more than the {max_chars} allowed"
        return Parsed(None, None, (), "too_long", detail)
    if not completion.strip():
        return Parsed(None, None, (), "empty", "the completion is empty")
    reasoning, region, open_only = _split_think(completion)
    found = _find_answer(region)
    if open_only:
        reasoning = (region if found.at is None else region[: found.at]).strip()
    return Parsed(reasoning, found.answer, _mentions(found.pairs, keep_blank), found.reason, found.detail)


def _split_think(completion: str) -> tuple[str | None, str, bool]:
    """(reasoning, the region that holds the answer, whether the think block was left open)."""
    close = _last_match(_CLOSE_THINK, completion)
    if close is not None:
        opened = _OPEN_THINK.search(completion, 0, close.start())
        begin = opened.end() if opened else 0
        return completion[begin : close.start()].strip(), completion[close.end() :], False
    opened = _OPEN_THINK.search(completion)
    if opened is not None:
        return None, completion[opened.end() :], True
    return None, completion, False


def _find_answer(region: str) -> _Found:
    tag = _last_match(_OPEN_ANSWER, region)
    if tag is not None:
        close = _CLOSE_ANSWER.search(region, tag.end())
        inner = region[tag.end() : close.start() if close else len(region)]
        # The answer starts at its tag, so a think block left open ends there, found or not.
        return replace(_find_in_fences(inner) or _scan(inner), at=tag.start())
    return _find_in_fences(region) or _scan(region)


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - only the last is wanted
        pass
    return last


def _find_in_fences(text: str) -> _Found | None:
    """The usable answer in the last JSON fence that has one; None sends the caller to a full scan."""
    marks: list[int] = []
    i = text.find("```")
    while i != -1:
        marks.append(i)
        i = text.find("```", i + 3)
    pairs = list(zip(marks[0::2], marks[1::2], strict=False))
    for open_at, close_at in reversed(pairs[-_MAX_FENCES:]):
        info = _FENCE_INFO.match(text, open_at + 3)
        if info is None or info.group().lower() not in _JSON_FENCE_INFO:
            continue
        found = _scan(text[info.end() : close_at])
        if found.reason is None:
            return replace(found, at=open_at)
    return None


def _scan(text: str) -> _Found:
    """The best JSON answer in free text: usable shape first, then closest to the end."""
    if _OPENER.search(text) is None:
        return _Found(None, None, (), "no_json", "no JSON object or array in the answer")
    spans, cut = _top_level_spans(text)
    first_bad: _Found | None = None
    first_error = ""
    too_deep: list[tuple[int, int]] = []
    for start, end, depth in reversed(spans[-_MAX_CANDIDATES:]):
        decoded = _TOO_DEEP if depth > _MAX_DEPTH else _decode_span(text, start, end)
        if isinstance(decoded, str):
            first_error = first_error or decoded
            if decoded == _TOO_DEEP:
                too_deep.append((start, end))
            continue
        value, stop = decoded
        found = _judge(text, start, stop, value)
        if found.reason is None:
            return found
        first_bad = first_bad or found
    if first_bad is not None:
        return first_bad

    # No balanced span decoded. A stray quote can hide JSON from the structure pass, so try raw start
    # positions, but none inside a cut-off JSON (its fragments are not the answer) or inside a span
    # that is too deep (its innermost "[]" is not the answer either).
    starts = _raw_starts(text, len(text) if cut is None else cut + 1, too_deep)
    best: tuple[bool, int, int, _Found] | None = None
    for start in starts:
        try:
            value, stop = _DECODER.raw_decode(text, start)
        except RecursionError:
            first_error = first_error or _TOO_DEEP
            continue
        except ValueError as e:
            first_error = first_error or str(e)
            continue
        if _deeper_than(value, _MAX_DEPTH):
            first_error = first_error or _TOO_DEEP
            continue
        found = _judge(text, start, stop, value)
        key = (found.reason is None, stop, -start, found)
        if best is None or key[:3] > best[:3]:
            best = key
    if best is not None:
        return best[3]
    if cut is not None:
        detail = f"the JSON that starts at character {cut} is never closed (cut off?)"
        return _Found(None, None, (), "bad_json", detail)
    return _Found(None, None, (), "bad_json", f"the answer does not decode as JSON: {first_error}")


def _raw_starts(text: str, limit: int, skip: list[tuple[int, int]]) -> list[int]:
    """The last few "{"/"[" positions before ``limit`` and outside the (disjoint) ``skip`` spans."""
    positions = [m.start() for m in _OPENER.finditer(text, 0, limit)]
    skip = sorted(skip, reverse=True)
    starts: list[int] = []
    k = 0
    for p in reversed(positions):
        while k < len(skip) and skip[k][0] > p:
            k += 1
        if k < len(skip) and p < skip[k][1]:
            continue
        starts.append(p)
        if len(starts) == _MAX_CANDIDATES:
            break
    return starts


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests more than ``limit`` levels; iterative, so no recursion."""
    todo = [(value, 1)] if isinstance(value, (list, dict)) else []
    while todo:
        item, level = todo.pop()
        if level > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        todo.extend((c, level + 1) for c in children if isinstance(c, (list, dict)))
    return False


def _top_level_spans(text: str) -> tuple[list[tuple[int, int, int]], int | None]:
    """Balanced {...}/[...] spans not inside another, in order (start, end exclusive, nesting depth),
    and the cut-off point.

    Quotes count only inside brackets, so apostrophes and quotes in prose do not matter. A closer that
    does not match the innermost open bracket is ignored (constant time, unlike searching the stack).
    The cut-off point is the first bracket never closed that opens JSON rather than prose (``{"``,
    ``[{``): a truncated answer. Spans after it are its fragments and are dropped.
    """
    spans: list[tuple[int, int, int]] = []
    stack: list[list[Any]] = []  # [closer, position, depth of what is nested inside so far]
    in_string = False
    escaped_at = -1
    for m in _STRUCTURE.finditer(text):
        i, ch = m.start(), m.group()
        if in_string:
            if i == escaped_at:
                continue
            if ch == "\\":
                escaped_at = i + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = bool(stack)
        elif ch == "{":
            stack.append(["}", i, 0])
        elif ch == "[":
            stack.append(["]", i, 0])
        elif ch in "}]" and stack and stack[-1][0] == ch:
            _, start, inner = stack.pop()
            if stack:
                stack[-1][2] = max(stack[-1][2], inner + 1)
            while spans and spans[-1][0] > start:
                spans.pop()
            spans.append((start, i + 1, inner + 1))
    cut = next((i for _, i, _ in stack if _JSON_START.match(text, i)), None)
    if cut is not None:
        while spans and spans[-1][0] > cut:
            spans.pop()
    return spans, cut


def _decode_span(text: str, start: int, end: int) -> tuple[Any, int] | str:
    """(value, stop) for the JSON at ``start``, or why it does not decode."""
    try:
        return _DECODER.raw_decode(text, start)
    except RecursionError:
        return _TOO_DEEP
    except ValueError as e:
        error = str(e)
    try:
        return json.loads(_TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text[start:end])), end
    except (ValueError, RecursionError):
        return error


def _judge(text: str, start: int, stop: int, value: Any) -> _Found:
    answer = text[start:stop]
    pairs = _pairs(value)
    if isinstance(pairs, str):
        return _Found(start, answer, (), "bad_shape", pairs)
    return _Found(start, answer, tuple(pairs), None, "")


def _pairs(value: Any) -> list[tuple[str, str]] | str:
    """(text, label) pairs from a decoded answer, or what is wrong with its shape."""
    if isinstance(value, list):
        return _from_objects(value, "the answer")
    if not isinstance(value, dict):
        return f"the answer is {_kind(value)}, expected an object or a list"
    wrapper = next((k for k in value if k.lower() == "entities"), None)
    if wrapper is not None:
        inner = value[wrapper]
        if isinstance(inner, dict):
            return _from_label_map(inner, '"entities"')
        if isinstance(inner, list):
            return _from_objects(inner, '"entities"')
        return f'"entities" is {_kind(inner)}, expected an object of type -> texts or a list of entities'
    single = _text_and_label(value)
    if isinstance(single, tuple) and all(isinstance(v, str) for v in single):
        return [single]
    return _from_label_map(value, "the answer")


def _from_label_map(d: dict[str, Any], where: str) -> list[tuple[str, str]] | str:
    pairs: list[tuple[str, str]] = []
    for label, texts in d.items():
        if isinstance(texts, str):
            pairs.append((texts, label))
        elif isinstance(texts, list):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    return f"{where}[{label!r}][{i}] is {_kind(t)}, expected a string"
                pairs.append((t, label))
        else:
            return f"{where}[{label!r}] is {_kind(texts)}, expected a string or a list of strings"
    return pairs


def _from_objects(items: list[Any], where: str) -> list[tuple[str, str]] | str:
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"{where}[{i}] is {_kind(item)}, expected an object with a text and a label"
        got = _text_and_label(item)
        if isinstance(got, str):
            return f"{where}[{i}] {got}"
        text, label = got
        if not isinstance(text, str) or not isinstance(label, str):
            bad = text if not isinstance(text, str) else label
            return f"{where}[{i}] has {_kind(bad)} where a string was expected"
        pairs.append((text, label))
    return pairs


def _text_and_label(item: dict[str, Any]) -> tuple[Any, Any] | str:
    keys = {k.lower(): v for k, v in item.items()}
    text = next((keys[k] for k in _TEXT_KEYS if k in keys), _MISSING)
    label = next((keys[k] for k in _LABEL_KEYS if k in keys), _MISSING)
    if text is _MISSING:
        return f"has no text (one of {', '.join(_TEXT_KEYS)})"
    if label is _MISSING:
        return f"has no label (one of {', '.join(_LABEL_KEYS)})"
    return text, label


_MISSING = object()


def _mentions(pairs: tuple[tuple[str, str], ...], keep_blank: bool) -> tuple[Mention, ...]:
    out: list[Mention] = []
    for text, label in pairs:
        text, label = text.strip(), label.strip()
        if not label or not (text or keep_blank):
            continue
        try:
            out.append(Mention(text=text, label=label))
        except ValueError:  # the contract's limits: label length, unencodable strings
            continue
    return tuple(out)


def _kind(value: Any) -> str:
    try:
        shown = repr(value)
    except RecursionError:  # depth is bounded before this, but the caller's stack may be nearly full
        shown = "[...]" if isinstance(value, list) else "{...}"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{type(value).__name__} {shown}"


def ground(text: str, mentions: Iterable[Mention]) -> Grounded:
    """One span in ``text`` per mention; mentions found nowhere are ``ungrounded`` (see module docs).

    Work is bounded: one search of ``text`` per distinct surface string (C speed; plain ``str.find``
    for ASCII), then amortized O(log n) per occurrence and per mention, since an occurrence found
    taken is never looked at again (claims only grow)."""
    mentions = list(mentions)
    searches: dict[str, _Occurrences | None] = {}
    covered = bytearray(len(text))  # 1 where a claimed span lies; claimed spans are disjoint
    lowered: list[str] = []  # text.lower(), computed once if an ASCII case-insensitive search needs it
    placed: dict[int, Entity] = {}
    # Longest surface first: "Oyelaran" must not claim the inside of "Marcus Oyelaran" listed with it.
    for i in sorted(range(len(mentions)), key=lambda i: -len(mentions[i].text)):
        m = mentions[i]
        if not m.text:  # an empty mention is nowhere, and would be found everywhere
            continue
        if m.text not in searches:
            tier = _best_tier(text, m.text, lowered)
            searches[m.text] = _Occurrences(tier) if tier else None
        occurrences = searches[m.text]
        if occurrences is None:
            continue
        start, end = occurrences.pick(covered)
        try:
            placed[i] = Entity(text=text[start:end], label=m.label, start=start, end=end)
        except ValueError:  # the passage's span breaks the contract (e.g. a lone surrogate)
            continue
        occurrences.cursor = end
    entities = tuple(placed[i] for i in range(len(mentions)) if i in placed)
    ungrounded = tuple(m for i, m in enumerate(mentions) if i not in placed)
    return Grounded(entities, ungrounded)


class _Occurrences:
    """The occurrences of one surface string (its best tier, in text order) and where the next may start."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans
        self.starts = [s for s, _ in spans]
        # Union-find "next candidate" pointers: an occurrence found taken is skipped from then on.
        self.next = list(range(len(spans) + 1))
        self.cursor = 0

    def _free_from(self, k: int, covered: bytearray) -> int | None:
        nxt, spans = self.next, self.spans
        while True:
            root = k
            while nxt[root] != root:
                root = nxt[root]
            while nxt[k] != root:  # path compression
                nxt[k], k = root, nxt[k]
            if root == len(spans):
                return None
            start, end = spans[root]
            if covered.find(1, start, end) == -1:
                return root
            nxt[root] = root + 1  # taken for good: claims are never released
            k = root

    def pick(self, covered: bytearray) -> tuple[int, int]:
        """The first free occurrence at or after the cursor, else the first free one (both claimed in
        ``covered``), else the first one, shared."""
        k = self._free_from(bisect_left(self.starts, self.cursor), covered)
        if k is None:
            k = self._free_from(0, covered)
        if k is None:
            span = self.spans[0]
        else:
            span = self.spans[k]
            covered[span[0] : span[1]] = b"\x01" * (span[1] - span[0])
        return span


def _best_tier(text: str, surface: str, lowered: list[str]) -> list[tuple[int, int]]:
    """The occurrences in the best tier that has any: exact on word boundaries, case-insensitive on word
    boundaries, exact inside a word, case-insensitive inside a word; in text order."""
    exact: list[tuple[int, int]] = []
    i = text.find(surface)
    while i != -1:
        exact.append((i, i + len(surface)))
        i = text.find(surface, i + 1)
    exact_on = [s for s in exact if _on_word_boundaries(text, *s)]
    if exact_on:
        return exact_on
    folded = [s for s in _folded_spans(text, surface, lowered) if text[s[0] : s[1]] != surface]
    folded_on = [s for s in folded if _on_word_boundaries(text, *s)]
    if folded_on:
        return folded_on
    exact_inside = [s for s in exact if not _on_word_boundaries(text, *s)]
    return exact_inside or [s for s in folded if not _on_word_boundaries(text, *s)]


def _folded_spans(text: str, surface: str, lowered: list[str]) -> list[tuple[int, int]]:
    """Non-overlapping case-insensitive matches, as ``re.finditer(..., re.IGNORECASE)`` finds them."""
    if not (text.isascii() and surface.isascii()):
        return [m.span() for m in re.finditer(re.escape(surface), text, re.IGNORECASE)]
    # ASCII on both sides: lower-casing is one character for one, so str.find gives the same spans.
    if not lowered:
        lowered.append(text.lower())
    low, needle, spans = lowered[0], surface.lower(), []
    i = low.find(needle)
    while i != -1:
        spans.append((i, i + len(needle)))
        i = low.find(needle, i + len(needle))
    return spans


def _on_word_boundaries(text: str, start: int, end: int) -> bool:
    # A boundary is broken only where word characters meet: "Art" in "Bart", not "(Ada" in "x(Ada".
    left = start == 0 or not (_is_word(text[start - 1]) and _is_word(text[start]))
    right = end == len(text) or not (_is_word(text[end - 1]) and _is_word(text[end]))
    return left and right


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"
