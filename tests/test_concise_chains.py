"""Concise chains in CG: validate's reasoning cap in tokens, and the length histogram on the dataset card."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from test_cg_steps import GEN, cot

from schemas import AnnotateConfig, CoTRecord, JudgeConfig, JudgeVerdict, PublishConfig, ValidateConfig
from tasks import publish, validate
from tasks.extract import load_tokenizer, token_counter
from tasks.store import Store

STEP = " Ada Lovelace is a person and London is a location."


def test_a_token_cap_needs_a_tokenizer() -> None:
    with pytest.raises(ValidationError, match="max_reasoning_tokens: give `tokenizer`"):
        ValidateConfig(max_reasoning_tokens=64)


def test_length_histogram_bins() -> None:
    bins = validate.length_histogram([1, 64, 65, 9000, 300])
    assert (bins["≤64"], bins["≤128"], bins["≤512"], bins[">8192"]) == (2, 1, 1, 1)
    assert sum(bins.values()) == 5 and next(iter(bins)) == "≤64" and len(bins) == len(validate.LENGTH_BINS) + 1


def test_validate_caps_reasoning_tokens_and_the_card_shows_lengths(default_model: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    records = [cot(id=f"c{n}", reasoning=STEP * n) for n in (1, 3, 12)]
    count = token_counter(load_tokenizer(str(default_model)))
    lengths = count([r.reasoning for r in records])
    cap = lengths[1]  # the middle one is exactly at the cap: kept
    annotated = store.output("cot/raw/annotate/fixture")
    annotated.commit_shard("00000", records, CoTRecord)
    stats = {"passages": 3, "annotated": 3, "rejected": {}, "prompt": "p1", "prompt_tokens": 1, "completion_tokens": 2}
    teacher = {"kind": "endpoint", "base_url": "http://x", "model": "t"}
    parent = annotated.publish(kind="cot", stage="annotate", config=AnnotateConfig(teacher=teacher), stats=stats)

    config = ValidateConfig(input=parent.manifest.address, max_reasoning_tokens=cap, tokenizer=str(default_model))
    valid = validate.run(config, store)
    assert [r.id for r in store.records(valid.manifest)] == ["c1", "c3"]
    [rejection] = store.records(valid.manifest, role="rejects")
    assert rejection.reasons == ("reasoning_too_long",)  # type: ignore[attr-defined]
    assert rejection.detail == f"reasoning is {lengths[2]} tokens (max_reasoning_tokens {cap})"  # type: ignore[attr-defined]
    histograms = valid.manifest.stats["reasoning_tokens"]
    assert histograms["checked"] == validate.length_histogram(lengths)
    assert histograms["valid"] == validate.length_histogram(lengths[:2])
    # Without the cap nothing is rejected for its length in tokens.
    uncapped = validate.run(config.model_copy(update={"max_reasoning_tokens": None}), store)
    assert uncapped.manifest.stats["valid"] == 3

    judged = store.output("cot/judged/judge/fixture")
    verdicts = [JudgeVerdict(id=r.id, score=9, completion="Score: 9", judge=GEN) for r in records[:2]]
    judge_stats = {"judged": 2, "no_score": 0, "prompt": "p2", "prompt_tokens": 1, "completion_tokens": 1}
    judge_stats |= {"histogram": {str(s): 2 * (s == 9) for s in range(11)}}
    judge = JudgeConfig(judge={"kind": "endpoint", "base_url": "http://x", "model": "j"})
    files = [judged.write("verdicts", verdicts, JudgeVerdict)]
    out = judged.publish(
        kind="verdicts", stage="judge", config=judge, files=files, inputs=[valid.ref], stats=judge_stats
    )
    dataset = publish.run(PublishConfig(cot=valid.manifest.address, verdicts=out.manifest.address), store)
    [card_entry] = dataset.manifest.files_with("card")
    card = store.read_file(dataset.manifest.address, card_entry).decode()
    assert "## Reasoning length" in card
    for label, checked in validate.length_histogram(lengths).items():
        assert f"| {label} | {checked} | {histograms['valid'][label]} |" in card
