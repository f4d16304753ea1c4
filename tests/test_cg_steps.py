"""CG steps without a server: validation checks, judge score parsing, publishing versions and cards."""

from __future__ import annotations

import threading

import pytest

from schemas import (
    AnnotateConfig,
    CGConfig,
    CoTRecord,
    JudgeConfig,
    JudgeVerdict,
    Passage,
    PublishConfig,
    ValidateConfig,
)
from tasks import publish, validate
from tasks.annotate import PassageInputError, load_passages, screen
from tasks.jsonl import RecordError, dump_jsonl
from tasks.judge import parse_score
from tasks.store import Store

TEXT = "Ada Lovelace met Charles Babbage in London."
GEN = {"model": "teacher", "sampling": {}, "request_key": "k"}
ADA = {"text": "Ada Lovelace", "label": "person", "start": 0, "end": 12}
LONDON = {"text": "London", "label": "location", "start": 36, "end": 42}


def cot(**overrides: object) -> CoTRecord:
    values: dict = {
        "id": "c1",
        "text": TEXT,
        "labels": ["person", "location"],
        "reasoning": "Ada Lovelace is a person. London is a city, a location.",
        "entities": [ADA, LONDON],
        "completion": '<think>...</think>{"entities": {"person": ["Ada Lovelace"], "location": ["London"]}}',
        "teacher": GEN,
        **overrides,
    }
    return CoTRecord.model_validate(values)


@pytest.mark.parametrize(
    ("overrides", "reasons"),
    [
        ({}, []),
        ({"parse_error": "no_json: nothing", "entities": []}, ["parse_error"]),
        ({"reasoning": "  "}, ["no_reasoning", "entity_not_in_reasoning"]),
        ({"ungrounded": [{"text": "Paris", "label": "location"}]}, ["ungrounded_entity"]),
        ({"entities": [ADA, {**LONDON, "label": "city"}]}, ["label_not_in_schema"]),
        ({"reasoning": "Ada Lovelace is a person."}, ["entity_not_in_reasoning"]),
        ({"entities": [ADA, ADA, LONDON]}, ["duplicate_entity"]),
        ({"entities": [ADA, {**ADA, "label": "location"}, LONDON]}, ["conflicting_labels"]),
        ({"reasoning": "ada lovelace and LONDON"}, []),
        ({"labels": []}, []),  # open types: any label goes
    ],
)
def test_validate_checks(overrides: dict, reasons: list[str]) -> None:
    found, _ = validate.check(cot(**overrides), ValidateConfig())
    assert found == reasons


