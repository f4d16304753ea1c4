"""The README's first command: the default model on demo passages, published, re-read, scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from schemas import NERExample
from tasks.demo import demo_path, run_demo
from tasks.jsonl import read_jsonl
from tasks.metrics import score
from tasks.score import pair
from tasks.settings import Settings
from tasks.store import Store

pytestmark = pytest.mark.slow


def test_demo_publishes_predictions_and_matching_metrics(
    default_model: Path, rner_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNER_HOME", str(rner_home))
    store = Store(tmp_path / "store", Settings())
    console = Console(record=True, width=120)
    published = run_demo(limit=3, max_tokens=24, console=console, store=store)
    manifest = published.manifest
    assert manifest.kind == "predictions" and manifest.rows == 3
    predictions = list(store.records(manifest))
    assert all(p.completion for p in predictions)
    [metrics_file] = manifest.files_with("report")
    stored = json.loads(store.read_file(manifest.address, metrics_file))
    gold = [ex for ex in read_jsonl(demo_path("test"), NERExample) if ex.id in {p.id for p in predictions}]
    assert stored == score(pair(gold, predictions)).to_dict()
    assert "outputs:" in console.export_text()
    # A second run with the same settings finds the published output and generates nothing.
    again = run_demo(limit=3, max_tokens=24, console=console, store=store)
    assert again == published
