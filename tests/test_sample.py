"""RE data sampling: InstructUIE folders and store outputs, stratified with caps, reproducible bit for bit.

The InstructUIE folders are written here (sentences made up for these tests), in the layout the paper's
data uses: ``<name>/{train,dev}.json`` and ``<name>/labels.json``. The proportional allocation is compared
with the released ``sample_grpo.py`` (re-implemented literally in ``released_rner``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import released_rner as released
from pydantic import ValidationError

from schemas import CoTRecord, NERExample, PublishConfig, SampleConfig, config_hash
from schemas.configs import EVAL_SUITES, INSTRUCTUIE_20
from tasks import sample
from tasks.eval_sets import EvalSetError
from tasks.sample import SampleError, allocate, allocate_proportional
from tasks.store import Store

CITIES = ["Oslo", "Lima", "Quito", "Hanoi", "Accra", "Riga", "Perth"]


def instructuie_row(i: int, city: str) -> dict[str, object]:
    sentence = f"Mira Okafor {i} flew to {city} on Monday."
    person = f"Mira Okafor {i}"
    at = sentence.index(city)
    entities = [
        {"name": person, "type": "person", "pos": [0, len(person)]},
        {"name": city, "type": "location", "pos": [at, at + len(city)]},
    ]
    return {"sentence": sentence, "entities": entities}


def write_dataset(root: Path, name: str, splits: dict[str, int]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(["person", "location"]))
    for split, n in splits.items():
        rows = [instructuie_row(i, CITIES[i % len(CITIES)]) for i in range(n)]
        (folder / f"{split}.json").write_text(json.dumps(rows))
    return folder


@pytest.fixture
def instructuie(tmp_path: Path) -> Path:
    """A folder of two InstructUIE datasets: ``alpha`` (7 train, 2 dev) and ``beta`` (2 train)."""
    root = tmp_path / "NER"
    write_dataset(root, "alpha", {"train": 7, "dev": 2})
    write_dataset(root, "beta", {"train": 2})
    return root


def publish_gamma(store: Store, n: int = 4) -> str:
    """A published ``ner`` output holding one dataset, ``gamma``."""
    text = "Tomas Berg opened a bakery."
    person = {"text": "Tomas Berg", "label": "person", "start": 0, "end": 10}
    examples = [
        NERExample(id=f"g{i}", text=text, labels=["person"], entities=[person], source="gamma") for i in range(n)
    ]
    out = store.output("datasets/ner/gamma")
    out.publish(kind="ner", stage="import", config=PublishConfig(), files=[out.write("data", examples, NERExample)])
    return out.address


@pytest.mark.parametrize(
    ("sizes", "total", "cap", "expected"),
    [
        ({"a": 10, "b": 10, "c": 10}, 9, None, {"a": 3, "b": 3, "c": 3}),
        ({"a": 10, "b": 10, "c": 10}, 10, None, {"a": 3, "b": 3, "c": 4}),  # remainder: last by (size, name)
        ({"a": 1, "b": 10, "c": 10}, 9, None, {"a": 1, "b": 4, "c": 4}),  # what a small set cannot give, others do
        ({"a": 10, "b": 10, "c": 2}, 12, 5, {"a": 5, "b": 5, "c": 2}),
        ({"a": 100, "b": 3}, 6, 4, {"a": 3, "b": 3}),
    ],
)
def test_allocation(sizes: dict[str, int], total: int, cap: int | None, expected: dict[str, int]) -> None:
    assert allocate(sizes, total, cap) == expected


def test_allocation_refuses_a_total_it_cannot_reach() -> None:
    with pytest.raises(SampleError, match=r"total 9 is more than the 7 examples available \(a: 4, b: 3\)"):
        allocate({"a": 10, "b": 3}, 9, 4)


def test_sample_stratifies_across_folders_and_store_outputs(store: Store, instructuie: Path) -> None:
    gamma = publish_gamma(store)
    config = SampleConfig(sources=[str(instructuie), gamma], total=7, per_dataset_cap=3, seed=7)
    published = sample.run(config, store)
    manifest = published.manifest
    assert manifest.kind == "ner" and manifest.address.startswith("datasets/re/sample/")
    examples: list[NERExample] = list(store.records(manifest))  # type: ignore[arg-type]
    taken = {name: d["taken"] for name, d in manifest.stats["datasets"].items()}
    assert taken == {"alpha": 2, "beta": 2, "gamma": 3}  # beta has 2; alpha and gamma share the other 5
    assert [ex.source for ex in examples] == ["alpha"] * 2 + ["beta"] * 2 + ["gamma"] * 3
    assert {d["available"] for d in manifest.stats["datasets"].values()} == {7, 2, 4}
    assert manifest.stats["datasets"]["alpha"]["origin"] == str(instructuie / "alpha")
    # InstructUIE entities are grounded at their `pos`, the schema is labels.json.
    first = examples[0]
    assert (
        first.labels == ("person", "location") and first.text[first.entities[1].start : first.entities[1].end] in CITIES
    )
    # Lineage: each folder by content digest, the store output by manifest digest.
    assert sorted(ref.address for ref in manifest.inputs) == ["datasets/ner/gamma", "external/alpha", "external/beta"]


def test_sample_is_reproducible_bit_for_bit(tmp_path: Path, instructuie: Path) -> None:
    def data(store_dir: str, seed: int, sources: list[str]) -> tuple[str, bytes]:
        store = Store(tmp_path / store_dir)
        published = sample.run(SampleConfig(sources=sources, total=6, seed=seed), store)
        [entry] = published.manifest.files_with("data")
        return published.manifest.address, store.read_file(published.manifest.address, entry)

    first = data("one", 1, [str(instructuie)])
    # Another store, another path to the same content: the same address and the same bytes.
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in ("alpha", "beta"):
        (copy / name).symlink_to(instructuie / name)
    assert data("two", 1, [str(copy)]) == first
    other = data("three", 2, [str(instructuie)])
    assert other[0] != first[0] and other[1] != first[1]  # another seed draws other alpha examples


def test_split_and_single_dataset_folders(store: Store, instructuie: Path) -> None:
    published = sample.run(SampleConfig(sources=[str(instructuie / "alpha")], split="dev", total=2), store)
    assert [ex.id for ex in store.records(published.manifest)] == ["alpha-0", "alpha-1"]


def test_demo_corpus_and_preset(store: Store) -> None:
    published = sample.run(SampleConfig.preset("smoke"), store)
    assert published.manifest.rows == 16 and len(published.manifest.stats["datasets"]) == 6


def test_bad_sources_are_clear_errors(store: Store, instructuie: Path, tmp_path: Path) -> None:
    with pytest.raises(SampleError, match=r"no folder, \.jsonl file or published output"):
        sample.run(SampleConfig(sources=["datasets/missing"], total=1), store)
    cot = store.output("cot/valid/x")
    record = CoTRecord(
        id="c", text="t", reasoning="r", completion="c", teacher={"model": "m", "sampling": {}, "request_key": "k"}
    )
    cot.publish(kind="cot", stage="validate", config=PublishConfig(), files=[cot.write("valid", [record], CoTRecord)])
    with pytest.raises(SampleError, match="'cot' output, not an NER dataset"):
        sample.run(SampleConfig(sources=["cot/valid/x"], total=1), store)
    with pytest.raises(SampleError, match=r"no test\.json in it or in its subfolders"):
        sample.run(SampleConfig(sources=[str(instructuie)], split="test", total=1), store)
    (instructuie / "beta" / "train.json").write_text('[{"sentence": 3}]')
    with pytest.raises(SampleError, match=r"beta: not an InstructUIE dataset folder: 0\.sentence"):
        sample.run(SampleConfig(sources=[str(instructuie)], total=1), store)
    (instructuie / "beta" / "train.json").write_text(
        json.dumps([{"sentence": "A b.", "entities": [{"name": "A", "type": "city", "pos": [0, 1]}]}])
    )
    with pytest.raises(EvalSetError, match=r"entity type 'city' is not in labels\.json"):
        sample.run(SampleConfig(sources=[str(instructuie)], total=1), store)
    twice = SampleConfig(sources=[str(instructuie / "alpha"), str(tmp_path / "NER" / "alpha")], total=1)
    with pytest.raises(SampleError, match="dataset 'alpha' is in two sources"):
        sample.run(twice, store)


# --- proportional allocation (the released sample_grpo.py) --------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "total", "cap", "expected"),
    [
        ({"a": 10, "b": 30, "c": 60}, 10, None, {"a": 1, "b": 3, "c": 6}),  # 10 * 10/100 = 1, 3, 6: exact
        ({"a": 3, "b": 3, "c": 3}, 7, None, {"a": 2, "b": 2, "c": 2}),  # 7/3 each, floored: 6 of the 7 asked
        # The cap first (released --max_count): 10, 30, 40 of 80; 1.25, 3.75, 5.0 floored: 9 of 10.
        ({"a": 10, "b": 30, "c": 60}, 10, 40, {"a": 1, "b": 3, "c": 5}),
        ({"b": 1, "a": 99}, 50, None, {"b": 0, "a": 49}),  # 0.5 floors to nothing; the order of sizes is kept
        ({"a": 5, "b": 5}, 10, None, {"a": 5, "b": 5}),  # everything
    ],
)
def test_proportional_allocation(sizes: dict[str, int], total: int, cap: int | None, expected: dict[str, int]) -> None:
    quotas = allocate_proportional(sizes, total, cap)
    assert quotas == expected and list(quotas) == list(sizes)
    datasets = {name: list(range(n)) for name, n in sizes.items()}
    _, taken = released.sample_for_grpo(datasets, total, max_count=cap or -1)
    assert taken == expected


def test_proportional_allocation_refuses_a_total_it_cannot_reach() -> None:
    with pytest.raises(SampleError, match=r"total 9 is more than the 7 examples available \(a: 4, b: 3\)"):
        allocate_proportional({"a": 10, "b": 3}, 9, 4)


def write_sized(root: Path, sizes: dict[str, int]) -> Path:
    for name, n in sizes.items():
        write_dataset(root, name, {"train": n})
    return root


@pytest.mark.parametrize("shuffle", [False, True])
def test_proportional_sample_is_the_released_draw(store: Store, tmp_path: Path, shuffle: bool) -> None:
    """Same data, same seed: the examples the released sample_for_grpo picks, in its order."""
    root = write_sized(tmp_path / "NER", {"delta": 9, "alpha": 13, "gamma": 5, "beta": 20, "unused": 4})
    order = ["delta", "alpha", "gamma", "beta"]  # the order of the released dataset config, not of names
    config = SampleConfig(
        sources=[str(root)], datasets=order, total=12, allocation="proportional", per_dataset_cap=12,
        shuffle=shuffle, seed=42,
    )  # fmt: skip
    published = sample.run(config, store)
    ids = [ex.id for ex in store.records(published.manifest)]
    loaded = {
        name: [f"{name}-{i}" for i in range(n)] for name, n in {"delta": 9, "alpha": 13, "gamma": 5, "beta": 20}.items()
    }
    expected, taken = released.sample_for_grpo(loaded, 12, shuffle=shuffle, max_count=12, seed=42)
    assert ids == expected
    # Hand-computed: capped sizes 9, 12, 5, 12 (38); 12 * 9/38 = 2.84, 12 * 12/38 = 3.79, 1.58, 3.79 → 2, 3, 1, 3.
    assert taken == {"delta": 2, "alpha": 3, "gamma": 1, "beta": 3}
    stats = published.manifest.stats
    assert {name: d["taken"] for name, d in stats["datasets"].items()} == taken
    assert list(stats["datasets"]) == order
    assert {name: d["available"] for name, d in stats["datasets"].items()} == {
        "delta": 9,
        "alpha": 13,
        "gamma": 5,
        "beta": 20,
    }
    assert (stats["allocation"], stats["total"], stats["examples"], stats["left_out"]) == (
        "proportional",
        12,
        9,
        ["unused"],
    )
    assert published.manifest.rows == 9
    if not shuffle:
        assert [i.split("-")[0] for i in ids] == ["delta"] * 2 + ["alpha"] * 3 + ["gamma"] + ["beta"] * 3


def test_proportional_sample_is_reproducible(tmp_path: Path) -> None:
    root = write_sized(tmp_path / "NER", {"alpha": 13, "beta": 20})

    def data(store_dir: str, seed: int) -> tuple[str, bytes]:
        store = Store(tmp_path / store_dir)
        config = SampleConfig(sources=[str(root)], total=10, allocation="proportional", shuffle=True, seed=seed)
        published = sample.run(config, store)
        [entry] = published.manifest.files_with("data")
        return published.manifest.address, store.read_file(published.manifest.address, entry)

    first = data("one", 3)
    assert data("two", 3) == first
    assert data("three", 4)[1] != first[1]


def test_even_allocation_stays_the_default_and_datasets_select(store: Store, tmp_path: Path) -> None:
    root = write_sized(tmp_path / "NER", {"alpha": 13, "beta": 20, "gamma": 3})
    assert SampleConfig(sources=["x"], total=1).allocation == "even"
    published = sample.run(SampleConfig(sources=[str(root)], datasets=["beta", "alpha"], total=9), store)
    stats = published.manifest.stats
    assert {name: d["taken"] for name, d in stats["datasets"].items()} == {"beta": 5, "alpha": 4}
    assert (stats["allocation"], stats["examples"], stats["left_out"]) == ("even", 9, ["gamma"])
    examples = list(store.records(published.manifest))
    assert [ex.source for ex in examples] == ["beta"] * 5 + ["alpha"] * 4  # dataset by dataset, in the given order
    shuffled = sample.run(SampleConfig(sources=[str(root)], datasets=["beta", "alpha"], total=9, shuffle=True), store)
    again = list(store.records(shuffled.manifest))
    assert sorted(ex.id for ex in again) == sorted(ex.id for ex in examples) and again != examples


def test_named_datasets_must_be_there_once(store: Store, tmp_path: Path) -> None:
    root = write_sized(tmp_path / "NER", {"alpha": 3})
    with pytest.raises(SampleError, match=r"datasets not in the sources: beta \(they hold: alpha\)"):
        sample.run(SampleConfig(sources=[str(root)], datasets=["alpha", "beta"], total=1), store)
    with pytest.raises(ValidationError, match="each dataset once"):
        SampleConfig(sources=[str(root)], datasets=["alpha", "alpha"], total=1)


def test_paper_preset_samples_like_the_released_code() -> None:
    paper = SampleConfig.preset("paper")
    assert (paper.allocation, paper.per_dataset_cap, paper.shuffle, paper.seed) == ("proportional", 10000, True, 42)
    assert paper.total == 4703
    # The released config/dataset/in_domain.json, in its order.
    assert paper.datasets == INSTRUCTUIE_20 == EVAL_SUITES["instructuie_20"] and len(paper.datasets) == 20
    assert SampleConfig.preset("smoke").allocation == "even"


# --- a given subset: ids ------------------------------------------------------------------------------


def test_ids_take_exactly_those_examples_dataset_by_dataset_in_the_data_order(store: Store, instructuie: Path) -> None:
    gamma = publish_gamma(store)
    config = SampleConfig(sources=[str(instructuie), gamma], ids=["g2", "alpha-5", "beta-0", "alpha-1"])
    published = sample.run(config, store)
    assert [ex.id for ex in store.records(published.manifest)] == ["alpha-1", "alpha-5", "beta-0", "g2"]
    stats = published.manifest.stats
    assert (stats["total"], stats["ids"], stats["examples"]) == (None, 4, 4)
    assert {name: d["taken"] for name, d in stats["datasets"].items()} == {"alpha": 2, "beta": 1, "gamma": 1}
    # `datasets` orders them and leaves the others out; `shuffle` mixes the same examples.
    ordered = SampleConfig(sources=[str(instructuie), gamma], datasets=["gamma", "alpha"], ids=["alpha-1", "g2"])
    assert [ex.id for ex in store.records(sample.run(ordered, store).manifest)] == ["g2", "alpha-1"]
    many = [f"alpha-{i}" for i in range(7)]
    shuffled = sample.run(SampleConfig(sources=[str(instructuie)], ids=many, total=7, shuffle=True), store)
    ids = [ex.id for ex in store.records(shuffled.manifest)]
    assert sorted(ids) == many and ids != many


def test_ids_leave_the_hash_of_configs_without_them_alone() -> None:
    smoke = SampleConfig.preset("smoke")
    assert config_hash(smoke) == "d55348a31ce74ad6ee5ccf1192e7fd310ed44ba2e5e3ed74585b926b0eac9976"  # before ids
    with_ids = SampleConfig.preset("smoke", total=None, per_dataset_cap=None, ids=["news-train-01"])
    assert config_hash(with_ids) != config_hash(SampleConfig.preset("smoke", ids=()))


def test_an_unknown_or_ambiguous_id_is_named(store: Store, instructuie: Path, tmp_path: Path) -> None:
    with pytest.raises(SampleError, match=r"ids: 1 not in the train split of alpha, beta, e\.g\. \['alpha-9'\]"):
        sample.run(SampleConfig(sources=[str(instructuie)], ids=["alpha-1", "alpha-9"]), store)
    with pytest.raises(SampleError, match=r"ids: 1 not in the train split of alpha, e\.g\. \['beta-0'\]"):
        sample.run(SampleConfig(sources=[str(instructuie)], datasets=["alpha"], ids=["beta-0"]), store)
    # Two files whose examples share an id: which one is meant cannot be told.
    for name in ("one", "two"):
        example = NERExample(id="x1", text="Tomas Berg.", labels=["person"], source=name)
        (tmp_path / f"{name}.jsonl").write_text(example.model_dump_json() + "\n")
    both = SampleConfig(sources=[str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")], ids=["x1"])
    with pytest.raises(SampleError, match=r"ids: 1 name several examples of the train split of one, two"):
        sample.run(both, store)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ids": ["a", "b", "a"]}, r"ids: each id once; repeated: \['a'\]"),
        ({"ids": ["a"], "total": 3}, "total 3 and 1 ids: ids name the sample; leave total out"),
        ({"ids": ["a"], "per_dataset_cap": 2}, "per_dataset_cap: caps a draw, and ids name the sample"),
        ({"ids": ["a"], "allocation": "proportional"}, "allocation 'proportional': splits a draw"),
        ({"preset": "smoke", "ids": ["a"]}, "total 16 and 1 ids"),
        ({}, "total: required .* unless ids name its examples"),
    ],
)
def test_ids_config_mistakes(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SampleConfig.model_validate({"sources": ["demo:train"], **fields})


def test_ids_with_their_number_as_total_are_accepted() -> None:
    assert SampleConfig(sources=["demo:train"], ids=["a", "b"], total=2).total == 2
