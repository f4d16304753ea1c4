"""Choosing data and schedules as a user training on public data needs to: a JSONL folder's ``labels.json``, a
given subset by ids, warm-up by steps, and an evaluation's ``max_examples`` as a seeded sample. Fields added for
these leave the hashes (and so the outputs) of configs that do not use them as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import EvalConfig, ImportConfig, NERExample, SFTConfig, config_hash
from tasks.data_import import DataImportError, run
from tasks.eval_sets import EvalSet, select_examples
from tasks.jsonl import RecordError
from tasks.store import Store
from tasks.train_stage import Device, training_arguments

NAMES = ["Ada Lovelace", "Nils Ek", "Rosa Quint", "Tariq Osei", "Mia Sand", "Jon Berg"]


def line(i: int, **extra: object) -> str:
    name = NAMES[i % len(NAMES)]
    text = f"{name} works for Acme {i}."
    entities = [{"text": name, "label": "person", "start": 0, "end": len(name)}]
    return json.dumps({"id": f"ex-{i}", "text": text, "entities": entities, **extra})


def jsonl_folder(root: Path, train: list[str], labels: object | None = ("person", "organization")) -> Path:
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text("\n".join(train) + "\n")
    if labels is not None:
        (root / "labels.json").write_text(json.dumps(list(labels) if isinstance(labels, tuple) else labels))
    return root


def imported(config: ImportConfig, tmp_path: Path) -> list[NERExample]:
    store = Store(tmp_path / "store")
    return list(store.records(run(config, store).manifest, role="train"))  # type: ignore[arg-type]


def jsonl_config(path: Path, **fields: object) -> ImportConfig:
    return ImportConfig.model_validate(
        {"dataset": "public", "format": "jsonl", "path": str(path), "splits": ["train"]} | fields
    )


# --- labels.json -------------------------------------------------------------------------------------------


def test_labels_json_is_the_schema_of_lines_that_carry_none(tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path / "data", [line(0), line(1, labels=["person"])])
    first, second = imported(jsonl_config(folder), tmp_path)
    assert first.labels == ("person", "organization")
    assert second.labels == ("person",)  # a line's own labels win
    assert first.source == "public"


def test_without_labels_json_a_line_without_labels_is_refused_by_line(tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path / "data", [line(0)], labels=None)
    with pytest.raises(RecordError, match=r"train\.jsonl:1: .*label 'person' is not in labels \[\]"):
        imported(jsonl_config(folder), tmp_path)


def test_a_bad_labels_json_is_named(tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path / "data", [line(0)], labels={"person": 1})
    with pytest.raises(DataImportError, match=r"labels\.json: not a JSON list of entity types"):
        imported(jsonl_config(folder), tmp_path)


def test_labels_json_is_part_of_the_inputs_digest(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    folder = jsonl_folder(tmp_path / "data", [line(0)])
    before = run(jsonl_config(folder), store).manifest.inputs[0].digest
    (folder / "labels.json").write_text(json.dumps(["person", "organization", "location"]))
    assert run(jsonl_config(folder), store).manifest.inputs[0].digest != before


# --- ids ---------------------------------------------------------------------------------------------------


def test_ids_keep_exactly_those_examples_in_the_data_order(tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path / "data", [line(i) for i in range(6)])
    kept = imported(jsonl_config(folder, ids=["ex-4", "ex-1"]), tmp_path)
    assert [ex.id for ex in kept] == ["ex-1", "ex-4"]


def test_an_unknown_id_is_an_error(tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path / "data", [line(i) for i in range(3)])
    with pytest.raises(DataImportError, match=r"ids: 1 not in the train split, e.g. \['ex-9'\]"):
        imported(jsonl_config(folder, ids=["ex-1", "ex-9"]), tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ids": ["a"], "count": 2}, "count, ids: give at most one of fraction, count and ids"),
        ({"ids": ["a", "a"]}, "ids: each id once"),
        ({"ids": ["a"], "splits": ["test"]}, "ids: they sample the train split"),
    ],
)
def test_ids_config_mistakes(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        jsonl_config(tmp_path, **fields)


def test_ids_leave_the_hash_of_configs_without_them_alone() -> None:
    smoke = ImportConfig.preset("smoke")
    assert config_hash(smoke) == "721110f7b069ee6c7c06a4e443d76b67fc07e72590f1a51a115ac52725d62fb9"  # before ids
    with_ids = ImportConfig.preset("smoke", count=None, ids=["demo-train-0"])
    assert config_hash(with_ids) != config_hash(ImportConfig.preset("smoke", count=None))


# --- warmup_steps ------------------------------------------------------------------------------------------


def test_warmup_steps_reach_the_trainer(tmp_path: Path) -> None:
    config = SFTConfig.preset("smoke", warmup_steps=3)
    assert training_arguments(config, Device(cuda=False), tmp_path)["warmup_steps"] == 3
    ratio = SFTConfig.preset("smoke", warmup_ratio=0.25)
    assert training_arguments(ratio, Device(cuda=False), tmp_path)["warmup_steps"] == 0.25
    assert config_hash(config) != config_hash(SFTConfig.preset("smoke"))


def test_warmup_steps_and_ratio_together_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"warmup_steps \(100\) and warmup_ratio \(0.03.*set warmup_ratio: 0"):
        SFTConfig.preset("paper", warmup_steps=100)
    assert SFTConfig.preset("paper", warmup_steps=100, warmup_ratio=0).warmup_steps == 100


def test_warmup_steps_unset_leave_the_paper_hash_alone() -> None:
    assert config_hash(SFTConfig.preset("paper")) == "a6bfa15a64a8c64cbd709c66cc605081c16672d466631f2ead8b84523d35ce93"


# --- eval max_examples --------------------------------------------------------------------------------------


def eval_set(origin: str, sources: dict[str, int]) -> EvalSet:
    examples = tuple(
        NERExample(id=f"{source}-{i}", text=f"text {i}", source=source)
        for source, n in sources.items()
        for i in range(n)
    )
    return EvalSet(origin, examples, ref=None)  # type: ignore[arg-type]


def ids(examples: list[NERExample]) -> list[str]:
    return [ex.id for ex in examples]


def test_max_examples_is_a_seeded_sample_per_dataset_in_the_data_order() -> None:
    sets = [eval_set("a.jsonl", {"news": 40, "bio": 3})]
    chosen = ids(select_examples(sets, 5, seed=42))
    news = [i for i in chosen if i.startswith("news")]
    assert len(news) == 5 and news != [f"news-{i}" for i in range(5)]  # not the first five
    assert news == sorted(news, key=lambda i: int(i.split("-")[1]))  # in the data's order
    assert [i for i in chosen if i.startswith("bio")] == ["bio-0", "bio-1", "bio-2"]  # fewer than 5: all
    assert chosen == ids(select_examples(sets, 5, seed=42))  # the same seed, the same examples
    assert chosen != ids(select_examples(sets, 5, seed=7))
    assert len(select_examples(sets, None, seed=42)) == 43


def test_the_eval_seed_is_documented_and_hashed() -> None:
    assert "max_examples" in (EvalConfig.model_fields["seed"].description or "")
    smoke = EvalConfig.preset("smoke")
    assert config_hash(smoke) != config_hash(EvalConfig.preset("smoke", seed=7))
