"""The demo learns: the CT model that `make demo` trains (the pipeline smoke preset's SFT config, on the demo
corpus's annotations, on answers alone) scores clearly above the base model on the unseen demo test set, and
`rner extract` with that model finds a news sentence's obvious entities, asking it for the answer alone by itself
(its manifest says how it was trained).

Real training (32 optimizer steps of the embedded SmolLM2-135M on a CPU) and real evaluation: the module's
fixture trains once for both tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import EvalConfig, MixConfig, PipelineConfig
from tasks import evaluate, mix, sft
from tasks.models import trained_without_reasoning
from tasks.settings import Settings
from tasks.store import Published, Store

SMOKE = PipelineConfig.preset("smoke")
# Written for this test: a news sentence with three obvious entities (and a date, a type the demo corpus lacks).
SENTENCE = (
    "Prime Minister Lena Markussen told reporters in Bergen on 4 March that Statkraft Nordic will build two wind "
    "farms off the coast of Norway."
)
OBVIOUS = {("person", "Lena Markussen"), ("location", "Bergen"), ("organization", "Statkraft Nordic")}
LABELS = "person,organization,location,date"


@pytest.fixture(scope="module")
def demo_ct(tmp_path_factory: pytest.TempPathFactory, rner_home: Path, default_model: Path) -> tuple[Store, Published]:
    """The demo's CT model, trained as the pipeline trains it (its mix of ``demo:cot`` and an empty CG output is
    the demo corpus's annotations), in a store of its own."""
    path = tmp_path_factory.mktemp("demo-store")
    store = Store(path, Settings(RNER_HOME=str(rner_home), RNER_STORE=str(path)))  # type: ignore[call-arg]
    data = mix.run(MixConfig(sources=["demo:cot"]), store)
    return store, sft.run(
        SMOKE.sft.model_copy(update={"dataset": data.manifest.address}), store, settings=store.settings
    )


@pytest.mark.slow
def test_the_demo_ct_model_is_clearly_above_the_base_model(demo_ct: tuple[Store, Published]) -> None:
    store, ct = demo_ct
    assert trained_without_reasoning(f"store:{ct.manifest.address}", store.settings)
    scores = {}
    for name, model in (("base", "default"), ("ct", f"store:{ct.manifest.address}")):
        config: EvalConfig = SMOKE.evaluate.model_copy(
            update={"model": SMOKE.evaluate.model.model_copy(update={"model": model})}
        )
        scores[name] = evaluate.run(config, store).manifest.stats
    assert scores["base"]["examples"] == scores["ct"]["examples"] == 18  # the whole demo test set
    # The base model answers in prose; the CT model has learnt the answer's form and most of the entities.
    assert scores["base"]["average_f1"] < 0.1, scores["base"]
    assert scores["ct"]["parse_failures"] <= 1, scores["ct"]
    assert scores["ct"]["average_f1"] >= scores["base"]["average_f1"] + 0.4, scores


@pytest.mark.slow
def test_extract_with_the_demo_model_finds_the_obvious_entities(demo_ct: tuple[Store, Published]) -> None:
    store, ct = demo_ct
    env = {**os.environ, "RNER_STORE": store.url, "RNER_HOME": str(store.settings.home_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "extract", "--model", f"store:{ct.manifest.address}", "--labels", LABELS,
         "--text", SENTENCE, "--show-raw"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trained on answers alone" in done.stderr  # no --answer-only needed: the manifest says so
    prediction = json.loads(done.stdout)
    found = {(e["label"], e["text"]) for e in prediction["entities"]}
    assert len(OBVIOUS & found) >= 2, prediction  # a 135M model after 32 steps: most of them, not every one
    for entity in prediction["entities"]:
        assert SENTENCE[entity["start"] : entity["end"]] == entity["text"]
