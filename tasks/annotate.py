"""CG step 1: a teacher LLM annotates passages with step-by-step reasoning and entities.

Input: raw passage JSONL files under a store prefix (one ``Passage`` per line: id, text, optional
entity-type list ``labels``; Pile-NER style), or a published ``passages``/``ner`` output. Every line is
validated before any request is sent, so a malformed file fails with ``file:line`` and costs nothing.
Passages with empty text are skipped and counted; longer than ``max_passage_chars`` are rejected with
``text_too_long`` (never truncated). Each remaining passage gets one request with the teacher prompt
(``tasks.prompts.teacher_messages``); the completion is parsed and grounded into a ``CoTRecord`` — parse
failures are kept as records with ``parse_error`` set, for validate to count. With ``samples_per_passage`` N > 1
each passage gets N requests, differing only by seed (``draws``), and N records ``<passage id>#<k>``; publish
keeps the shortest that passes.

Output (``cot/raw/annotate/<hash>``): CoTRecord shards, a rejects file, stats with token usage.

Usage::

    python -m tasks.annotate --config annotate.yaml
    published = run(AnnotateConfig.preset("smoke", input="raw/passages"), Store.from_settings())
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import (
    AnnotateConfig,
    CoTRecord,
    Endpoint,
    InputRef,
    Passage,
    Rejection,
    SamplingParams,
    config_hash,
    output_address,
)
from schemas.base import sha256_hex
from tasks.jsonl import parse_lines
from tasks.llm import ChatResult
from tasks.llm_stage import Progress, collect_shards, map_requests, pending_shards, serving
from tasks.parse import ground, parse_completion
from tasks.prompts import INSTRUCTION, TEACHER_GUIDANCE, prompt_digest, teacher_messages
from tasks.stage_cli import stage_main
from tasks.store import Published, Store, StoreError

PROMPT = prompt_digest(INSTRUCTION, TEACHER_GUIDANCE)


class PassageInputError(StoreError):
    """The passages to annotate cannot be read."""


def load_passages(store: Store, source: str, only: Sequence[str] = ()) -> tuple[list[Passage], list[InputRef]]:
    """Passages from a published output, or from the raw JSONL files under a prefix (in path order;
    just the files in ``only`` when it is given)."""
    published = store.find(source)
    if published is not None:
        passages = [
            Passage(id=r.id, text=r.text, labels=r.labels, source=r.source)  # type: ignore[attr-defined]
            for r in store.records(published.manifest)
        ]
        refs = [published.ref]
    else:
        paths = [p for p in store.list(source) if p.endswith(".jsonl")]
        if only:
            missing = sorted(set(only) - set(paths))
            if missing:
                raise PassageInputError(f"not raw passage files under {store.uri(source)}: {missing}")
            paths = [p for p in paths if p in set(only)]
        if not paths:
            raise PassageInputError(f"no passages at {store.uri(source)}: no manifest and no .jsonl files")
        passages, refs = [], []
        for path in paths:
            data = store.get(path)
            passages.extend(parse_lines(data.splitlines(), Passage, store.uri(path)))
            refs.append(InputRef(address=path, digest=sha256_hex(data)))
    repeated = [i for i, n in Counter(p.id for p in passages).items() if n > 1]
    if repeated:
        raise PassageInputError(f"passage ids must be unique under {store.uri(source)}; repeated: {repeated[:5]}")
    return passages, refs


def screen(passages: list[Passage], max_chars: int) -> tuple[list[Passage], list[Rejection]]:
    keep, rejects = [], []
    for p in passages:
        if not p.text.strip():
            rejects.append(Rejection(id=p.id, stage="annotate", reasons=["empty_text"]))
        elif len(p.text) > max_chars:
            detail = f"{len(p.text)} characters > max_passage_chars {max_chars}"
            rejects.append(Rejection(id=p.id, stage="annotate", reasons=["text_too_long"], detail=detail))
        else:
            keep.append(p)
    return keep, rejects


@dataclass(frozen=True)
class Draw:
    """One teacher request: a passage and which of its samples (``None``: its only one, asked as ever)."""

    passage: Passage
    sample: int | None = None

    def sampling(self, config: AnnotateConfig) -> SamplingParams:
        """The config's sampling, seeded ``seed + k`` for sample k: the samples of a passage must be distinct
        requests (one request key would replay one answer N times) and drawn again alike on a rerun."""
        if self.sample is None:
            return config.sampling
        return config.sampling.model_copy(update={"seed": (config.sampling.seed or 0) + self.sample})


def draws(passages: Sequence[Passage], samples: int) -> list[Draw]:
    """The requests for ``samples`` chains per passage, a passage's samples side by side (in one shard as far as
    the shard size allows); one per passage, unnumbered, for a single sample."""
    if samples == 1:
        return [Draw(p) for p in passages]
    return [Draw(p, k) for p in passages for k in range(samples)]


def cot_record(draw: Draw, result: ChatResult, model: str, config: AnnotateConfig) -> CoTRecord:
    passage = draw.passage
    parsed = parse_completion(result.text)
    grounded = ground(passage.text, parsed.mentions)
    return CoTRecord(
        id=passage.id if draw.sample is None else f"{passage.id}#{draw.sample}",
        passage_id=None if draw.sample is None else passage.id,
        text=passage.text,
        labels=passage.labels,
        source=passage.source,
        reasoning=parsed.reasoning or "",
        entities=grounded.entities,
        ungrounded=grounded.ungrounded,
        completion=result.text,
        parse_error=None if parsed.ok else f"{parsed.reason}: {parsed.detail}",
        teacher=result.generation(model, draw.sampling(config)),
    )


def run(
    config: AnnotateConfig,
    store: Store,
    *,
    endpoint: Endpoint | None = None,
    progress: Progress | None = None,
) -> Published:
    if config.input is None:
        raise PassageInputError("annotate needs `input`: a prefix of raw passage files or a published output")
    passages, refs = load_passages(store, config.input, config.only)
    digest = sha256_hex(config_hash(config) + PROMPT)
    out = store.output(output_address("annotate", digest, [r.digest for r in refs], prefix="cot/raw"))
    if (published := out.published()) is not None:
        return published
    keep, rejects = screen(passages, config.max_passage_chars)
    requests = draws(keep, config.samples_per_passage)
    if pending_shards(out, requests, config.shard_size):
        with serving(config.teacher, endpoint, settings=store.settings) as ep:
            map_requests(
                out,
                requests,
                config=config,
                endpoint=ep,
                messages=lambda d: teacher_messages(d.passage.text, d.passage.labels),
                build=lambda d, r: cot_record(d, r, ep.model, config),
                record_type=CoTRecord,
                progress=progress,
                sampling=lambda d: d.sampling(config),
            )
    shards, records, usage = collect_shards(out, lambda r: r.teacher)
    stats = {
        "passages": len(passages),
        "annotated": len(records),
        "parse_errors": sum(r.parse_error is not None for r in records),
        "parse_reasons": dict(Counter(r.parse_error.split(":", 1)[0] for r in records if r.parse_error)),
        "rejected": dict(Counter(reason for r in rejects for reason in r.reasons)),
        **usage,
        "prompt": PROMPT,
    }
    files = [*shards, out.write("rejects", rejects, Rejection, role="rejects")]
    return out.publish(kind="cot", stage="annotate", config=config, files=files, inputs=refs, stats=stats)


main = stage_main(AnnotateConfig, run)

if __name__ == "__main__":
    main()
