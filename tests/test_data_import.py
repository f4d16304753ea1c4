"""``rner data import``: JSONL, InstructUIE, CoNLL (BIO, BIOES) and local ``datasets`` data as versioned NER datasets.

Every fixture is written here, from sentences made up for these tests; nothing is downloaded. Checked:
offsets into the rebuilt text, label maps, bad lines named by file and line with nothing published,
seeded low-resource sampling (same seed, same bytes), per-split caps, versions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import ImportConfig, NERExample
from tasks.data_import import DataImportError, run
from tasks.jsonl import RecordError
from tasks.store import Store

PEOPLE = ["Ada Lovelace", "Nils Ek", "Rosa Quint", "Tariq Osei"]
PLACES = ["Turin", "Bergen", "New South Wales", "Lake Como"]

CONLL_TRAIN = """-DOCSTART- -X- -X- O

Ada NNP B-NP B-PER
Lovelace NNP I-NP I-PER
visited VBD B-VP O
Turin NNP B-NP B-LOC
. . O O

Nils NNP B-NP B-PER
Ek NNP I-NP I-PER
sings VBZ B-VP O
"""
CONLL_TEST = """Rosa NNP B-NP B-PER
left VBD B-VP O
Bergen NNP B-NP B-LOC
"""


def conll_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def tagged_lines(n: int) -> str:
    """``n`` BIO-tagged two-column sentences: "<person> moved to <place> ." with varying names."""
    sentences = []
    for i in range(n):
        person, place = PEOPLE[i % len(PEOPLE)].split(), PLACES[i % len(PLACES)].split()
        rows = [(tok, "B-PER" if k == 0 else "I-PER") for k, tok in enumerate(person)]
        rows += [("moved", "O"), ("to", "O")]
        rows += [(tok, "B-LOC" if k == 0 else "I-LOC") for k, tok in enumerate(place)]
        rows += [(str(i), "O"), (".", "O")]
        sentences.append("\n".join(f"{tok} {tag}" for tok, tag in rows))
    return "\n\n".join(sentences) + "\n"


def test_conll_bio_with_label_map_gives_checked_offsets(store: Store, tmp_path: Path) -> None:
    folder = conll_folder(tmp_path / "conll", {"train.conll": CONLL_TRAIN, "test.txt": CONLL_TEST})
    config = ImportConfig(
        dataset="toy",
        format="conll",
        path=str(folder),
        splits=["train", "test"],
        label_map={"PER": "person", "LOC": "location"},
    )
    published = run(config, store)
    assert published.manifest.address == "datasets/toy/v1"
    assert published.manifest.kind == "ner" and {f.role for f in published.manifest.files} == {"train", "test"}
    train: list[NERExample] = list(store.records(published.manifest, role="train"))  # type: ignore[arg-type]
    assert [ex.text for ex in train] == ["Ada Lovelace visited Turin .", "Nils Ek sings"]
    assert [ex.id for ex in train] == ["toy-train-0", "toy-train-1"]
    assert {ex.source for ex in train} == {"toy"} and train[0].labels == ("location", "person")
    assert [(e.text, e.label, e.start, e.end) for e in train[0].entities] == [
        ("Ada Lovelace", "person", 0, 12),
        ("Turin", "location", 21, 26),
    ]
    assert all(ex.text[e.start : e.end] == e.text for ex in train for e in ex.entities)
    stats = published.manifest.stats
    assert stats["label_map"] == {"PER": "person", "LOC": "location"}
    assert stats["splits"]["train"]["tokens_read"] == 8  # type: ignore[index]
    assert stats["splits"]["test"]["labels"] == {"location": 1, "person": 1}  # type: ignore[index]
    assert run(config, store).digest == published.digest  # the same content and config: the same version
    assert run(config.model_copy(update={"per_dataset_cap": 1}), store).manifest.address == "datasets/toy/v2"


def test_conll_bioes_with_tabs_and_chosen_columns(tmp_path: Path) -> None:
    text = "1\tMarta\tS-PER\n2\tflew\tO\n3\tover\tO\n4\tNew\tB-LOC\n5\tSouth\tI-LOC\n6\tWales\tE-LOC\n"
    folder = conll_folder(tmp_path / "bioes", {"train.tsv": text})
    config = ImportConfig(
        dataset="bioes",
        format="conll",
        path=str(folder / "train.tsv"),
        splits=["train"],
        separator="\t",
        token_column=1,
        tag_column=2,
        scheme="BIOES",
        label_map={"PER": "person"},
    )
    store = Store(tmp_path / "store")
    [example] = store.records(run(config, store).manifest, role="train")
    assert example.text == "Marta flew over New South Wales"  # type: ignore[attr-defined]
    assert [(e.text, e.label, e.start) for e in example.entities] == [  # type: ignore[attr-defined]
        ("Marta", "person", 0),
        ("New South Wales", "LOC", 16),
    ]


@pytest.mark.parametrize(
    ("test_file", "options", "message"),
    [
        ("Rosa B-PER\nleft O\nBergen I-LOC\n", {}, r"test\.conll:3: I-LOC continues no B-LOC entity"),
        ("Rosa B-PER\nleft O\nBergen E-LOC\n", {}, r"test\.conll:3: 'E-LOC' is not a BIO tag"),
        ("Rosa B-PER\nleft O\nBergen NNP B-LOC\n", {}, r"test\.conll:3: 3 columns, but line 1 has 2"),
        ("Rosa B-PER\nleft O\n", {"scheme": "BIOES"}, r"test\.conll:2: the B-PER entity .* not closed by E-PER"),
        ("Rosa B-PER\n", {"label_map": {"PRE": "person"}}, r"label_map: PRE is no entity type of the data"),
    ],
)
def test_a_bad_line_names_file_and_line_and_nothing_is_published(
    tmp_path: Path, test_file: str, options: dict[str, object], message: str
) -> None:
    train = "Ada S-PER\nvisited O\nTurin S-LOC\n" if options.get("scheme") else "Ada B-PER\nvisited O\nTurin B-LOC\n"
    folder = conll_folder(tmp_path / "bad", {"train.conll": train, "test.conll": test_file})
    store = Store(tmp_path / "store")
    config = ImportConfig.model_validate(
        {"dataset": "bad", "format": "conll", "path": str(folder), "splits": ["train", "test"], **options}
    )
    with pytest.raises(DataImportError, match=message):
        run(config, store)
    assert store.list("") == []  # everything is checked before the first write


def test_instructuie_folder_with_ids_per_split(tmp_path: Path) -> None:
    folder = tmp_path / "Travel"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(["traveller", "city", "NA"]))
    for split, people in (("train", PEOPLE[:3]), ("dev", PEOPLE[3:]), ("test", PEOPLE[:1])):
        rows = []
        for person, city in zip(people, PLACES, strict=False):
            sentence = f"{person} took the night train to {city}."
            entities = [{"name": person, "type": "traveller", "pos": [0, len(person)]}, {"name": city, "type": "city"}]
            rows.append({"sentence": sentence, "entities": entities})
        (folder / f"{split}.json").write_text(json.dumps(rows))
    store = Store(tmp_path / "store")
    published = run(ImportConfig(dataset="travel", format="instructuie", path=str(folder)), store)
    dev: list[NERExample] = list(store.records(published.manifest, role="dev"))  # type: ignore[arg-type]
    assert [ex.id for ex in dev] == ["travel-dev-0"] and dev[0].source == "travel"
    city = dev[0].entities[1]  # no pos in the file: placed by grounding, then checked
    assert (city.text, dev[0].text[city.start : city.end]) == ("Turin", "Turin")
    assert {s: v["examples"] for s, v in published.manifest.stats["splits"].items()} == {  # type: ignore[union-attr]
        "train": 3,
        "dev": 1,
        "test": 1,
    }
    (folder / "dev.json").unlink()
    with pytest.raises(DataImportError, match=r"Travel: no dev split \(no dev\.json there\)"):
        run(ImportConfig(dataset="travel", format="instructuie", path=str(folder)), store)


def test_jsonl_keeps_ids_and_names_a_bad_line(tmp_path: Path) -> None:
    folder = tmp_path / "jsonl"
    folder.mkdir()
    text = "Nils Ek cooks in Bergen."
    nils = {"text": "Nils Ek", "label": "chef", "start": 0, "end": 7}
    good = NERExample(id="j1", text=text, labels=["chef"], entities=[nils], source="other")
    (folder / "train.jsonl").write_text(good.model_dump_json() + "\n")
    bad = dict(good.model_dump(), id="j2", entities=[dict(nils, end=8)])
    (folder / "test.jsonl").write_text(good.model_copy(update={"id": "j0"}).model_dump_json() + "\n" + json.dumps(bad))
    store = Store(tmp_path / "store")
    config = ImportConfig(dataset="kitchen", format="jsonl", path=str(folder), splits=["train", "test"])
    with pytest.raises(RecordError, match=r"test\.jsonl:2: entities\.0"):
        run(config, store)
    assert store.list("") == []
    (folder / "test.jsonl").write_text(good.model_copy(update={"id": "j0"}).model_dump_json() + "\n")
    [example] = store.records(run(config, store).manifest, role="train")
    assert (example.id, example.source) == ("j1", "kitchen")  # type: ignore[attr-defined]


def test_local_hf_dataset_with_class_label_tags(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])),
        }
    )
    rows = {
        "train": {"tokens": [["Tariq", "Osei", "rows", "on", "Lake", "Como"]], "ner_tags": [[1, 2, 0, 0, 3, 4]]},
        "validation": {"tokens": [["Rosa", "waved"]], "ner_tags": [[1, 0]]},
    }
    saved = tmp_path / "hf"
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(data, features=features) for split, data in rows.items()}
    ).save_to_disk(str(saved))
    store = Store(tmp_path / "store")
    config = ImportConfig(dataset="lakes", format="hf", path=str(saved), splits=["train", "dev"])
    published = run(config, store)
    [train] = store.records(published.manifest, role="train")
    assert train.text == "Tariq Osei rows on Lake Como"  # type: ignore[attr-defined]
    assert [(e.text, e.label, e.start, e.end) for e in train.entities] == [  # type: ignore[attr-defined]
        ("Tariq Osei", "PER", 0, 10),
        ("Lake Como", "LOC", 19, 28),
    ]
    assert published.manifest.stats["splits"]["dev"]["origin"] == f"{saved}[validation]"  # type: ignore[index]
    with pytest.raises(DataImportError, match=r"no column words \(tokens_field"):
        run(config.model_copy(update={"tokens_field": "words"}), store)


@pytest.mark.parametrize("option", [{"fraction": 0.25}, {"count": 5}])
def test_low_resource_sampling_is_reproducible(tmp_path: Path, option: dict[str, object]) -> None:
    folder = conll_folder(tmp_path / "many", {"train.conll": tagged_lines(20), "test.conll": tagged_lines(3)})

    def train_file(seed: int, where: str) -> tuple[str, int]:
        config = ImportConfig.model_validate(
            {"dataset": "many", "format": "conll", "path": str(folder), "splits": ["train", "test"], "seed": seed}
            | option
        )
        manifest = run(config, Store(tmp_path / where)).manifest
        [entry] = manifest.files_with("train")
        assert manifest.stats["splits"]["test"]["examples"] == 3  # type: ignore[index]  # only train is sampled
        return entry.sha256, entry.rows or 0

    first = train_file(7, "a")
    assert first == train_file(7, "b") and first[1] == 5
    assert train_file(8, "c") != first


def test_per_dataset_cap_applies_to_every_split(tmp_path: Path) -> None:
    folder = conll_folder(tmp_path / "cap", {"train.conll": tagged_lines(9), "dev.bio": tagged_lines(4)})
    config = ImportConfig(dataset="cap", format="conll", path=str(folder), splits=["train", "dev"], per_dataset_cap=3)
    manifest = run(config, Store(tmp_path / "store")).manifest
    assert {f.role: f.rows for f in manifest.files} == {"train": 3, "dev": 3}
    ids = [ex.id for ex in Store(tmp_path / "store").records(manifest, role="train")]  # type: ignore[attr-defined]
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1]))  # drawn, but in their original order


def test_config_refuses_what_cannot_work() -> None:
    base = {"dataset": "x", "format": "conll", "path": "d"}
    for extra, message in (
        ({"fraction": 0.5, "count": 3}, "fraction, count: give at most one"),
        ({"splits": ["test"], "count": 3}, "sample the train split"),
        ({"fraction": 0}, "fraction"),
        ({"tokens_field": "words"}, "tokens_field: not used by format 'conll'"),
        ({"dataset": "a/b"}, "dataset"),
    ):
        with pytest.raises(ValidationError, match=message):
            ImportConfig.model_validate(base | extra)


def test_cli_imports_the_demo_corpus(tmp_path: Path) -> None:
    command = ["data", "import", "--preset", "smoke", "--config-json", "{}", "--store", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "tasks.cli", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["address"] == "datasets/demo/v1"


def test_an_imported_dataset_feeds_sampling_training_and_evaluation_by_split(tmp_path: Path) -> None:
    from schemas import SampleConfig
    from tasks import sample
    from tasks.demo import load_demo
    from tasks.eval_sets import load_entry

    store = Store(tmp_path / "store")
    imported = run(ImportConfig.preset("smoke"), store).manifest  # 16 of the train split, all of the test split
    test = load_entry(imported.address, store)
    assert not isinstance(test, str)
    assert {ex.text for ex in test.examples} == {ex.text for ex in load_demo("test")}
    drawn = sample.run(SampleConfig(sources=[imported.address], total=8, split="train"), store)
    train_texts = {ex.text for ex in store.records(imported, role="train")}
    assert {ex.text for ex in store.records(drawn.manifest)} <= train_texts
    assert list(store.split_records(imported, "train")) == list(store.records(imported, role="train"))
