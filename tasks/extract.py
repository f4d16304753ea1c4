"""Entity extraction for users: character offsets into the original text, long texts in overlapping chunks.

Usage::

    from tasks.extract import Extractor

    with Extractor("default") as ex:               # a model reference, run in-process with transformers
        [found] = ex.extract(["Ada Lovelace met Charles Babbage in London."], ["person", "location"])
    found.entities     # (Entity(text='Ada Lovelace', label='person', start=0, end=12), ...)
    found.reasoning    # the model's reasoning, one entry per chunk

    Extractor(VLLMLaunch(model="store:models/re/sft/abc"))   # a vLLM server, started for the with-block
    Extractor(Endpoint(base_url="http://h:8000/v1", model="ner"), tokenizer="/models/ner", context_tokens=32768)

    rner extract --model default --labels "person,organization" --text "..."
    rner extract --model ner --base-url http://h:8000/v1 --tokenizer /models/ner --context 32768 \\
        --labels person --input docs.jsonl --output found.jsonl --reasoning
    rner extract --model outputs/qwen3-8b-grpo --vllm --prompt paper --labels person --text "..."
    rner extract --model ner --base-url http://h:8000/v1 --tokenizer /models/ner --context 32768 \\
        --reasoning-budget 128 --labels person --text "..."     # think at most 128 tokens per chunk
    rner extract --labels person,location --definitions types.yaml --text "..."   # person: a named human being

Reasoning budget. ``reasoning_budget`` (tokens, ``--reasoning-budget``) bounds the thinking of each chunk by
budget forcing (``tasks.budget``): the reasoning is cut at the budget if the model has not closed it, and the
answer generated after it in up to ``max_tokens`` more. 0 answers without thinking. It needs a model asked to
reason (not ``with_cot=False``).

The model is asked with the instruction it was trained with: ``prompt`` ``rner`` (ours, the default; with
``with_cot=False``, ``--answer-only``, for a model trained on answers alone) or ``paper`` (the released one,
for the authors' checkpoints); see ``tasks.prompts``. Entity types may come with one-line definitions
(``definitions=``, ``--definitions FILE``: a YAML or JSON mapping of type to definition), listed under the types in
the ``rner`` instruction; the ``paper`` instruction has no place for them and refuses them.

Inputs and outputs. ``extract`` takes texts (with the ``labels`` given) or ``Passage`` records (their own
``labels``, else the given ones), batched: every chunk of every text is sent at once, at most ``concurrency``
requests in flight (in-process: ``batch_size`` per forward pass). A text without entity types is an error.
Results come back in input order as ``Extraction``s whose ``entities`` (text, label, start, end, with
``text[start:end] == entity.text``) are sorted by position. Only the types asked for are kept, matched
case-insensitively and returned as asked; mentions that are not in the text or not of an asked type are in
``dropped``. A chunk whose answer does not parse contributes nothing and is named in ``failures`` with the
start of what the model wrote (``raw`` has all of it; the CLI's ``--show-raw`` writes it as ``completion``); it
never raises. Generation ends where the answer object closes (``tasks.prompts.ANSWER_STOPS``), so a model that
writes on after its answer does not run to ``max_tokens``. The CLI shows progress on stderr: a bar on a terminal,
plain lines in a log (``tasks.progress``). ``--input`` is a ``.jsonl`` file of ``Passage`` lines (``id``,
``text``, optional ``labels``) or a ``.txt`` file read as one text; the CLI writes one ``Prediction`` line per
text, which ``rner score`` reads.

Long texts. The model sees at most ``context_tokens``: the prompt (chat template, instruction, entity types,
text) plus ``max_tokens`` for the answer. A text that does not fit is read in chunks cut at sentence
boundaries (after . ! ? … and closing quotes, and at line breaks); a sentence longer than a chunk is cut
between words, a word longer than a chunk between characters. Nothing is ever truncated. Consecutive chunks
share up to ``overlap_tokens`` of whole sentences, so an entity near a border is seen whole by one of them.
Tokens are counted with the model's tokenizer, and each chunk is checked whole against its budget (pieces
counted apart can tokenize differently where they meet). Entities are mapped back to the original text and
merged: one span and type found by two chunks is one entity, and an entity that a chunk's edge cut short is
dropped when another chunk found it whole. Defaults: ``context_tokens`` is a ``VLLMLaunch``'s
``max_model_len`` or a local model's ``max_position_embeddings`` (an endpoint needs it given, and a
``tokenizer``); ``overlap_tokens`` is a quarter of a chunk, at most 256.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

import typer
from pydantic import ValidationError

from schemas import Endpoint, Entity, Mention, Passage, Prediction, SamplingParams, TransformersRunner, VLLMLaunch
from schemas.base import MAX_NAME_CHARS
from schemas.configs import DEFAULT_MODEL, Generator, PromptStyle
from schemas.service import EntityType
from tasks.budget import FORCING_TOKENS, ask, budget_complete, check_budget
from tasks.config import ConfigError, read_mapping
from tasks.errors import RnerError
from tasks.jsonl import describe, parse_lines
from tasks.llm import LLMClient
from tasks.llm_stage import Progress
from tasks.models import resolve_model, trained_without_reasoning
from tasks.parse import ground, parse_completion
from tasks.progress import progress_bar
from tasks.prompts import (
    ANSWER_STOPS,
    NO_PLACE_FOR_DEFINITIONS,
    PROMPT_STYLES,
    Message,
    ner_messages,
    render_prompt,
)
from tasks.serving import serve
from tasks.settings import Settings
from tasks.stage_cli import check_writable, clean_errors

MARGIN_TOKENS = 8
"""Kept free in every prompt: the text can tokenize a token or two differently where it joins the template."""
MIN_CHUNK_TOKENS = 32
DEFAULT_MAX_TOKENS = 512
"""Answer budget per chunk: a sentence's reasoning and answer fit, and a model that never answers gives up after
about 20 s on two CPU cores with the embedded model (generation also ends where the answer closes)."""
MAX_OVERLAP_TOKENS = 256

Count = Callable[[list[str]], list[int]]
Span = tuple[int, int]
Key = tuple[int, int, str]
"""An entity found: (start, end, label) in the original text."""
Definitions = tuple[tuple[str, str], ...]
"""Entity types' one-line meanings, (type, definition) in schema order: part of the prompt."""
Job = tuple[str, tuple[str, ...], list[Span], Definitions]
"""One text to extract from: the text, its entity types, its chunks, the types' definitions."""
"""A text to extract from: the text, its entity types, its chunks."""

