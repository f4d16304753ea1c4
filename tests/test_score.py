"""`rner score` on the demo corpus: per-dataset tables, JSON output, and every way the inputs can be wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import NERExample, Prediction
from tasks.demo import demo_path, load_demo
from tasks.prompts import assistant_target
from tasks.score import ScoreInputError, score_files

GOLD = demo_path("test")


def rner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True, timeout=120)


def write(path: Path, predictions: list[Prediction]) -> Path:
    path.write_text("".join(p.model_dump_json() + "\n" for p in predictions))
    return path


def perfect(example: NERExample, as_completion: bool) -> Prediction:
    if as_completion:
        target = assistant_target("They are all there.", example.entities, example.labels)
        return Prediction(id=example.id, completion=target)
    return Prediction(id=example.id, entities=example.entities)


@pytest.mark.parametrize("as_completion", [False, True])
@pytest.mark.parametrize("mode", ["paper", "strict"])
def test_perfect_predictions_score_one(tmp_path: Path, mode: str, as_completion: bool) -> None:
    pred = write(tmp_path / "pred.jsonl", [perfect(ex, as_completion) for ex in load_demo("test")])
    result = rner("score", "--gold", str(GOLD), "--pred", str(pred), "--mode", mode, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["micro"]["f1"] == 1.0 and report["average_f1"] == 1.0
    assert set(report["per_dataset"]) == {ex.source for ex in load_demo("test")}
    for scores in report["per_dataset"].values():
        assert {"precision", "recall", "f1", "support"} <= set(scores)


def test_partial_predictions_per_dataset_and_average(tmp_path: Path) -> None:
    gold = load_demo("test")
    predictions = []
    for ex in gold:
        if ex.source == "demo-news":
            continue  # missing predictions count as predicting nothing
        keep = ex.entities[: len(ex.entities) // 2] if ex.source == "demo-music" else ex.entities
        predictions.append(Prediction(id=ex.id, entities=keep))
    report = score_files(GOLD, write(tmp_path / "p.jsonl", predictions), "strict").to_dict()
    news, music = report["per_dataset"]["demo-news"], report["per_dataset"]["demo-music"]
    assert news["recall"] == 0 and news["f1"] == 0
    music_gold = [ex for ex in gold if ex.source == "demo-music"]
    kept = sum(len(ex.entities) // 2 for ex in music_gold)
    assert music["precision"] == 1.0
    assert music["recall"] == pytest.approx(kept / sum(len(ex.entities) for ex in music_gold))
    per_dataset_f1 = [d["f1"] for d in report["per_dataset"].values()]
    assert report["average_f1"] == pytest.approx(sum(per_dataset_f1) / len(per_dataset_f1))


def test_table_output(tmp_path: Path) -> None:
    pred = write(tmp_path / "pred.jsonl", [perfect(ex, False) for ex in load_demo("test")])
    result = rner("score", "--gold", str(GOLD), "--pred", str(pred))
    assert result.returncode == 0, result.stderr
    assert "demo-sports" in result.stdout and "average over datasets" in result.stdout
    assert "100.00" in result.stdout


def test_paper_mode_normalises_where_strict_does_not(tmp_path: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    ex = NERExample(
        id="g",
        text="Police in The Hague said so.",
        labels=["location", "misc"],
        entities=[
            {"text": "The Hague", "label": "location", "start": 10, "end": 19},
            {"text": "Police", "label": "misc", "start": 0, "end": 6},
        ],
    )
    gold.write_text(ex.model_dump_json() + "\n")
    pred = write(tmp_path / "p.jsonl", [Prediction(id="g", entities=[{"text": "Hague", "label": "Location"}])])
    paper = score_files(gold, pred, "paper").to_dict()
    strict = score_files(gold, pred, "strict").to_dict()
    assert paper["micro"]["f1"] == 1.0  # article and case removed, the catch-all label dropped from gold
    assert strict["micro"]["f1"] == 0.0


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "nope", "entities": []}'], r"1 prediction id\(s\) are not in gold: 'nope'"),
        (['{"id": "news-test-01", "entities": []}'] * 2, "predictions: id 'news-test-01' appears 2 times"),
        (['{"id": "news-test-01", "entities": []}', '{"id": "x", '], "pred.jsonl:2: invalid JSON"),
        (['{"id": "news-test-01"}'], "pred.jsonl:1: .*needs 'entities' or 'completion'"),
        (
            ['{"id": "news-test-01", "entities": [{"text": "Bergen", "label": "location", "start": 0, "end": 6}]}'],
            "does not match the gold text",
        ),
    ],
)
def test_bad_predictions_are_clear_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines) + "\n")
    result = rner("score", "--gold", str(GOLD), "--pred", str(pred))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert __import__("re").search(message, " ".join(result.stderr.split())), result.stderr


def test_bad_mode_and_missing_file(tmp_path: Path) -> None:
    result = rner("score", "--gold", str(GOLD), "--pred", str(GOLD), "--mode", "fuzzy")
    assert result.returncode == 2 and "paper" in result.stderr
    result = rner("score", "--gold", str(tmp_path / "absent.jsonl"), "--pred", str(GOLD))
    assert result.returncode == 1 and "absent.jsonl" in result.stderr


def test_score_files_raises_for_unknown_ids(tmp_path: Path) -> None:
    with pytest.raises(ScoreInputError):
        score_files(GOLD, write(tmp_path / "p.jsonl", [Prediction(id="ghost", entities=[])]))
