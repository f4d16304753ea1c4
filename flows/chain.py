"""The links the pipeline and the recipe flows chain stages with: training data, CT, RE, evaluation, the report.

Each link runs its stages as cached jobs (``flows.stages.step``) and passes outputs on by address: the
training data a model trains on, the CT model RE starts from, the models evaluations load
(``store:<address>``). Two flows that run the same stage on the same config and store share the work: the
second finds the first's output as a cache hit.

Usage (inside a flow)::

    data = training_data(["datasets/ner-cot/v3", "demo:cot"], store, backend)
    ct = train(sft, data, store, backend)
    sample, re = reinforce(ct, sample_config, grpo, store, backend)
    evals = evaluate_models({"Base": sft.model, "CT": ct, "RE": re}, evaluate, store, backend)
    report, table = publish_report("pipeline", "zero-shot F1: base, CT, RE", evals, store)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from flows.stages import show_output, step
from schemas import EvalConfig, GRPOConfig, ImportConfig, MixConfig, ReportConfig, SampleConfig, SFTConfig
from schemas.jobs import JobBackend
from tasks import report
from tasks.mix import DEMO_COT
from tasks.models import STORE_SCHEME
from tasks.store import Published, Store


def imported(configs: Sequence[ImportConfig], store: Store, backend: JobBackend) -> list[Published]:
    """Each labelled set imported into the store (``datasets/<dataset>/vN``)."""
    return [step("import", config, store, backend, label=f"import-{config.dataset}") for config in configs]


def training_data(
    sources: Sequence[str],
    store: Store,
    backend: JobBackend,
    *,
    on_duplicate: Literal["error", "first"] = "first",
    label: str = "mix",
) -> Published:
    """One published dataset to train on: a published dataset as it is; several (their train splits), or
    ``demo:cot``, mixed in this order."""
    if len(sources) == 1 and sources[0] != DEMO_COT:
        return store.load(sources[0])
    return step("mix", MixConfig(sources=tuple(sources), on_duplicate=on_duplicate), store, backend, label=label)


def train(
    sft: SFTConfig,
    data: Published,
    store: Store,
    backend: JobBackend,
    *,
    label: str = "sft",
    with_cot: bool | None = None,
) -> Published:
    """SFT of ``sft.model`` on ``data``; ``with_cot``, when given, replaces ``sft``'s (the ablation's rows);
    ``label`` names the step when a flow trains several models."""
    update = {"dataset": data.manifest.address} | ({} if with_cot is None else {"with_cot": with_cot})
    return step("sft", sft.model_copy(update=update), store, backend, label=label)


def reinforce(
    ct: Published, sample: SampleConfig, grpo: GRPOConfig, store: Store, backend: JobBackend
) -> tuple[Published, Published]:
    """RE: the RE data sampled, then GRPO from the CT model on it; (the sample, the RE model)."""
    data = step("sample", sample, store, backend)
    update = {"dataset": data.manifest.address, "model": STORE_SCHEME + ct.manifest.address}
    return data, step("grpo", grpo.model_copy(update=update), store, backend)


def evaluate_models(
    models: Mapping[str, Published | str], evaluate: EvalConfig, store: Store, backend: JobBackend
) -> dict[str, Published]:
    """Each model (by its row label) evaluated as ``evaluate`` says, with ``evaluate.model``'s kind of runner: a
    trained model as published, or a model reference (the base model a flow started from)."""
    evals = {}
    for name, model in models.items():
        reference = model if isinstance(model, str) else STORE_SCHEME + model.manifest.address
        generator = evaluate.model.model_copy(update={"model": reference})
        config = evaluate.model_copy(update={"model": generator})
        evals[name] = step("evaluate", config, store, backend, label=f"evaluate-{name.lower()}")
    return evals


def publish_report(name: str, title: str, evals: Mapping[str, Published], store: Store) -> tuple[Published, str]:
    """The flow's comparison table (``tasks.report``: reading a few metrics files, drawing one chart): published,
    shown as the run's ``<name>-report`` artifact; (the report output, the table and its notes as markdown)."""
    config = ReportConfig(title=title, evals={label: p.manifest.address for label, p in evals.items()})
    published = report.publish(config, store)
    show_output(name, published, store)
    comparison = report.compare(evals, store)
    return published, comparison.markdown() + "".join(f"\n- {line}" for line in comparison.notes())
