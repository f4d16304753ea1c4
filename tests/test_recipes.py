"""The paper's experiments as recipes (schemas.recipes, flows.recipes, recipes/*.yaml) and the comparison report
(tasks.report, `rner report`).

Every recipe's smoke variant runs end to end under a Prefect test server and produces its table; its F1 values
must be the ones its evaluations' metrics hold. The runs are made cheap (the CI budget): the tiny random
2-layer model of conftest as the backbone, one optimizer step, one example per eval set, 32 new tokens,
in-process generation. All of them share one store, so what one recipe trained another finds as a cache hit:
the ablation's CT and RE models are the zero-shot recipe's, the supervised model is the cross-lingual one's
(on the demo corpus, English only) and the ablation's raw-label model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect_runs import artifacts

from flows.deployments import DEPLOYMENTS, recipe_parameters
from flows.recipes import ABLATION_ROWS, RECIPE_FLOWS, recipe_ablation, recipe_low_resource, recipe_zero_shot
from schemas import (
    RECIPES,
    Ablation,
    Config,
    CrossLingual,
    EvalConfig,
    LowResource,
    ReportConfig,
    Supervised,
    ZeroShot,
)
from tasks import report
from tasks.settings import Settings
from tasks.store import Published, Store

PNG = b"\x89PNG\r\n\x1a\n"
DEMO_TEST_DATASETS = [f"demo-{name}" for name in ("food", "music", "news", "science", "sports", "tech")]


# --- the report, on evaluations written here ---------------------------------------------------------------


def fake_eval(
    store: Store, name: str, paper: dict[str, float], strict: dict[str, float], stats: dict[str, Any] | None = None
) -> Published:
    """An evaluation output with these F1 values per dataset (the average: their mean), as `rner eval` lays it out."""

    def mode(f1s: dict[str, float]) -> dict[str, Any]:
        per_dataset = {d: {"f1": f1s[d]} for d in sorted(f1s)}  # sorted by name, as Report.to_dict writes them
        return {"per_dataset": per_dataset, "average_f1": sum(f1s.values()) / len(f1s)}

    out = store.output(f"evals/evaluate/{name}")
    metrics = json.dumps({"paper": mode(paper), "strict": mode(strict)}).encode()
    files = [out.put_file("metrics", metrics, role="metrics", suffix=".json")]
    config = EvalConfig.preset("smoke", model={"kind": "transformers", "model": name})
    return out.publish(kind="predictions", stage="evaluate", config=config, files=files, stats=stats or {})


@pytest.fixture
def two_evals(tmp_path: Path) -> tuple[Store, Published, Published]:
    store = Store(tmp_path / "store", Settings())
    ct = fake_eval(store, "ct", {"music": 0.5, "ai": 0.25}, {"music": 0.4, "ai": 0.2})
    re = fake_eval(store, "re", {"ai": 0.125, "news": 1 / 3}, {"ai": 0.1, "news": 0.3})
    return store, ct, re


def test_comparison_table_rows_are_evaluations_columns_their_datasets(two_evals: tuple[Store, Published, Published]):
    store, ct, re = two_evals
    comparison = report.compare({"CT": ct, "RE | GRPO": re}, store)
    assert comparison.datasets == ["ai", "music", "news"]  # first appearance; each eval's own are sorted
    assert comparison.markdown() == (
        "| model | ai | music | news | average |\n"
        "|---|---:|---:|---:|---:|\n"
        "| CT | 25.00 | 50.00 | - | 37.50 |\n"
        "| RE \\| GRPO | 12.50 | - | 33.33 | 22.92 |\n"
    )
    strict = report.compare({"CT": ct}, store, "strict")
    assert strict.markdown().splitlines()[2] == "| CT | 20.00 | 40.00 | 30.00 |"
    assert comparison.chart("F1").startswith(PNG)


def test_the_notes_say_in_words_why_a_row_is_zero_and_which_rows_changed_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", Settings())
    base = fake_eval(store, "base", {"news": 0.0}, {"news": 0.0}, stats={"examples": 6, "parse_failures": 6})
    ct = fake_eval(store, "ct", {"news": 0.5}, {"news": 0.4}, stats={"examples": 6, "parse_failures": 0})
    re = fake_eval(store, "re", {"news": 0.504}, {"news": 0.4}, stats={"examples": 6, "parse_failures": 1})
    miss = fake_eval(store, "miss", {"news": 0.0}, {"news": 0.0}, stats={"examples": 6, "parse_failures": 2})
    assert report.compare({"Base": base, "CT": ct, "RE": re, "X": miss}, store).notes() == [
        "Base: F1 0 on every dataset; none of its 6 answers parsed (it did not answer in the form asked for).",
        "RE: within 1 F1 point of CT (+0.4), no measurable change.",
        "X: F1 0 on every dataset; 2 of 6 answers did not parse, the others found no gold entity.",
    ]
    assert report.compare({"CT": ct, "Base": base}, store).notes() == [
        "Base: F1 0 on every dataset; none of its 6 answers parsed (it did not answer in the form asked for)."
    ]
    published = report.publish(ReportConfig(title="t", evals={"Base": base.manifest.address}), store)
    [document] = published.manifest.files_with("report")
    assert (
        "- Base: F1 0 on every dataset; none of its 6" in store.read_file(published.manifest.address, document).decode()
    )


def test_a_published_report_renders_again_from_its_address(two_evals: tuple[Store, Published, Published]) -> None:
    store, ct, re = two_evals
    config = ReportConfig(title="CT vs RE", evals={"CT": ct.manifest.address, "RE": re.manifest.address})
    published = report.publish(config, store)
    manifest = published.manifest
    assert (manifest.kind, manifest.stage) == ("metrics", "report") and manifest.address.startswith("reports/report/")
    assert manifest.inputs == (ct.ref, re.ref)
    assert report.publish(config, store) == published  # the same evaluations and labels: found, not redone
    [chart] = manifest.files_with("chart")
    assert store.read_file(manifest.address, chart).startswith(PNG)
    [document] = manifest.files_with("report")
    text = store.read_file(manifest.address, document).decode()
    assert text.startswith("# CT vs RE\n\n| model | ai | music | news | average |") and f"](../{chart.path})" in text
    rows = report.resolve([manifest.address], store)
    assert {label: p.manifest.address for label, p in rows.items()} == config.evals
    unlabelled = report.resolve([ct.manifest.address, f"{re.manifest.address}=RE"], store)
    assert list(unlabelled) == ["ct", "RE"]  # without a label: the evaluated model's reference


def rner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True, timeout=120)


def test_rner_report_prints_the_table_writes_the_chart_and_refuses_bad_input(
    two_evals: tuple[Store, Published, Published], tmp_path: Path
) -> None:
    store, ct, re = two_evals
    done = rner("report", f"{ct.manifest.address}=CT", f"{re.manifest.address}=RE", "--out", str(tmp_path / "out"),
                "--mode", "strict", "--store", store.url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == report.compare({"CT": ct, "RE": re}, store, "strict").markdown()
    assert (tmp_path / "out" / "report.png").read_bytes().startswith(PNG)
    assert "](report.png)" in (tmp_path / "out" / "report.md").read_text()

    data = store.output("datasets/some/v1")
    not_an_eval = data.publish(kind="ner", stage="import", config=ReportConfig(evals={"x": "y"}), files=[])
    for args, message in (
        (["evals/evaluate/missing"], f"error: nothing is published at {store.uri('evals/evaluate/missing')}"),
        ([not_an_eval.manifest.address], "error: datasets/some/v1 is a 'ner' output of stage 'import', not an eval"),
        ([f"{ct.manifest.address}=A", f"{re.manifest.address}=A"], "error: two rows are labelled 'A'"),
    ):
        failed = rner("report", *args, "--store", store.url)
        assert failed.returncode == 1 and failed.stdout == ""
        assert failed.stderr.startswith(message) and len(failed.stderr.strip().splitlines()) == 1, failed.stderr


# --- the recipe configs ------------------------------------------------------------------------------------


def test_recipe_files_spell_out_the_paper_presets_inputs() -> None:
    """recipes/<name>.yaml is `preset: paper` with each input written out (what a user edits); zero-shot-20 picks
    its suite; each recipe is a deployment of its flow with those parameters."""
    deployments = {d.name: d for d in DEPLOYMENTS}
    for name, cls in RECIPES.items():
        config = recipe_parameters(name)
        paper = cls.preset("paper", **({"evaluate": {"suite": "instructuie_20"}} if name == "zero-shot-20" else {}))
        assert config == paper, name
        deployment = deployments[f"recipe-{name}"]
        assert deployment.parameters == {"config": config}
        assert deployment.entrypoint == f"flows/recipes.py:{RECIPE_FLOWS[name].fn.__name__}"
        assert recipe_parameters(name, smoke=True) == cls.preset("smoke")
    assert recipe_parameters("zero-shot-crossner-mit").evaluate.suite == "crossner_mit"
    sample = recipe_parameters("ablation").sample  # type: ignore[attr-defined]
    assert len(sample.sources) == 20 and not any("CrossNER" in s for s in sample.sources)  # zero-shot stays unseen


@pytest.mark.parametrize(
    ("cls", "overrides", "message"),
    [
        (Supervised, {"sft": {"with_cot": True}}, "sft.with_cot: labelled sets hold no reasoning"),
        (Supervised, {"datasets": [{"dataset": "d", "format": "jsonl", "path": "demo:", "splits": ["train"]}]},
         "datasets: d must import its test split"),
        (LowResource, {"data": {"count": 4}}, "data: give the whole set"),
        (LowResource, {"fractions": [0.1, 0.1]}, "fractions: each once"),
        (LowResource, {"fractions": [0.0]}, "greater than 0"),
        (CrossLingual, {"train": [{"dataset": "d", "format": "jsonl", "path": "demo:", "splits": ["test"]}]},
         "train: d must import its train split"),
        (Ablation, {"evaluate": {"model": {"kind": "endpoint", "base_url": "http://x", "model": "m"}}},
         "a running endpoint cannot serve the models"),
        (ZeroShot, {"cot": []}, "at least 1 item"),
    ],
)  # fmt: skip
def test_recipe_configs_refuse_what_cannot_run(cls: type[Config], overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls.preset("smoke", **overrides)


# --- the recipes, end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe_store(tmp_path_factory: pytest.TempPathFactory, rner_home: Path) -> Iterator[Store]:
    """The one store of every recipe run here; the jobs find their work directories under the session's RNER_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNER_HOME", str(rner_home))
        yield Store(tmp_path_factory.mktemp("recipes") / "store", Settings())