# A sentence ends after terminal punctuation (and any closing quotes or brackets) followed by whitespace, or
# at a line break. Abbreviations ("Dr. Voss") cut too often rather than too rarely; the overlap covers it.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’)\]]*\s+|\s*\n\s*")
_WORD = re.compile(r"\S+\s*")


class ExtractError(RnerError, ValueError):
    """A request extraction cannot serve: no entity types, a context too small, an unreadable input."""


def load_tokenizer(ref: str, settings: Settings | None = None) -> Any:
    """The tokenizer of a model reference (``default``, a directory, ``s3://``, ``store:`` in ``settings``' store,
    a hub id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(ref, settings))


def token_counter(tokenizer: Any) -> Count:
    """Token counts of texts (no special tokens), one batched tokenizer call."""

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    return count


# --- chunking -----------------------------------------------------------------------------------------


def sentence_spans(text: str) -> list[Span]:
    """Character spans of the sentences of ``text``, each with the whitespace after it; together all of it."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    bounds = [0, *(c for c in cuts if 0 < c < len(text)), len(text)]
    return [(a, b) for a, b in pairwise(bounds) if a < b]


def plan_chunks(text: str, count: Count, budget: int, overlap: int) -> list[Span]:
    """The character spans ``text`` is read in: each at most ``budget`` tokens, whitespace at the edges left
    out, consecutive ones sharing up to ``overlap`` tokens of whole units (sentences, else words)."""
    units = list(_units(text, sentence_spans(text), count, budget, words=True))
    chunks: list[Span] = []
    i = 0
    while i < len(units):
        j, used = i, 0
        while j < len(units) and used + units[j][2] <= budget:
            used += units[j][2]
            j += 1
        while j - i > 1 and count([text[units[i][0] : units[j - 1][1]].strip()])[0] > budget:
            j -= 1
        chunks.append(_stripped(text, units[i][0], units[j - 1][1]))
        if j == len(units):
            break
        # Step back over whole units, keeping room for the next unit, so the next chunk always reaches further.
        k, shared, room = j, 0, min(overlap, budget - units[j][2])
        while k - 1 > i and shared + units[k - 1][2] <= room:
            k -= 1
            shared += units[k][2]
        i = k
    return [c for c in chunks if c[0] < c[1]]


