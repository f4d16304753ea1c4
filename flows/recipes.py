"""The paper's experiments as flows, one per recipe config (``schemas.recipes``); each ends with its table.

Every flow chains stage jobs (``flows.chain``) and ends with a comparison report: F1 (paper mode) per dataset
and the average, one row per model, published as ``reports/report/<hash>`` (``rner report <address>`` renders
it again) and shown as the run's ``recipe-<name>-report`` artifact. It returns where everything is:
``{"store", "data": {name: address}, "models": {row: address}, "evals": {row: address}, "report",
"comparison"}`` (the table as markdown). Recipes that share stages with the same configs share the work:
the CT model of ``recipe-ablation`` is the CT model of ``recipe-zero-shot`` on the same data and store, a
cache hit.

Usage::

    rner recipe run ablation --smoke            # on a local Prefect server, the embedded defaults
    recipe_ablation(Ablation.preset("smoke"), store="/tmp/store")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import Flow, flow

from flows.chain import evaluate_models, imported, publish_report, reinforce, train, training_data
from flows.stages import step
from schemas import Ablation, CrossLingual, LowResource, RecipeEval, SFTConfig, Supervised, ZeroShot
from schemas.jobs import JobBackend, LocalJob
from tasks.store import Published, Store

ABLATION_ROWS = ("SFT raw labels", "SFT CoT w/o reasoning", "CT", "CT+RE")
"""The ablation's rows: SFT on the raw labels, SFT on the CoT data's answers alone, SFT with the reasoning
(CT), CT then GRPO (RE)."""


def _finish(
    name: str,
    title: str,
    data: Mapping[str, Published],
    models: Mapping[str, Published],
    evals: Mapping[str, Published],
    store: Store,
) -> dict[str, Any]:
    report, table = publish_report(f"recipe-{name}", title, evals, store)
    return {
        "store": store.url,
        "data": {label: p.manifest.address for label, p in data.items()},
        "models": {label: p.manifest.address for label, p in models.items()},
        "evals": {label: p.manifest.address for label, p in evals.items()},
        "report": report.manifest.address,
        "comparison": table,
    }


def _store(store: str | None) -> Store:
    return Store(store) if store else Store.from_settings()


@flow(name="recipe-ablation")
def recipe_ablation(config: Ablation, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, Any]:  # noqa: B008
    """The paper's ablation: SFT on raw labels, SFT on the CoT answers without reasoning, CT, CT + RE; one table."""
    target = _store(store)
    raw = training_data([p.manifest.address for p in imported(config.raw, target, backend)], target, backend,
                        on_duplicate="error", label="mix-raw")  # fmt: skip
    cot = training_data(config.cot, target, backend)
    raw_row, answers_row, ct_row, re_row = ABLATION_ROWS
    models = {
        raw_row: train(config.sft, raw, target, backend, label="sft-raw", with_cot=False),
        answers_row: train(config.sft, cot, target, backend, label="sft-answers", with_cot=False),
        ct_row: train(config.sft, cot, target, backend, with_cot=True),
    }
    sample, models[re_row] = reinforce(models[ct_row], config.sample, config.grpo, target, backend)
    evals = evaluate_models(models, config.evaluate, target, backend)
    data = {"raw": raw, "cot": cot, "re": sample}
    return _finish("ablation", "Ablation: F1 per dataset", data, models, evals, target)


@flow(name="recipe-zero-shot")
def recipe_zero_shot(config: ZeroShot, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, Any]:  # noqa: B008
    """CT (+ RE) on the CoT data, each evaluated zero-shot (CrossNER/MIT: the paper's Table 1; or the 20 sets)."""
    target = _store(store)
    cot = training_data(config.cot, target, backend)
    models = {"CT": train(config.sft, cot, target, backend)}
    data = {"cot": cot}
    if config.reinforce:
        data["re"], models["RE"] = reinforce(models["CT"], config.sample, config.grpo, target, backend)
    evals = evaluate_models(models, config.evaluate, target, backend)
    suite = config.evaluate.suite or "given eval sets"
    return _finish("zero-shot", f"Zero-shot F1 per dataset ({suite})", data, models, evals, target)


def _train_and_test(
    name: str,
    title: str,
    sft: SFTConfig,
    evaluate: RecipeEval,
    train_sets: Sequence[Published],
    test_sets: Sequence[Published],
    store: Store,
    backend: JobBackend,
) -> dict[str, Any]:
    """SFT on the train splits of ``train_sets`` (mixed), evaluated on the test splits of ``test_sets``."""
    data = training_data([p.manifest.address for p in train_sets], store, backend, on_duplicate="error")
    datasets = sorted({str(p.manifest.config["dataset"]) for p in train_sets})
    row = f"SFT on {datasets[0]}" if len(datasets) == 1 else f"SFT on {len(datasets)} sets"
    models = {row: train(sft, data, store, backend)}
    evals = evaluate_models(models, evaluate.on([p.manifest.address for p in test_sets]), store, backend)
    return _finish(name, title, {"train": data}, models, evals, store)


@flow(name="recipe-supervised")
def recipe_supervised(config: Supervised, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, Any]:  # noqa: B008
    """SFT on the labelled sets' train splits, evaluated on their test splits."""
    target = _store(store)
    sets = imported(config.datasets, target, backend)
    return _train_and_test("supervised", "Supervised F1 per dataset", config.sft, config.evaluate, sets, sets,
                           target, backend)  # fmt: skip


@flow(name="recipe-cross-lingual")
def recipe_cross_lingual(
    config: CrossLingual,
    backend: JobBackend = LocalJob(),  # noqa: B008
    store: str | None = None,
) -> dict[str, Any]:
    """SFT on English sets, evaluated on other languages' test sets (one column each)."""
    target = _store(store)
    train_sets, test_sets = imported(config.train, target, backend), imported(config.test, target, backend)
    return _train_and_test("cross-lingual", "Cross-lingual F1 per dataset", config.sft, config.evaluate,
                           train_sets, test_sets, target, backend)  # fmt: skip


@flow(name="recipe-low-resource")
def recipe_low_resource(
    config: LowResource,
    backend: JobBackend = LocalJob(),  # noqa: B008
    store: str | None = None,
) -> dict[str, Any]:
    """SFT on each fraction of a train split, every model evaluated on the same whole test split."""
    target = _store(store)
    name = config.data.dataset
    [whole] = imported([config.data], target, backend)
    data: dict[str, Published] = {"whole": whole}
    models: dict[str, Published] = {}
    for fraction in config.fractions:
        row = f"{100 * fraction:g}%"
        part = config.data.model_copy(update={"fraction": fraction, "splits": ("train",)})
        data[row] = step("import", part, target, backend, label=f"import-{name}-{row}")
        models[row] = train(config.sft, data[row], target, backend, label=f"sft-{row}")
    evals = evaluate_models(models, config.evaluate.on([whole.manifest.address]), target, backend)
    return _finish("low-resource", f"Low-resource F1 ({name}: share of the train split)", data, models, evals,
                   target)  # fmt: skip


RECIPE_FLOWS: dict[str, Flow[..., dict[str, Any]]] = {
    "ablation": recipe_ablation,
    "zero-shot-crossner-mit": recipe_zero_shot,
    "zero-shot-20": recipe_zero_shot,
    "supervised": recipe_supervised,
    "low-resource": recipe_low_resource,
    "cross-lingual": recipe_cross_lingual,
}
"""The flow of each recipe (``schemas.recipes.RECIPES`` has their configs)."""