@pytest.fixture(scope="module")
def cheap(tiny_model: Path) -> Callable[..., Config]:
    """``cheap(cls, **overrides)``: the recipe's smoke preset on the tiny model, one step, one example per set."""
    stages = {
        "sft": {"model": str(tiny_model), "max_steps": 1, "global_batch_size": 2, "per_device_batch_size": 2},
        "grpo": {"max_steps": 1, "num_generations": 2, "global_batch_size": 2, "per_device_batch_size": 2,
                 "max_completion_length": 16},
        "evaluate": {"model": {"kind": "transformers", "model": str(tiny_model)}, "max_examples": 1,
                     "sampling": {"max_tokens": 32}},
    }  # fmt: skip

    def config(cls: type[Config], **overrides: Any) -> Config:
        return cls.preset("smoke", **{k: v for k, v in stages.items() if k in cls.model_fields}, **overrides)

    return config


def check_table(result: dict[str, Any], store: Store, rows: list[str], datasets: list[str]) -> None:
    """The run's table has these rows and columns, holds its evaluations' F1 and averages, and is published as a
    report (PNG chart included) whose inputs are those evaluations."""
    lines, _, notes = result["comparison"].partition("\n\n")
    lines = lines.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["model", *datasets, "average"]
    table = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert list(table) == rows == list(result["evals"])
    zero = [row for row, cells in table.items() if not any(float(cell) for cell in cells)]
    assert [line.split(":")[0] for line in notes.splitlines() if "F1 0 on every dataset" in line] == [
        f"- {row}" for row in zero
    ]  # a row of zeros is explained in words
    for row, cells in table.items():
        evaluation = store.load(result["evals"][row])
        assert evaluation.manifest.config["model"]["model"] == f"store:{result['models'][row]}"
        [entry] = evaluation.manifest.files_with("metrics")
        paper = json.loads(store.read_file(evaluation.manifest.address, entry))["paper"]
        assert cells == [f"{100 * paper['per_dataset'][d]['f1']:.2f}" for d in datasets] + [
            f"{100 * evaluation.manifest.stats['average_f1']:.2f}"
        ]
    published = store.load(result["report"]).manifest
    assert (published.kind, published.stage) == ("metrics", "report")
    assert [i.address for i in published.inputs] == [result["evals"][row] for row in rows]
    [chart] = published.files_with("chart")
    assert store.read_file(published.address, chart).startswith(PNG)


