"""CG step 2: structural checks of the teacher's annotations, every failed check a reason code.

Checks per CoT record (all of them are run, so a rejection lists every reason that applies):

- ``parse_error``: the completion has no readable answer; ``no_reasoning``: nothing before the answer;
- ``reasoning_too_long`` / ``answer_too_long`` / ``too_many_entities``: over the configured limits;
- ``ungrounded_entity``: an entity text that does not occur in the passage;
- ``label_not_in_schema``: a label outside the passage's entity types (when it has a list);
- ``entity_not_in_reasoning``: the reasoning never mentions an extracted entity (case-insensitive);
- ``duplicate_entity`` / ``conflicting_labels``: one span listed twice with the same / another label.

Output (``cot/valid/validate/<hash>``): the records that pass every check, and a rejects file.

Usage::

    python -m tasks.validate --config validate.yaml      # input: the annotate output's address
"""

from __future__ import annotations

from collections import Counter

from schemas import CoTRecord, Rejection, RejectReason, ValidateConfig, config_hash, output_address
from tasks.errors import RnerError
from tasks.llm_stage import Progress
from tasks.parse import parse_completion
from tasks.stage_cli import stage_main
from tasks.store import Published, Store


def check(record: CoTRecord, config: ValidateConfig) -> tuple[list[RejectReason], str]:
    """The reasons ``record`` fails, and a detail line naming the offending entities."""
    reasons: list[RejectReason] = []
    details: list[str] = []
    if record.parse_error is not None:
        reasons.append("parse_error")
        details.append(record.parse_error)
    if not record.reasoning.strip():
        reasons.append("no_reasoning")
    if len(record.reasoning) > config.max_reasoning_chars:
        reasons.append("reasoning_too_long")
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
    for record in store.records(source.manifest):
        reasons, detail = check(record, config)  # type: ignore[arg-type]
        if reasons:
            rejects.append(Rejection(id=record.id, stage="validate", reasons=reasons, detail=detail))
        else:
            valid.append(record)  # type: ignore[arg-type]
    if progress:
        progress(len(valid) + len(rejects), len(valid) + len(rejects))
    stats = {
        "checked": len(valid) + len(rejects),
        "valid": len(valid),
        "rejected": len(rejects),
        "reasons": dict(Counter(reason for r in rejects for reason in r.reasons)),
    }
    files = [out.write("valid", valid, CoTRecord), out.write("rejects", rejects, Rejection, role="rejects")]
    return out.publish(kind="cot", stage="validate", config=config, files=files, inputs=[source.ref], stats=stats)


main = stage_main(ValidateConfig, run)

if __name__ == "__main__":
    main()