def _units(text: str, spans: list[Span], count: Count, budget: int, *, words: bool) -> Iterator[tuple[int, int, int]]:
    """(start, end, tokens) pieces of ``text`` that fit ``budget``: the spans, else their words, else characters."""
    for (start, end), n in zip(spans, count([text[a:b] for a, b in spans]), strict=True):
        if n <= budget:
            yield start, end, n
        elif words:
            yield from _units(text, [m.span() for m in _WORD.finditer(text, start, end)], count, budget, words=False)
        else:
            yield from _character_pieces(text, start, end, count, budget)


def _character_pieces(text: str, start: int, end: int, count: Count, budget: int) -> Iterator[tuple[int, int, int]]:
    """A word too long for one chunk, in the longest character prefixes that fit (binary search)."""
    while start < end:
        lo, hi = start + 1, end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count([text[start:mid]])[0] <= budget:
                lo = mid
            else:
                hi = mid - 1
        yield start, lo, count([text[start:lo]])[0]
        start = lo


def _stripped(text: str, start: int, end: int) -> Span:
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extraction:
    entities: tuple[Entity, ...]
    chunks: tuple[Span, ...]
    reasoning: tuple[str, ...]
    """One per chunk ("" where the model gave none)."""
    failures: tuple[str, ...] = ()
    """One per chunk whose answer did not parse: where it is and why."""
    dropped: tuple[Mention, ...] = ()
    prompt_tokens: int = 0
    """Over all chunks, as the generator counted them."""
    completion_tokens: int = 0
    raw: tuple[str, ...] = ()
    """The model's answer per chunk, as it wrote it."""

    def prediction(self, id: str, *, reasoning: bool = False, raw: bool = False) -> Prediction:
        """The extraction as a ``Prediction`` record (what the CLI writes), the reasoning and the raw answers
        (``completion``, chunk after chunk) only if asked."""
        thoughts = "\n\n".join(r for r in self.reasoning if r) if reasoning else ""
        failures = "; ".join(self.failures) or None
        completion = "\n\n".join(self.raw) if raw else None
        return Prediction(
            id=id, entities=self.entities, reasoning=thoughts or None, parse_error=failures, completion=completion
        )