def test_validate_limits_and_details() -> None:
    record = cot(reasoning="x" * 50, ungrounded=[{"text": "Paris", "label": "location"}])
    limits = ValidateConfig(max_reasoning_chars=10, max_answer_chars=5, max_entities=2)
    reasons, detail = validate.check(record, limits)
    assert {"reasoning_too_long", "answer_too_long", "too_many_entities", "ungrounded_entity"} <= set(reasons)
    assert "'Paris'" in detail and "'Ada Lovelace'" in detail


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Coherent and accurate.\nScore: 9", 9),
        ("**Score:** 8.5", 8.5),
        ("The chain is fine. Score: 10.", 10),
        ("score of 7", 7),
        ("I would give it 6 out of 10", 6),
        ("7/10", 7),
        ('{"score": 4, "why": "weak"}', 4),
        ("9", 9),
        ("Score: 3 at first, but on reflection\nScore: 5", 5),
        ("Score: 100", None),
        ("It looks good to me.", None),
        ("", None),
        ("Score: -", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    found, rationale, error = parse_score(reply)
    assert found == score
    assert (error is None) == (score is not None)
    if error:
        assert error.startswith("no_score")
    if reply.startswith("Coherent"):
        assert rationale == "Coherent and accurate."


def test_annotate_reads_raw_files_and_names_bad_lines(store: Store) -> None:
    good = [Passage(id=f"p{i}", text=f"Passage {i}.", labels=["person"]) for i in range(3)]
    store.put("raw/a.jsonl", dump_jsonl(good[:2], Passage))
    store.put("raw/b.jsonl", dump_jsonl(good[2:], Passage))
    store.put("raw/notes.txt", b"ignored")
    passages, refs = load_passages(store, "raw")
    assert [p.id for p in passages] == ["p0", "p1", "p2"]
    assert [r.address for r in refs] == ["raw/a.jsonl", "raw/b.jsonl"]
    store.put("raw/c.jsonl", b'{"id": "p9", "text": "ok"}\n{"id": "p10", "txt": "typo"}\n')
    with pytest.raises(RecordError, match=r"raw/c\.jsonl:2: .*txt"):
        load_passages(store, "raw")
    store.put("raw/c.jsonl", dump_jsonl(good[:1], Passage))
    with pytest.raises(PassageInputError, match="repeated: \\['p0'\\]"):
        load_passages(store, "raw")
    with pytest.raises(PassageInputError, match="no passages at"):
        load_passages(store, "nothing/here")


def test_screen_skips_empty_and_rejects_long_passages() -> None:
    passages = [Passage(id="a", text="fine"), Passage(id="b", text="  "), Passage(id="c", text="x" * 11)]
    keep, rejects = screen(passages, max_chars=10)
    assert [p.id for p in keep] == ["a"]
    assert [(r.id, r.reasons) for r in rejects] == [("b", ("empty_text",)), ("c", ("text_too_long",))]


def test_cg_config_chains_inputs() -> None:
    config = CGConfig.preset("smoke", input="raw/passages")
    assert config.annotate.sampling.max_tokens == AnnotateConfig.preset("smoke").sampling.max_tokens
    assert config.judge == JudgeConfig.preset("smoke")
    with pytest.raises(ValueError, match=r"judge\.input: set only the CG config's `input`"):
        CGConfig.preset("smoke", input="raw", judge={"input": "cot/valid/x"})


def _published_cg_outputs(store: Store, kept_scores: list[float | None]) -> tuple[str, str]:
    """A validate output and a judge output on it, written directly (no server), plus their annotate parent."""
    records = [cot(id=f"c{i}") for i in range(len(kept_scores))]
    annotate_cfg = AnnotateConfig.preset("smoke", teacher={"kind": "endpoint", "base_url": "http://x", "model": "t"})
    annotated = store.output("cot/raw/annotate/fixture")
    annotated.commit_shard("00000", records, CoTRecord)
    stats = {"passages": len(records) + 1, "annotated": len(records), "rejected": {"empty_text": 1}}
    stats |= {"prompt": "p1", "prompt_tokens": 10, "completion_tokens": 20}
    parent = annotated.publish(kind="cot", stage="annotate", config=annotate_cfg, stats=stats)
    valid = store.output("cot/valid/validate/fixture")
    entry = valid.write("valid", records, CoTRecord)
    valid_stats = {"checked": len(records), "valid": len(records), "rejected": 0, "reasons": {}}
    cot_out = valid.publish(
        kind="cot", stage="validate", config=ValidateConfig(), files=[entry], inputs=[parent.ref], stats=valid_stats
    )
    judge_cfg = JudgeConfig.preset("smoke", judge={"kind": "endpoint", "base_url": "http://x", "model": "j"})
    verdicts = [
        JudgeVerdict(
            id=r.id,
            score=s,
            parse_error=None if s is not None else "no_score: none",
            completion=f"Score: {s}",
            judge=GEN,
        )
        for r, s in zip(records, kept_scores, strict=True)
    ]
    judged = store.output("cot/judged/judge/fixture")
    scores = [s for s in kept_scores if s is not None]
    judge_stats = {"judged": len(verdicts), "no_score": len(verdicts) - len(scores), "prompt": "p2"}
    judge_stats |= {"histogram": {str(s): sum(int(x) == s for x in scores) for s in range(11)}}
    judge_stats |= {"prompt_tokens": 5, "completion_tokens": 6}
    files = [judged.write("verdicts", verdicts, JudgeVerdict)]
    out = judged.publish(
        kind="verdicts", stage="judge", config=judge_cfg, files=files, inputs=[cot_out.ref], stats=judge_stats
    )
    return cot_out.manifest.address, out.manifest.address


def test_publish_keeps_scores_at_threshold_and_writes_a_card_that_adds_up(store: Store) -> None:
    cot_address, verdicts = _published_cg_outputs(store, [9, 9.5, 8, None, 10])
    config = PublishConfig(cot=cot_address, verdicts=verdicts, min_score=9)
    first = publish.run(config, store)
    assert first.manifest.address == "datasets/ner-cot/v1"
    assert [r.id for r in store.records(first.manifest)] == ["c0", "c1", "c4"]
    stats = first.manifest.stats
    assert (stats["passages"], stats["annotated"], stats["valid"], stats["judged"]) == (6, 5, 5, 5)
    assert (stats["no_score"], stats["below_threshold"], stats["kept"]) == (1, 1, 3)
    [card_entry] = first.manifest.files_with("card")
    card = store.read_file(first.manifest.address, card_entry).decode()
    assert "| annotate | 6 | 5 | 1 (empty_text: 1) |" in card
    assert "| publish (score ≥ 9) | 4 | 3 | 1 (below threshold) |" in card
    assert "| teacher | t | temperature=0.0, top_p=1.0, max_tokens=256 | p1 |" in card
    # Same inputs and config again: the same version, not a new one.
    assert publish.run(config, store) == first
    # Another threshold is another dataset version.
    second = publish.run(config.model_copy(update={"min_score": 8.0}), store)
    assert second.manifest.address == "datasets/ner-cot/v2"
    assert publish.latest(store, "ner-cot") == second


def test_racing_publishers_take_distinct_versions(store: Store) -> None:
    cot_address, verdicts = _published_cg_outputs(store, [9, 9])
    addresses: list[str] = []
    configs = [PublishConfig(cot=cot_address, verdicts=verdicts, min_score=s) for s in (1, 2, 3, 4)]
    threads = [
        threading.Thread(target=lambda c=c: addresses.append(publish.run(c, store).manifest.address)) for c in configs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(addresses) == [f"datasets/ner-cot/v{n}" for n in (1, 2, 3, 4)]


def test_publish_refuses_verdicts_of_another_output(store: Store) -> None:
    _, verdicts = _published_cg_outputs(store, [9])
    other = store.output("cot/valid/validate/other")
    entry = other.write("valid", [cot()], CoTRecord)
    stats = {"checked": 1, "valid": 1, "rejected": 0, "reasons": {}}
    other_out = other.publish(kind="cot", stage="validate", config=ValidateConfig(), files=[entry], stats=stats)
    config = PublishConfig(cot=other_out.manifest.address, verdicts=verdicts)
    with pytest.raises(publish.PublishError, match="judged another output"):
        publish.run(config, store)
