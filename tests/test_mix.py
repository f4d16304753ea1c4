"""Mixing datasets: the hand-written demo CoT with a CG output, priority order, errors."""

from __future__ import annotations

import pytest

from schemas import CoTRecord, MixConfig, NERExample, ValidateConfig
from tasks import mix
from tasks.demo import demo_cot_path, load_demo
from tasks.jsonl import read_jsonl
from tasks.store import Store
from tasks.validate import check


def test_the_demo_cot_seed_passes_validation_and_matches_the_gold() -> None:
    records = read_jsonl(demo_cot_path(), CoTRecord)
    gold = {ex.id: ex for ex in load_demo("train")}
    assert sorted(r.id for r in records) == sorted(gold)
    for record in records:
        assert check(record, ValidateConfig()) == ([], "")
        assert record.entities == gold[record.id].entities


def publish_cot(store: Store, address: str, records: list[CoTRecord]) -> str:
    out = store.output(address)
    files = [out.write("data", records, CoTRecord)]
    return out.publish(kind="cot", stage="fixture", config=MixConfig(sources=["x"]), files=files).manifest.address


def test_mix_in_priority_order(store: Store) -> None:
    seed = read_jsonl(demo_cot_path(), CoTRecord)
    teacher = [seed[0].model_copy(update={"reasoning": f"{seed[0].reasoning} (from the teacher)"})]
    cg = publish_cot(store, "datasets/ner-cot/v1", teacher)
    with pytest.raises(mix.MixError, match=f"id {seed[0].id!r} is in demo:cot"):
        mix.run(MixConfig(sources=[cg, "demo:cot"]), store)
    mixed = mix.run(MixConfig(sources=[cg, "demo:cot"], on_duplicate="first"), store)
    records = {r.id: r for r in store.records(mixed.manifest)}
    assert len(records) == len(seed) and records[seed[0].id].reasoning.endswith("(from the teacher)")
    assert mixed.manifest.stats["sources"]["demo:cot"] == {"records": len(seed), "shadowed": 1}
    assert mix.run(MixConfig(sources=[cg, "demo:cot"], on_duplicate="first"), store) == mixed


def test_mix_refuses_different_record_types(store: Store) -> None:
    out = store.output("datasets/ner/x")
    files = [out.write("data", load_demo("test")[:2], NERExample)]
    ner = out.publish(kind="ner", stage="fixture", config=MixConfig(sources=["x"]), files=files).manifest.address
    with pytest.raises(mix.MixError, match="different record types"):
        mix.run(MixConfig(sources=[ner, "demo:cot"]), store)