def merge(text: str, labels: Sequence[str], chunks: Sequence[Span], answers: Sequence[str]) -> Extraction:
    """The answers for the chunks of ``text``, grounded in their chunk, mapped back and merged (see module docs)."""
    asked = {label.casefold(): label for label in labels}
    found: dict[Key, Span] = {}  # entity -> the chunk that found it first
    reasoning, failures, dropped = [], [], []
    for (start, end), answer in zip(chunks, answers, strict=True):
        parsed = parse_completion(answer)
        reasoning.append(parsed.reasoning or "")
        if not parsed.ok:
            where = f"chunk [{start}, {end})"
            failures.append(f"{where}: {parsed.reason}: {parsed.detail}; the model wrote {_head(answer)}")
        wanted = []
        for m in parsed.mentions:
            if m.label.casefold() in asked:
                wanted.append(Mention(text=m.text, label=asked[m.label.casefold()]))
            else:
                dropped.append(m)
        grounded = ground(text[start:end], wanted)
        dropped.extend(grounded.ungrounded)
        for e in grounded.entities:
            found.setdefault((e.start + start, e.end + start, e.label), (start, end))
    first, last = (chunks[0][0], chunks[-1][1]) if chunks else (0, 0)
    kept = [key for key, chunk in found.items() if not _cut_short(key, chunk, first, last, found)]
    entities = tuple(Entity(text=text[s:e], label=label, start=s, end=e) for s, e, label in sorted(kept))
    return Extraction(entities, tuple(chunks), tuple(reasoning), tuple(failures), tuple(dropped), raw=tuple(answers))


def _head(answer: str, limit: int = 200) -> str:
    """The start of a raw answer, quoted, for an error line (``--show-raw`` gives all of it)."""
    return repr(answer if len(answer) <= limit else answer[:limit] + "…")


def _cut_short(key: Key, chunk: Span, first: int, last: int, found: dict[Key, Span]) -> bool:
    """Whether an entity touches an edge of its chunk that is inside the text, and another chunk found a
    longer entity of the same type around it (the whole of what the edge cut)."""
    start, end, label = key
    if not ((start == chunk[0] and start != first) or (end == chunk[1] and end != last)):
        return False
    return any(s <= start and end <= e and (s, e) != (start, end) and lab == label for s, e, lab in found)


# --- the extractor ------------------------------------------------------------------------------------


