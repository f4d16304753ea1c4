"""Evaluation: end to end on the real vLLM server, exact numbers on a scripted server, the eval-set loaders.

The real SmolLM2-135M rarely answers in the format, so the real-server test checks the mechanics (every
example predicted, stored metrics equal to `rner score` on the stored files, a report with real PNGs), not
quality. The scripted server (tests/fault_server.py) answers with gold entities or garbage by rule, which is
what lets a test know the exact F1 and parse-failure rate to expect.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fault_server import FaultServer, ok, sequence
from matplotlib.image import imread

from schemas import Endpoint, EvalConfig, Manifest, NERExample, Prediction, TransformersRunner
from tasks import evaluate
from tasks.demo import load_demo
from tasks.eval_sets import EvalSetError, load_eval_sets, select_examples
from tasks.metrics import score
from tasks.prompts import answer_json
from tasks.store import Store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GOLD = {ex.text: ex for ex in load_demo("test")}


def instructuie_folder(root: Path, name: str = "mini-ner") -> Path:
    """A small dataset in the InstructUIE layout, written for these tests."""
    folder = root / name
    folder.mkdir(parents=True)
    rows = [
        {
            "sentence": "Ada Lovelace wrote to Charles Babbage from London.",
            "entities": [
                {"name": "Ada Lovelace", "type": "person", "pos": [0, 12]},
                {"name": "Charles Babbage", "type": "person", "pos": [0, 3]},  # a wrong pos: placed by its text
                {"name": "London", "type": "location"},  # no pos
                {"name": "wrote", "type": "NA", "pos": [13, 18]},  # InstructUIE's "no entity"
            ],
        },
        {"sentence": "The meeting never happened.", "entities": []},
        {"sentence": "Paris is lovely in May.", "entities": [{"name": "Lyon", "type": "location", "pos": [0, 4]}]},
    ]
    (folder / "test.json").write_text(json.dumps(rows))
    (folder / "labels.json").write_text(json.dumps(["person", "location", "misc"]))
    return folder


def publish_ner(store: Store, address: str, examples: list[NERExample]) -> str:
    out = store.output(address)
    out.publish(
        kind="ner", stage="import", config=EvalConfig.preset("smoke"), files=[out.write("data", examples, NERExample)]
    )
    return address


def exported(store: Store, manifest: Manifest, role: str, path: Path) -> Path:
    path.write_bytes(b"".join(store.read_file(manifest.address, f) for f in manifest.files_with(role)))
    return path


def rner_score(gold: Path, pred: Path, mode: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tasks.cli",
        "score",
        "--gold",
        str(gold),
        "--pred",
        str(pred),
        "--mode",
        mode,
        "--json",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def gold_or_garbage(prompt: str) -> str:
    """A scripted model: the gold answer for the demo passages, except prose for those with an odd-numbered id."""
    text = re.search(r"^Text: (.*)$", prompt, re.MULTILINE).group(1)  # type: ignore[union-attr]
    ex = GOLD.get(text)
    if ex is None or int(ex.id[-1]) % 2:
        return "<think>I am not sure.</think> There might be a person in there."
    return f"<think>\nThe entities are clear.\n</think>\n\n{answer_json(ex.entities, ex.labels)}"


def test_instructuie_folder_becomes_examples_with_the_schema_in_the_prompt(tmp_path: Path) -> None:
    folder = instructuie_folder(tmp_path)
    [loaded] = load_eval_sets(EvalConfig(datasets=[str(folder)]), Store(tmp_path / "store"))
    assert [ex.id for ex in loaded.examples] == ["mini-ner-0", "mini-ner-1", "mini-ner-2"]
    first = loaded.examples[0]
    assert {ex.source for ex in loaded.examples} == {"mini-ner"} and first.labels == ("person", "location", "misc")
    assert [(e.text, e.label, e.start) for e in first.entities] == [
        ("Ada Lovelace", "person", 0),
        ("Charles Babbage", "person", 22),
        ("London", "location", 43),
    ]
    assert loaded.examples[2].entities == () and loaded.dropped_gold == 1  # "Lyon" is not in its sentence
    assert loaded.ref.address == "external/mini-ner"
    # The prompt carries the schema without the paper's catch-all labels.
    [message] = evaluate.messages(first)
    assert "Entity types: person, location\n" in message["content"]
    # Where the folder lives does not change its digest; its name does.
    moved = instructuie_folder(tmp_path / "elsewhere")
    renamed = instructuie_folder(tmp_path, "other-ner")
    [again] = load_eval_sets(EvalConfig(datasets=[str(moved)]), Store(tmp_path / "store"))
    [other] = load_eval_sets(EvalConfig(datasets=[str(renamed)]), Store(tmp_path / "store"))
    assert again.ref.digest == loaded.ref.digest != other.ref.digest


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [
        ('[{"sentence": "Ada", "entities": [{"name": "Ada", "type": "robot"}]}]', '["person"]', r"\[0\]: entity type"),
        ('[{"text": "Ada"}]', '["person"]', r"test.json: not in the InstructUIE layout: 0.sentence: Field required"),
        ('[{"sentence": "Ada"}]', '{"person": 1}', r"labels.json: not in the InstructUIE layout"),
    ],
)
def test_malformed_instructuie_files_name_the_file(tmp_path: Path, rows: str, labels: str, message: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "test.json").write_text(rows)
    (folder / "labels.json").write_text(labels)
    with pytest.raises(EvalSetError, match=message):
        load_eval_sets(EvalConfig(datasets=[str(folder)]), Store(tmp_path / "store"))


def test_missing_eval_sets_are_named_in_one_error(tmp_path: Path) -> None:
    instructuie_folder(tmp_path / "suite", "CrossNER_AI")
    instructuie_folder(tmp_path / "suite", "mit-movie")
    config = EvalConfig(
        suite="crossner_mit", suite_root=str(tmp_path / "suite"), datasets=["datasets/absent", "demo:dev"]
    )
    with pytest.raises(EvalSetError) as error:
        load_eval_sets(config, Store(tmp_path / "store"))
    message = str(error.value)
    assert message.startswith("7 eval set(s) not found")
    for name in ("'datasets/absent'", "'demo:dev'", "CrossNER_literature", "CrossNER_science", "mit-restaurant"):
        assert name in message
    assert "CrossNER_AI" not in message and "mit-movie (" not in message
    with pytest.raises(EvalSetError, match="needs `suite_root`"):
        load_eval_sets(EvalConfig(suite="crossner_mit"), Store(tmp_path / "store"))
    with pytest.raises(ValueError, match="unknown suite 'conll'"):
        EvalConfig(suite="conll")


def test_repeated_names_and_ids_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    publish_ner(store, "datasets/copy", load_demo("test")[:2])
    with pytest.raises(EvalSetError, match="dataset 'demo-news' comes from two eval sets"):
        evaluate.run(EvalConfig(datasets=["demo:test", "datasets/copy"]), store)


def test_scores_parse_failures_and_resume_on_a_scripted_server(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with FaultServer(sequence(ok(answer=gold_or_garbage))) as server:
        config = EvalConfig.preset("smoke", model=server.endpoint.model_dump(), max_examples=None, shard_size=5)
        published = evaluate.run(config, store)
        sent = server.requests
        assert evaluate.run(config, store) == published and server.requests == sent  # found, nothing sent
    manifest, gold = published.manifest, load_demo("test")
    assert manifest.kind == "predictions" and manifest.rows == len(gold) == sent
    predictions: list[Prediction] = list(store.records(manifest))  # type: ignore[arg-type]
    failed = [p for p in predictions if p.parse_error is not None]
    assert {p.id for p in failed} == {ex.id for ex in gold if int(ex.id[-1]) % 2}
    assert all(p.entities == () and p.parse_error.startswith("no_json") for p in failed)  # type: ignore[union-attr]
    stats = manifest.stats
    assert stats["parse_failures"] == len(failed) and stats["parse_failure_rate"] == len(failed) / len(gold)
    [metrics_file] = manifest.files_with("metrics")
    metrics = json.loads(store.read_file(manifest.address, metrics_file))
    # Gold answers where the model answered, nothing where it did not: precision 1, recall that of the answered.
    failed_ids = {p.id for p in failed}
    expected = score([(ex, [] if ex.id in failed_ids else list(ex.entities)) for ex in gold]).to_dict()
    assert metrics["paper"]["micro"]["precision"] == 1.0
    assert metrics["paper"] == expected and 0 < expected["micro"]["recall"] < 1
    assert metrics["generation"]["all"]["parse_failures"] == len(failed)
    assert stats["reasoning_tokens_mean"] is None  # an endpoint without a tokenizer: completion tokens only


@pytest.mark.slow
def test_eval_on_the_real_vllm_server_matches_rner_score(
    vllm_endpoint: Endpoint, default_model: Path, store: Store, tmp_path: Path
) -> None:
    address = publish_ner(store, "datasets/demo-test", load_demo("test"))
    folder = instructuie_folder(tmp_path)
    config = EvalConfig.preset(
        "smoke",
        model=vllm_endpoint.model_dump(mode="json"),
        datasets=[address, str(folder)],
        sampling={"max_tokens": 48},
        tokenizer=str(default_model),
        per_label_dataset="mini-ner",
    )
    published = evaluate.run(config, store)
    manifest = published.manifest
    assert manifest.address.startswith("evals/evaluate/") and manifest.rows == 6 * 2 + 2
    assert {ref.address for ref in manifest.inputs} == {"datasets/demo-test", "external/mini-ner"}
    predictions = list(store.records(manifest))
    assert all(p.completion and p.generation.completion_tokens > 0 for p in predictions)  # type: ignore[attr-defined]
    assert manifest.stats["reasoning_tokens_mean"] is not None
    # The stored metrics are what `rner score` says of the stored gold and predictions.
    gold = exported(store, manifest, "gold", tmp_path / "gold.jsonl")
    pred = exported(store, manifest, "data", tmp_path / "pred.jsonl")
    [metrics_file] = manifest.files_with("metrics")
    metrics = json.loads(store.read_file(manifest.address, metrics_file))
    assert metrics["paper"] == rner_score(gold, pred, "paper")
    assert metrics["strict"] == rner_score(gold, pred, "strict")
    assert manifest.stats["average_f1"] == metrics["paper"]["average_f1"]
    # The report: a table row per dataset, and two charts that are real PNG images.
    [report] = manifest.files_with("report")
    text = store.read_file(manifest.address, report).decode()
    for name in [*metrics["paper"]["per_dataset"], "**average**"]:
        assert f"| {name} |" in text
    charts = manifest.files_with("chart")
    assert len(charts) == 2
    for chart in charts:
        png = store.read_file(manifest.address, chart)
        assert png.startswith(PNG_SIGNATURE)
        height, width, _ = imread(io.BytesIO(png)).shape
        assert height > 100 and width > 100
        assert f"](../{chart.path})" in text
    assert "F1 per label: mini-ner" in text
    assert evaluate.run(config, store) == published


@pytest.mark.slow
def test_in_process_transformers_generation(default_model: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    config = EvalConfig(
        model=TransformersRunner(model=str(default_model), batch_size=2),
        datasets=[str(instructuie_folder(tmp_path))],
        sampling={"max_tokens": 8},
        shard_size=2,
    )
    published = evaluate.run(config, store)
    predictions = list(store.records(published.manifest))
    assert [p.id for p in predictions] == ["mini-ner-0", "mini-ner-1", "mini-ner-2"]
    for p in predictions:
        assert p.generation.model == str(default_model) and 0 < p.generation.completion_tokens <= 8  # type: ignore[attr-defined]
    assert published.manifest.stats["model_identity"].startswith("sha256:")
    assert published.manifest.stats["reasoning_tokens_mean"] is not None


def test_stage_and_human_command_lines(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    job = [sys.executable, "-m", "tasks.evaluate"]  # what job backends run
    human = [sys.executable, "-c", "import typer; from tasks.evaluate import cli_eval; typer.run(cli_eval)"]
    with FaultServer(sequence(ok(answer=gold_or_garbage))) as server:
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump({"preset": "smoke", "model": server.endpoint.model_dump(mode="json")}))
        first = subprocess.run([*job, "--config", str(path), "--store", store], capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        assert "progress 12/12" in first.stderr
        again = subprocess.run([*human, "--config", str(path), "--store", store], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert "demo-news" in again.stdout and "average over datasets" in again.stdout
    # The smoke preset's seeded sample of 2 per dataset; the scripted model garbles the odd-numbered examples.
    smoke = EvalConfig.preset("smoke")
    chosen = select_examples(load_eval_sets(smoke, Store(store)), smoke.max_examples, smoke.seed)
    garbled = sum(int(ex.id[-1]) % 2 for ex in chosen)
    failures = rf"parse failures: {garbled} of 12; tokens per example: reasoning n/a, completion \d"
    assert re.search(failures, again.stdout)
    report = Path(re.search(r"^report: (.*\.md)$", again.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert report.read_text().startswith("# Evaluation report")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": [str(tmp_path / "nowhere")]}))
    failed = subprocess.run([*job, "--config", str(bad), "--store", store], capture_output=True, text=True)
    assert failed.returncode == 1 and "1 eval set(s) not found" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_store_references_resolve_in_the_store_given_on_the_command_line(
    training_data: Any, sft_model: Any, tmp_path: Path
) -> None:
    config = EvalConfig(
        model=TransformersRunner(model=f"store:{sft_model.manifest.address}", batch_size=2),
        datasets=[str(instructuie_folder(tmp_path))],
        sampling={"max_tokens": 4},
        shard_size=2,
    )
    env = {**os.environ, "RNER_STORE": str(tmp_path / "elsewhere"), "RNER_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.evaluate", "--config-json", config.model_dump_json(),
         "--store", training_data.store.url],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    published = training_data.store.load(json.loads(done.stdout.strip().splitlines()[-1])["address"])
    predictions = list(training_data.store.records(published.manifest))
    assert len(predictions) == 3 and {p.generation.model for p in predictions} == {config.model.model}
