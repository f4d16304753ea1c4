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


# -- reliability (issue #17) ---------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_no_part_of_the_first_token(tmp_path: Path) -> None:
    folder = conll_folder(tmp_path / "bom", {})
    (folder / "train.conll").write_bytes("\ufeff".encode() + CONLL_TRAIN.encode())
    jsonl = tmp_path / "bom-jsonl"
    jsonl.mkdir()
    good = NERExample(id="j1", text="Nils Ek cooks.", labels=["chef"], source="x",
                      entities=[{"text": "Nils Ek", "label": "chef", "start": 0, "end": 7}])  # fmt: skip
    (jsonl / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + good.model_dump_json().encode() + b"\n")
    store = Store(tmp_path / "store")
    conll = run(ImportConfig(dataset="bom", format="conll", path=str(folder), splits=["train"]), store)
    first = next(iter(store.records(conll.manifest, role="train")))
    assert first.text == "Ada Lovelace visited Turin ."  # type: ignore[attr-defined]
    assert first.entities[0].text == "Ada Lovelace"  # type: ignore[attr-defined]
    [example] = store.records(run(ImportConfig(dataset="bomj", format="jsonl", path=str(jsonl), splits=["train"]),
                                  store).manifest, role="train")  # fmt: skip
    assert example.id == "j1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "content"),
    [("test.conll", b""), ("test.conll", b"\xef\xbb\xbf\n\n  \n"), ("test.conll", b"-DOCSTART- O\n\n"),
     ("test.jsonl", b""), ("test.jsonl", b"\n\n")],
    ids=["empty", "bom-and-blank-lines", "docstart-only", "empty-jsonl", "blank-jsonl"],
)  # fmt: skip
def test_an_empty_input_is_refused_naming_the_file(tmp_path: Path, name: str, content: bytes) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    fmt = "conll" if name.endswith(".conll") else "jsonl"
    train = CONLL_TRAIN if fmt == "conll" else NERExample(id="t", text="x", labels=[], source="s").model_dump_json()
    (folder / f"train.{fmt}").write_text(train + "\n")
    (folder / name).write_bytes(content)
    store = Store(tmp_path / "store")
    config = ImportConfig(dataset="empty", format=fmt, path=str(folder), splits=["train", "test"])  # type: ignore[arg-type]
    with pytest.raises(DataImportError, match=rf"{folder / name}: .*no examples") as raised:
        run(config, store)
    assert "\n" not in str(raised.value)
    assert store.list("") == []


def _race_at_publish(monkeypatch: pytest.MonkeyPatch, writers: int) -> None:
    """Every writer waits, at its first manifest write, until all writers are there: they all looked for an
    existing version before any published one (the overlap of two `rner data import` runs)."""
    import threading

    from tasks.store import Output

    barrier = threading.Barrier(writers, timeout=30)
    waited: set[int] = set()
    real = Output.publish

    def publish(self: Output, **kwargs: object) -> object:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Output, "publish", publish)


def _in_threads(work: object, n: int) -> list[object]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: work(), range(n)))  # type: ignore[operator]


def test_identical_concurrent_imports_publish_one_version(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = conll_folder(tmp_path / "same", {"train.conll": tagged_lines(6), "test.conll": tagged_lines(2)})
    config = ImportConfig(dataset="same", format="conll", path=str(folder), splits=["train", "test"])
    _race_at_publish(monkeypatch, 4)
    results = _in_threads(lambda: run(config, store), 4)
    assert {r.manifest.address for r in results} == {"datasets/same/v1"}  # type: ignore[attr-defined]
    assert [p for p in store.list("datasets/same") if p.endswith("manifest.json")] == ["datasets/same/v1/manifest.json"]


def test_different_concurrent_imports_get_one_version_each(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = conll_folder(tmp_path / "diff", {"train.conll": tagged_lines(6)})
    configs = iter([ImportConfig(dataset="diff", format="conll", path=str(folder), splits=["train"], count=k)
                    for k in (1, 2, 3, 1, 2, 3)])  # fmt: skip
    _race_at_publish(monkeypatch, 6)
    results = _in_threads(lambda: run(next(configs), store), 6)
    by_count = {r.manifest.config["count"]: r.manifest.address for r in results}  # type: ignore[attr-defined]
    assert sorted(by_count.values()) == ["datasets/diff/v1", "datasets/diff/v2", "datasets/diff/v3"]
    assert all(r.manifest.address == by_count[r.manifest.config["count"]] for r in results)  # type: ignore[attr-defined]
    assert len([p for p in store.list("datasets/diff") if p.endswith("manifest.json")]) == 3


def test_a_lost_reply_does_not_publish_the_import_twice(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from obstore.exceptions import AlreadyExistsError  # noqa: F401  (what the retry of a landed write raises)

    folder = conll_folder(tmp_path / "lost", {"train.conll": tagged_lines(3)})
    config = ImportConfig(dataset="lost", format="conll", path=str(folder), splits=["train"])
    real = Store.put
    lost: list[str] = []

    def put(self: Store, path: str, data: bytes, *, create: bool = False) -> None:
        real(self, path, data, create=create)
        if create and path.endswith("manifest.json") and not lost:
            lost.append(path)
            real(self, path, data, create=create)  # the client's retry: "already exists"

    monkeypatch.setattr(Store, "put", put)
    published = run(config, store)
    assert lost == ["datasets/lost/v1/manifest.json"]
    assert published.manifest.address == "datasets/lost/v1"
    assert [p for p in store.list("datasets/lost") if p.endswith("manifest.json")] == ["datasets/lost/v1/manifest.json"]