class Extractor:
    """Entities with offsets from any generator: a model reference (in-process transformers), a ``VLLMLaunch``
    (served for the ``with`` block), or an ``Endpoint``. Greedy decoding."""

    def __init__(
        self,
        model: Generator | str = DEFAULT_MODEL,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        context_tokens: int | None = None,
        overlap_tokens: int | None = None,
        tokenizer: str | None = None,
        concurrency: int = 16,
        request_timeout_s: float = 600.0,
        max_retries: int = 5,
        prompt: PromptStyle = "rner",
        with_cot: bool = True,
        reasoning_budget: int | None = None,
        state_budget: bool = False,
    ) -> None:
        if prompt not in PROMPT_STYLES:
            raise ExtractError(f"unknown prompt {prompt!r} (known: {', '.join(PROMPT_STYLES)})")
        self.spec = TransformersRunner(model=model) if isinstance(model, str) else model
        self.prompt: PromptStyle = prompt
        self.with_cot = with_cot
        check_budget(reasoning_budget, with_cot=with_cot)
        self.reasoning_budget = reasoning_budget
        if state_budget and reasoning_budget is None:
            raise ExtractError("state_budget: give reasoning_budget, the budget to state in the prompt")
        # A model trained with a stated target length (GRPO's target_length) is asked with its budget stated.
        self.stated_budget = reasoning_budget if state_budget else None
        # Generation ends where the answer object closes: nothing after it is read.
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=ANSWER_STOPS)
        self.context_tokens = context_tokens
        self.overlap_tokens = overlap_tokens
        self.tokenizer_ref = tokenizer
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self._endpoint = self.spec if isinstance(self.spec, Endpoint) else None
        self._stack = ExitStack()
        self._budgets: dict[tuple[tuple[str, ...], Definitions], int] = {}
        self._planning = threading.Lock()

    def __enter__(self) -> Self:
        if isinstance(self.spec, VLLMLaunch):
            self._endpoint = self._stack.enter_context(serve(self.spec))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
        if isinstance(self.spec, VLLMLaunch):
            self._endpoint = None

    @cached_property
    def local(self) -> Any:
        """The in-process generator (``TransformersRunner`` only), loaded on first use."""
        from tasks.generate import LocalGenerator

        assert isinstance(self.spec, TransformersRunner)
        return LocalGenerator(self.spec.model, batch_size=self.spec.batch_size, device=self.spec.device)

    @cached_property
    def tokenizer(self) -> Any:
        if isinstance(self.spec, TransformersRunner):
            return self.local.tokenizer
        ref = self.tokenizer_ref or (self.spec.model if isinstance(self.spec, VLLMLaunch) else None)
        if ref is None:
            raise ExtractError(
                "an endpoint's model is not at hand: give `tokenizer`, a model reference with the same tokenizer "
                "(texts are fitted into the context by counting tokens)"
            )
        return load_tokenizer(ref)

    @cached_property
    def context(self) -> int:
        if self.context_tokens is not None:
            return self.context_tokens
        if isinstance(self.spec, VLLMLaunch):
            return self.spec.max_model_len
        if isinstance(self.spec, TransformersRunner):
            return int(self.local.model.config.max_position_embeddings)
        raise ExtractError("give `context_tokens` for an endpoint: the server's context window (--max-model-len)")

    def budget(self, labels: tuple[str, ...], definitions: Definitions = ()) -> int:
        """Tokens of text a chunk may have with these entity types (and definitions) in the prompt."""
        key = (labels, definitions)
        if key not in self._budgets:
            prompt = render_prompt(self.tokenizer, self.messages("", labels, definitions))
            overhead = token_counter(self.tokenizer)([prompt])[0]
            thinking = 0 if self.reasoning_budget is None else self.reasoning_budget + FORCING_TOKENS
            budget = self.context - self.sampling.max_tokens - thinking - overhead - MARGIN_TOKENS
            if budget < MIN_CHUNK_TOKENS:
                raise ExtractError(
                    f"a context of {self.context} tokens leaves {budget} for the text after the prompt ({overhead}) "
                    f"and the answer (max_tokens {self.sampling.max_tokens}, reasoning budget "
                    f"{self.reasoning_budget}); raise the context or lower max_tokens"
                )
            self._budgets[key] = budget
        return self._budgets[key]

    def messages(self, text: str, labels: Sequence[str], definitions: Definitions = ()) -> list[Message]:
        """The request for one chunk, in the instruction the extractor asks with."""
        meanings = dict(definitions) or None
        return ner_messages(
            text, labels, prompt=self.prompt, with_cot=self.with_cot, definitions=meanings, budget=self.stated_budget
        )

    def chunks(self, text: str, labels: tuple[str, ...], definitions: Definitions = ()) -> list[Span]:
        budget = self.budget(labels, definitions)
        overlap = self.overlap_tokens if self.overlap_tokens is not None else min(budget // 4, MAX_OVERLAP_TOKENS)
        return plan_chunks(text, token_counter(self.tokenizer), budget, overlap)

    def extract(
        self,
        items: Sequence[str | Passage],
        labels: Sequence[str] = (),
        *,
        definitions: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> list[Extraction]:
        """One ``Extraction`` per item, in order; every chunk of every item is generated in one batch.
        ``definitions``: one-line meanings of entity types, put in the prompt wherever their type is asked."""
        if not isinstance(self.spec, TransformersRunner):
            if self._endpoint is None:
                raise ExtractError("a VLLMLaunch model is served for a block: use `with Extractor(...) as extractor:`")
            return asyncio.run(self._extract_on(self._endpoint, items, labels, definitions, progress))
        jobs = self.plan(items, labels, definitions)
        conversations = self._conversations(jobs)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, len(conversations))

        advance(0)  # a first sign of life: the model is loaded and the texts are planned
        if self.reasoning_budget is None:
            completions = self.local.complete(conversations, self.sampling, on_batch=advance)
        else:
            completions = budget_complete(self.local, conversations, self.sampling, self.reasoning_budget, advance)
        return self._merged(jobs, [(c.text, c.prompt_tokens, c.completion_tokens) for c in completions])

    async def extract_async(
        self,
        items: Sequence[str | Passage],
        labels: Sequence[str] = (),
        *,
        client: LLMClient,
        sampling: SamplingParams | None = None,
        definitions: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> list[Extraction]:
        """``extract`` on a client the caller holds (the service shares one, and its concurrency limit, across
        requests), with ``sampling`` instead of the extractor's greedy decoding if given. Chunks are planned in
        a worker thread (tokenizing long texts must not stall the event loop), one plan at a time (a fast
        tokenizer is not safe to call from two threads at once)."""
        jobs = await asyncio.to_thread(self._plan_alone, items, labels, definitions)
        conversations = self._conversations(jobs)
        done = 0
        if progress:
            progress(done, len(conversations))

        async def one(messages: list[Message]) -> tuple[str, int, int]:
            nonlocal done
            result = await ask(client, messages, sampling or self.sampling, self.reasoning_budget)
            done += 1
            if progress:
                progress(done, len(conversations))
            return result.text, result.prompt_tokens, result.completion_tokens

        return self._merged(jobs, list(await asyncio.gather(*(one(m) for m in conversations))))

    def plan(
        self, items: Sequence[str | Passage], labels: Sequence[str] = (), definitions: Mapping[str, str] | None = None
    ) -> list[Job]:
        """Each item's text, entity types, chunks and definitions; an item without entity types raises
        ``ExtractError``, and so do definitions for the paper's instruction (it has no place for them)."""
        meanings = {label.strip(): definition for label, definition in (definitions or {}).items()}
        if meanings and self.prompt == "paper":
            raise ExtractError(f"definitions: {NO_PLACE_FOR_DEFINITIONS}")
        jobs: list[Job] = []
        for i, item in enumerate(items):
            text, own = (item, ()) if isinstance(item, str) else (item.text, item.labels)
            schema = clean_labels(own or labels)
            if not schema:
                where = f"text {i}" if isinstance(item, str) else f"passage {item.id!r}"
                raise ExtractError(f"{where}: no entity types to extract (give labels, e.g. ['person', 'location'])")
            defined = tuple((label, meanings[label]) for label in schema if label in meanings)
            jobs.append((text, schema, self.chunks(text, schema, defined), defined))
        return jobs

    def _plan_alone(
        self, items: Sequence[str | Passage], labels: Sequence[str], definitions: Mapping[str, str] | None
    ) -> list[Job]:
        with self._planning:
            return self.plan(items, labels, definitions)

    def _conversations(self, jobs: list[Job]) -> list[list[Message]]:
        return [self.messages(text[s:e], schema, defined) for text, schema, chunks, defined in jobs for s, e in chunks]

    @staticmethod
    def _merged(jobs: list[Job], answers: list[tuple[str, int, int]]) -> list[Extraction]:
        """The answers (text, prompt tokens, completion tokens), chunk after chunk, merged per item."""
        results, rest = [], iter(answers)
        for text, schema, chunks, _ in jobs:
            mine = [next(rest) for _ in chunks]
            merged = merge(text, schema, chunks, [answer for answer, _, _ in mine])
            usage = {"prompt_tokens": sum(p for _, p, _ in mine), "completion_tokens": sum(c for _, _, c in mine)}
            results.append(replace(merged, **usage))
        return results

    async def _extract_on(
        self,
        endpoint: Endpoint,
        items: Sequence[str | Passage],
        labels: Sequence[str],
        definitions: Mapping[str, str] | None,
        progress: Progress | None,
    ) -> list[Extraction]:
        async with LLMClient(
            endpoint, concurrency=self.concurrency, timeout_s=self.request_timeout_s, max_retries=self.max_retries
        ) as client:
            return await self.extract_async(items, labels, client=client, definitions=definitions, progress=progress)


def clean_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Entity types stripped, without blanks and repeats, in the order given; one longer than a name may be (as
    imported data's are held to) is an error."""
    cleaned = tuple(dict.fromkeys(label.strip() for label in labels if label.strip()))
    for label in cleaned:
        if len(label) > MAX_NAME_CHARS:
            raise ExtractError(f"entity type {label[:40]!r}... has {len(label)} characters; at most {MAX_NAME_CHARS}")
    return cleaned


# --- command line -------------------------------------------------------------------------------------


def read_inputs(path: Path, labels: tuple[str, ...]) -> list[Passage]:
    """Passages from ``.jsonl`` (one per line) or ``.txt`` (the whole file); bad lines raise with file:line."""
    if path.suffix not in (".txt", ".jsonl"):
        raise ExtractError(f"{path}: expected a .jsonl file (Passage lines) or a .txt file (one text)")
    data = path.read_bytes()
    if not data.strip():
        raise ExtractError(f"{path}: empty: no text to extract from")
    if path.suffix == ".txt":
        try:
            return [Passage(id=path.stem, text=data.decode("utf-8-sig"))]
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise ExtractError(f"{path}:{line}: not UTF-8 text") from None
    lines = data.splitlines()
    passages = list(parse_lines(lines, Passage, str(path)))
    numbers = [n for n, line in enumerate(lines, start=1) if line.strip()]
    for number, passage in zip(numbers, passages, strict=True):
        if not clean_labels(passage.labels) and not labels:
            raise ExtractError(f"{path}:{number}: no entity types: give --labels or a `labels` list on the line")
    return passages


def read_definitions(path: Path, asked: set[str]) -> dict[str, str]:
    """The entity-type definitions in ``path``, a YAML (or JSON) mapping of type to a one-line meaning, for types in
    ``asked``; any other type, an empty or multi-line definition raises naming the file and the type."""
    try:
        mapping = read_mapping(path, "entity-type definition")
    except ConfigError as e:
        raise ExtractError(str(e)) from None
    definitions: dict[str, str] = {}
    for key, value in mapping.items():
        label = str(key).strip()
        if label not in asked:
            raise ExtractError(f"{path}: {label!r}: not an entity type asked for ({', '.join(sorted(asked))})")
        if not isinstance(value, str) or not value.strip():
            raise ExtractError(f"{path}: {label!r}: an empty definition (one line: what counts as a {label})")
        if len(value.strip().splitlines()) > 1:
            raise ExtractError(f"{path}: {label!r}: a definition of several lines; write it on one line")
        try:  # the service's contract for a definition (its length), so both refuse the same ones
            EntityType(name=label, definition=value.strip())
        except ValidationError as e:
            raise ExtractError(f"{path}: {label!r}: {describe(e)}") from None
        definitions[label] = value.strip()
    return definitions


def generator_spec(model: str, base_url: str | None, api_key: str | None, vllm: bool, context: int | None) -> Generator:
    if base_url and vllm:
        raise ExtractError("give --base-url (a running server) or --vllm (start one), not both")
    if base_url:
        return Endpoint(base_url=base_url, model=model, api_key=api_key)
    if vllm:
        return VLLMLaunch(model=model, max_model_len=context) if context else VLLMLaunch(model=model)
    return TransformersRunner(model=model)


ModelOption = Annotated[
    str,
    typer.Option(
        help="Model reference (default, a directory, s3://, store:, a hub id); with --base-url, its name there."
    ),
]


def cli_extract(
    labels: Annotated[str, typer.Option(help='Entity types, comma-separated: "person,organization".')] = "",
    model: ModelOption = DEFAULT_MODEL,
    text: Annotated[str | None, typer.Option(help="The text to extract from.")] = None,
    input_path: Annotated[
        Path | None, typer.Option("--input", help=".jsonl of Passage lines (id, text, labels?) or .txt (one text).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="JSONL file to write (default: stdout).")] = None,
    reasoning: Annotated[bool, typer.Option("--reasoning", help="Include the model's reasoning.")] = False,
    show_raw: Annotated[
        bool, typer.Option("--show-raw", help="Include what the model wrote, as it wrote it (`completion`).")
    ] = False,
    base_url: Annotated[str | None, typer.Option(help="A running OpenAI-compatible server serving --model.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="RNER_API_KEY", help="That server's API key.")] = None,
    vllm: Annotated[bool, typer.Option("--vllm", help="Start a vLLM server for --model for this run.")] = False,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer reference (default: the model's).")] = None,
    context: Annotated[int | None, typer.Option(min=1, help="Context window in tokens (default: the model's).")] = None,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Answer budget per chunk, reasoning included.")
    ] = DEFAULT_MAX_TOKENS,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight to a server.")] = 16,
    prompt: Annotated[
        str, typer.Option(help="The instruction the model was trained with: rner (ours) or paper (the released one).")
    ] = "rner",
    answer_only: Annotated[
        bool,
        typer.Option(
            "--answer-only",
            help="The model was trained on answers alone: ask for no reasoning (a store: model's training config "
            "says so itself).",
        ),
    ] = False,
    reasoning_budget: Annotated[
        int | None,
        typer.Option(help="Most tokens of thinking per chunk, then the answer in up to --max-tokens (0: none)."),
    ] = None,
    state_budget: Annotated[
        bool,
        typer.Option(
            "--state-budget",
            help='Also state --reasoning-budget in the prompt ("Think for at most N tokens."), as a model trained '
            "with GRPO's target_length was asked.",
        ),
    ] = False,
    definitions_path: Annotated[
        Path | None,
        typer.Option(
            "--definitions", help="YAML/JSON mapping of entity type to a one-line definition, put in the prompt."
        ),
    ] = None,
) -> None:
    """Extract entities with character offsets: one JSON line (a Prediction) per text."""
    if (text is None) == (input_path is None):
        raise ExtractError("give --text or --input (exactly one)")
    schema = clean_labels(labels.split(","))
    if text is not None and not schema:
        raise ExtractError("--labels: no entity types to extract (e.g. --labels person,location)")
    if output is not None:
        check_writable(output, "--output")  # now: a bad --output found after the extraction would lose it
    items = [Passage(id="text", text=text)] if text is not None else read_inputs(input_path, schema)  # type: ignore[arg-type]
    definitions = None
    if definitions_path is not None:
        definitions = read_definitions(definitions_path, {t for p in items for t in clean_labels(p.labels) or schema})
        if prompt == "paper":  # now, not once the model is loaded
            raise ExtractError(f"--definitions: {NO_PLACE_FOR_DEFINITIONS} (it is for --prompt rner)")
    spec = generator_spec(model, base_url, api_key, vllm, context)
    if not answer_only and base_url is None and trained_without_reasoning(model):
        answer_only = True
        typer.echo(f"{model} was trained on answers alone (with_cot: false): asking for the answer alone", err=True)
    options = {"max_tokens": max_tokens, "context_tokens": context, "tokenizer": tokenizer, "concurrency": concurrency}
    options |= {"prompt": prompt, "with_cot": not answer_only, "reasoning_budget": reasoning_budget}
    options |= {"state_budget": state_budget}
    with Extractor(spec, **options) as extractor, progress_bar("extracting") as bar:  # type: ignore[arg-type]
        results = extractor.extract(items, schema, definitions=definitions, progress=bar)
    lines = "".join(
        r.prediction(p.id, reasoning=reasoning, raw=show_raw).model_dump_json(exclude_none=True) + "\n"
        for p, r in zip(items, results, strict=True)
    )
    if output is None:
        sys.stdout.write(lines)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(lines)


def main() -> None:
    with clean_errors():
        typer.run(cli_extract)


if __name__ == "__main__":
    main()