def run(flow: Any, config: Config, store: Store) -> tuple[dict[str, Any], dict[str, str]]:
    state = flow(config, store=store.url, return_state=True)
    assert state.is_completed(), state
    return state.result(), artifacts(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def ablation(prefect_server: None, recipe_store: Store, cheap: Callable[..., Config]) -> dict[str, Any]:
    result, shown = run(recipe_ablation, cheap(Ablation), recipe_store)
    assert shown["recipe-ablation-report"] == "markdown"
    return result


def test_ablation_trains_four_models_and_tabulates_them(ablation: dict[str, Any], recipe_store: Store) -> None:
    check_table(ablation, recipe_store, list(ABLATION_ROWS), DEMO_TEST_DATASETS)
    models = {row: recipe_store.load(address).manifest for row, address in ablation["models"].items()}
    raw, answers, ct, re = (models[row] for row in ABLATION_ROWS)
    assert raw.inputs[0].address == ablation["data"]["raw"] and raw.config["with_cot"] is False
    assert answers.inputs[0].address == ct.inputs[0].address == ablation["data"]["cot"]
    assert (answers.config["with_cot"], ct.config["with_cot"]) == (False, True)
    assert [i.address for i in re.inputs] == [ablation["data"]["re"], ct.address]


def test_zero_shot_shares_the_ablations_ct_and_re_models(
    ablation: dict[str, Any], recipe_store: Store, cheap: Callable[..., Config]
) -> None:
    result, _ = run(recipe_zero_shot, cheap(ZeroShot), recipe_store)
    check_table(result, recipe_store, ["CT", "RE"], DEMO_TEST_DATASETS)
    assert result["models"] == {"CT": ablation["models"]["CT"], "RE": ablation["models"]["CT+RE"]}
    assert result["evals"] == {"CT": ablation["evals"]["CT"], "RE": ablation["evals"]["CT+RE"]}


@pytest.fixture(scope="module")
def supervised(prefect_server: None, recipe_store: Store, cheap: Callable[..., Config]) -> dict[str, Any]:
    return run(RECIPE_FLOWS["supervised"], cheap(Supervised), recipe_store)[0]


def test_supervised_trains_on_train_splits_and_evaluates_on_test_splits(
    supervised: dict[str, Any], ablation: dict[str, Any], recipe_store: Store
) -> None:
    check_table(supervised, recipe_store, ["SFT on demo"], ["demo"])
    model = recipe_store.load(supervised["models"]["SFT on demo"]).manifest
    assert model.address == ablation["models"]["SFT raw labels"]  # the ablation's raw-label model, shared
    evaluation = recipe_store.load(supervised["evals"]["SFT on demo"]).manifest
    assert evaluation.stats["examples"] == 1 and evaluation.inputs[0].address == supervised["data"]["train"]


def test_cross_lingual_on_the_demo_corpus_is_the_supervised_run(
    supervised: dict[str, Any], recipe_store: Store, cheap: Callable[..., Config]
) -> None:
    result, _ = run(RECIPE_FLOWS["cross-lingual"], cheap(CrossLingual), recipe_store)
    check_table(result, recipe_store, ["SFT on demo"], ["demo"])
    assert (result["models"], result["evals"]) == (supervised["models"], supervised["evals"])


def test_low_resource_trains_one_model_per_fraction(
    prefect_server: None, recipe_store: Store, cheap: Callable[..., Config]
) -> None:
    # One fraction: each costs a training and an evaluation job (~30 s here); the ablation tabulates several rows.
    result, _ = run(recipe_low_resource, cheap(LowResource, fractions=[0.25]), recipe_store)
    check_table(result, recipe_store, ["25%"], ["demo"])
    part = recipe_store.load(result["data"]["25%"]).manifest
    assert part.stats["splits"]["train"]["examples"] == 9  # of the demo corpus's 36 training passages
    assert [f.role for f in part.files] == ["train"]  # the test split is the whole set's, imported once
    assert recipe_store.load(result["models"]["25%"]).manifest.inputs[0].address == part.address
    evaluation = recipe_store.load(result["evals"]["25%"]).manifest
    assert evaluation.inputs[0].address == result["data"]["whole"]
