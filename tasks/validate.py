"""CG step 2: structural checks of the teacher's annotations, every failed check a reason code.

Checks per CoT record (all of them are run, so a rejection lists every reason that applies):

- ``parse_error``: the completion has no readable answer; ``no_reasoning``: nothing before the answer;
- ``reasoning_too_long`` / ``answer_too_long`` / ``too_many_entities``: over the configured limits (the
  reasoning's in characters, and in tokens of ``tokenizer`` with ``max_reasoning_tokens``: concise chains);
- ``ungrounded_entity``: an entity text that does not occur in the passage;
- ``label_not_in_schema``: a label outside the passage's entity types (when it has a list);
- ``entity_not_in_reasoning``: the reasoning never mentions an extracted entity (case-insensitive);
- ``duplicate_entity`` / ``conflicting_labels``: one span listed twice with the same / another label.

Output (``cot/valid/validate/<hash>``): the records that pass every check, and a rejects file. With a
``tokenizer``, the stats hold ``reasoning_tokens``: histograms of the reasoning's length in tokens of the
records checked and of those kept (``length_histogram``), which the dataset card shows.

Usage::

    python -m tasks.validate --config validate.yaml      # input: the annotate output's address
"""

from __future__ import annotations

from collections import Counter

from schemas import CoTRecord, Rejection, RejectReason, ValidateConfig, config_hash, output_address
from tasks.errors import RnerError
from tasks.extract import load_tokenizer, token_counter
from tasks.llm_stage import Progress
from tasks.parse import parse_completion
from tasks.stage_cli import stage_main
from tasks.store import Published, Store

LENGTH_BINS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
"""Upper edges of the reasoning-length histogram's bins, in tokens; a last bin holds the longer ones."""


def length_histogram(lengths: list[int]) -> dict[str, int]:
    """How many of ``lengths`` fall in each bin: ``≤64``, ``≤128``, ..., ``>8192`` (all bins, empty ones too)."""
    bins = {f"≤{edge}": 0 for edge in LENGTH_BINS} | {f">{LENGTH_BINS[-1]}": 0}
    for n in lengths:
        edge = next((e for e in LENGTH_BINS if n <= e), None)
        bins[f"≤{edge}" if edge is not None else f">{LENGTH_BINS[-1]}"] += 1
    return bins


def check(
    record: CoTRecord, config: ValidateConfig, reasoning_tokens: int | None = None
) -> tuple[list[RejectReason], str]:
    """The reasons ``record`` fails, and a detail line naming the offending entities (``reasoning_tokens``:
    its reasoning's length in tokens, for ``max_reasoning_tokens``)."""
    reasons: list[RejectReason] = []
    details: list[str] = []
    if record.parse_error is not None:
        reasons.append("parse_error")
        details.append(record.parse_error)
    if not record.reasoning.strip():
        reasons.append("no_reasoning")
    cap = config.max_reasoning_tokens
    over_tokens = cap is not None and reasoning_tokens is not None and reasoning_tokens > cap
    if len(record.reasoning) > config.max_reasoning_chars or over_tokens:
        reasons.append("reasoning_too_long")
    if over_tokens:
        details.append(f"reasoning is {reasoning_tokens} tokens (max_reasoning_tokens {cap})")
    answer = parse_completion(record.completion).answer or ""
    if len(answer) > config.max_answer_chars:
        reasons.append("answer_too_long")
    if len(record.entities) + len(record.ungrounded) > config.max_entities:
        reasons.append("too_many_entities")
    if record.ungrounded:
        reasons.append("ungrounded_entity")
        details.append("not in passage: " + ", ".join(repr(m.text) for m in record.ungrounded))
    if record.labels:
        outside = sorted({e.label for e in (*record.entities, *record.ungrounded)} - set(record.labels))
        if outside:
            reasons.append("label_not_in_schema")
            details.append("labels outside the schema: " + ", ".join(outside))
    if config.require_mentions_in_reasoning:
        folded = record.reasoning.casefold()
        unmentioned = [e.text for e in record.entities if e.text.casefold() not in folded]
        if unmentioned:
            reasons.append("entity_not_in_reasoning")
            details.append("not in reasoning: " + ", ".join(repr(t) for t in unmentioned))
    labels_per_span: dict[tuple[int, int], list[str]] = {}
    for e in record.entities:
        labels_per_span.setdefault((e.start, e.end), []).append(e.label)
    if any(len(labels) != len(set(labels)) for labels in labels_per_span.values()):
        reasons.append("duplicate_entity")
    if any(len(set(labels)) > 1 for labels in labels_per_span.values()):
        reasons.append("conflicting_labels")
    return reasons, "; ".join(details)


def run(config: ValidateConfig, store: Store, *, progress: Progress | None = None) -> Published:
    if config.input is None:
        raise RnerError("validate needs `input`: the address of an annotate output")
    source = store.load(config.input)
    out = store.output(output_address("validate", config_hash(config), [source.digest], prefix="cot/valid"))
    if (published := out.published()) is not None:
        return published
    valid: list[CoTRecord] = []
    rejects: list[Rejection] = []
    records: list[CoTRecord] = list(store.records(source.manifest))  # type: ignore[arg-type]
    lengths = None
    if config.tokenizer is not None:
        lengths = token_counter(load_tokenizer(config.tokenizer, store.settings))([r.reasoning for r in records])
    kept_lengths = []
    for i, record in enumerate(records):
        tokens = lengths[i] if lengths is not None else None
        reasons, detail = check(record, config, tokens)
        if reasons:
            rejects.append(Rejection(id=record.id, stage="validate", reasons=reasons, detail=detail))
        else:
            valid.append(record)
            kept_lengths += [tokens] if tokens is not None else []
    if progress:
        progress(len(valid) + len(rejects), len(valid) + len(rejects))
    stats = {
        "checked": len(valid) + len(rejects),
        "valid": len(valid),
        "rejected": len(rejects),
        "reasons": dict(Counter(reason for r in rejects for reason in r.reasons)),
    }
    if lengths is not None:
        stats["reasoning_tokens"] = {"checked": length_histogram(lengths), "valid": length_histogram(kept_lengths)}
    files = [out.write("valid", valid, CoTRecord), out.write("rejects", rejects, Rejection, role="rejects")]
    return out.publish(kind="cot", stage="validate", config=config, files=files, inputs=[source.ref], stats=stats)


main = stage_main(ValidateConfig, run)

if __name__ == "__main__":
    main()
