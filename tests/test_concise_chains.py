"""Concise chains in CG: validate's reasoning cap in tokens, the length histogram on the dataset card, and the
shortest of N teacher chains that passes validation and the judge."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_server import Behaviour, FaultServer, ok, status
from pydantic import ValidationError
from test_cg_run import seed, smoke, teacher_or_judge
from test_cg_steps import GEN, cot

from schemas import (
    AnnotateConfig,
    CGConfig,
    CoTRecord,
    Endpoint,
    JudgeConfig,
    JudgeVerdict,
    PublishConfig,
    ValidateConfig,
    config_hash,
)
from tasks import annotate, cg, publish, validate
from tasks.extract import load_tokenizer, token_counter
from tasks.llm_stage import StageFailed
from tasks.step_summary import step_summary
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


# --- shortest of N teacher chains ----------------------------------------------------------------------------

DOUBT = " Let me go over every span once more."


def sampled_teacher(body: dict) -> str:
    """A teacher whose draws differ by seed (sample k of a passage has seed k): 0 is long, 1 the shortest but has no
    readable answer (fails validation), 2 short but hasty (the judge gives it 3), 3 of medium length: the one kept."""
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("You are reviewing"):
        return teacher_or_judge(prompt)
    chain = teacher_or_judge(prompt)
    thoughts, answer = chain.removeprefix("<think>\n").split("\n</think>\n\n")
    reasoning = {0: thoughts + DOUBT * 4, 1: "x", 2: "HASTY " + thoughts, 3: thoughts + " Checked."}[body["seed"]]
    return f"<think>\n{reasoning}\n</think>\n\n{'no answer' if body['seed'] == 1 else answer}"


def hasty_judge(prompt: str) -> str:
    return f"Score: {3 if 'HASTY' in prompt else 9}"


def sampled(endpoint: Endpoint, **overrides: object) -> CGConfig:
    annotate = {"samples_per_passage": 4, "sampling": {"temperature": 0.7, "max_tokens": 256}, "shard_size": 6}
    return smoke(endpoint, annotate=annotate, publish={"min_score": 9}, **overrides)


def script(prompt: str, attempt: int) -> Behaviour:
    if prompt.startswith("You are reviewing"):
        return ok(answer=hasty_judge)
    return ok(reply=sampled_teacher)


def test_the_shortest_chain_that_passes_validation_and_the_judge_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 5)
    with FaultServer(script) as server:
        published = cg.run(sampled(server.endpoint), store)
        # Four teacher requests per passage, each with its own seed; the judge saw the three readable chains.
        teacher = [b for p, b in server.bodies.items() if not p.startswith("You are reviewing")]
        assert server.requests == 4 * len(passages) + 3 * len(passages)
        assert len(teacher) == len(passages)  # the last body per prompt: four draws share a prompt
    kept = {r.id: r for r in store.records(published.manifest)}
    assert sorted(kept) == sorted(p.id for p in passages)
    for passage in passages:
        record = kept[passage.id]
        assert record.reasoning.endswith(" Checked.") and not record.reasoning.startswith("HASTY")
        assert record.teacher.sampling.seed == 3 and record.passage_id is None
        assert "passage_id" not in record.model_dump_json()  # a published chain looks like a one-sample chain
    n = len(passages)
    stats = published.manifest.stats
    assert [stats[k] for k in ("samples_per_passage", "annotated", "valid", "judged")] == [4, 4 * n, 3 * n, 3 * n]
    assert (stats["passing"], stats["below_threshold"], stats["kept"], stats["longer_duplicates"]) == (2 * n, n, n, n)
    assert stats["candidates"] == {"2": n} and stats["shortest_by"] == "characters"
    [card_entry] = published.manifest.files_with("card")
    card = store.read_file(published.manifest.address, card_entry).decode()
    assert f"| shortest of 4 per passage (reasoning characters) | {2 * n} | {n} | {n} (longer duplicates) |" in card
    assert f"Passages by number of passing chains: 2: {n}." in card
    assert f"{n} longer chains of a passage dropped for its shortest" in step_summary("publish", published, store)
    # The validated chains keep their sample ids, tied to their passage.
    annotated = store.load(published.manifest.stats["lineage"]["annotate"])
    chains = list(store.records(annotated.manifest))
    assert [c.id for c in chains[:4]] == [f"{passages[0].id}#{k}" for k in range(4)]
    assert {c.passage_id for c in chains} == {p.id for p in passages}


def test_sampled_annotation_resumes_from_its_shards_and_sends_only_what_failed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 5)
    doomed = passages[2].text  # samples 8-11 of 20: shard 00001 (shard size 6)

    def failing(prompt: str, attempt: int) -> Behaviour:
        return status(500) if doomed in prompt else script(prompt, attempt)

    with FaultServer(failing) as server, pytest.raises(StageFailed, match=r"1 of 4 pending shards failed \(00001\)"):
        config = sampled(server.endpoint).annotate.model_copy(update={"input": "raw/passages", "max_retries": 0})
        annotate.run(config, store)
    with FaultServer(script) as fixed:
        published = annotate.run(config.model_copy(update={"teacher": fixed.endpoint}), store)
        assert fixed.requests == 4  # the doomed passage's four draws; the other two of its shard are cached
    ids = [r.id for r in store.records(published.manifest)]
    assert ids == [f"{p.id}#{k}" for p in passages for k in range(4)]
    seeds = [r.teacher.sampling.seed for r in store.records(published.manifest)]
    assert seeds == [0, 1, 2, 3] * len(passages)


def test_samples_need_a_temperature() -> None:
    with pytest.raises(ValidationError, match=r"samples_per_passage: 3 samples need sampling\.temperature > 0"):
        AnnotateConfig(samples_per_passage=3)
    one = AnnotateConfig(samples_per_passage=1)
    assert config_hash(one) == config_hash(AnnotateConfig())  # the default keeps existing outputs' addresses
    assert config_hash(AnnotateConfig(samples_per_passage=2, sampling={"temperature": 0.6})) != config_hash(
        AnnotateConfig(sampling={"temperature": 0.6})
    )


def test_shortest_chains_by_passage_first_on_a_tie() -> None:
    chains = [
        cot(id="a#0", passage_id="a", reasoning=STEP * 3),
        cot(id="b", reasoning=STEP),
        cot(id="a#1", passage_id="a", reasoning=STEP * 2),
        cot(id="a#2", passage_id="a", reasoning=STEP * 2),
    ]
    kept, candidates = publish.shortest_chains(chains, [3, 1, 2, 2])
    assert [(r.id, r.passage_id, r.reasoning) for r in kept] == [("a", None, STEP * 2), ("b", None, STEP)]
    assert kept[0].teacher == chains[2].teacher and candidates == {"1": 1, "3": 1}


@pytest.mark.slow
def test_shortest_of_two_on_the_real_vllm_server(vllm_endpoint: Endpoint, default_model: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 3)
    sampling = {"temperature": 0.8, "max_tokens": 192, "seed": 7}
    config = smoke(
        vllm_endpoint,
        annotate={"samples_per_passage": 2, "sampling": sampling},
        validation={"tokenizer": str(default_model)},
    )
    published = cg.run(config, store)
    stats = published.manifest.stats
    assert stats["samples_per_passage"] == 2 and stats["annotated"] == 2 * len(passages)
    assert stats["shortest_by"] == "tokens"
    assert stats["kept"] + stats["longer_duplicates"] == stats["passing"]
    assert stats["passing"] + stats["below_threshold"] + stats["no_score"] == stats["judged"]
    lineage = stats["lineage"]
    chains = list(store.records(store.load(lineage["annotate"]).manifest))
    assert [c.id for c in chains] == [f"{p.id}#{k}" for p in passages for k in (0, 1)]
    assert [c.teacher.sampling.seed for c in chains] == [7, 8] * len(passages)
    assert len({c.teacher.request_key for c in chains}) == len(chains)  # two distinct draws per passage
    # Each kept chain is the shortest (in tokens of the student's tokenizer) of its passage's passing chains.
    verdicts = {v.id: v for v in store.records(store.load(lineage["judge"]).manifest)}
    valid = [r for r in store.records(store.load(lineage["validate"]).manifest) if verdicts[r.id].score is not None]
    count = token_counter(load_tokenizer(str(default_model)))
    lengths = dict(zip((r.id for r in valid), count([r.reasoning for r in valid]), strict=True))
    kept = list(store.records(published.manifest))
    assert len(kept) == len({r.passage_id for r in valid}) == stats["kept"]
    for record in kept:
        group = [r for r in valid if r.passage_id == record.id]
        assert record.reasoning == min(group, key=lambda r: lengths[r.id]).reasoning
        assert count([record.reasoning])[0] == min(lengths[r.id] for r in group)
