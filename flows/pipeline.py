"""The whole method as one flow: CG → CT → RE → zero-shot evaluation of both trained models.

Every stage is a cached job (``flows.stages``), chained through the store: CG's NER-CoT version (mixed
with ``extra_cot`` when given) trains the CT model; the RE sample and the CT model train the RE model
with GRPO; both models are evaluated on the same eval sets. A retry of a failed run, or a new run with
the same inputs, finds the finished stages as cache hits. The run ends with a comparison table artifact
(F1 per dataset, CT vs RE) and returns where everything is.

Usage::

    rner pipeline --preset smoke            # the embedded defaults, on a CPU
    pipeline(PipelineConfig.preset("smoke"))
"""

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cg import run_cg
from flows.servers import SharedServers
from flows.stages import step
from schemas import MixConfig, PipelineConfig
from schemas.jobs import JobBackend, LocalJob
from tasks.models import STORE_SCHEME
from tasks.store import Published, Store


def _metrics(published: Published, store: Store) -> dict:
    [entry] = published.manifest.files_with("metrics")
    return json.loads(store.read_file(published.manifest.address, entry))


def comparison(evals: dict[str, Published], store: Store) -> str:
    """Markdown: F1 (paper mode) per dataset, one row per model, as the paper's tables read."""
    metrics = {name: _metrics(p, store)["paper"] for name, p in evals.items()}
    datasets = sorted({d for m in metrics.values() for d in m["per_dataset"]})
    lines = ["| model | " + " | ".join(datasets) + " | average |", "|---|" + "---:|" * (len(datasets) + 1)]
    for name, m in metrics.items():
        cells = [f"{100 * m['per_dataset'][d]['f1']:.2f}" if d in m["per_dataset"] else "-" for d in datasets]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * m['average_f1']:.2f} |")
    return "\n".join(lines) + "\n"


@flow(name="pipeline")
def pipeline(
    config: PipelineConfig,
    backend: JobBackend = LocalJob(),  # noqa: B008
    store: str | None = None,
) -> dict[str, str]:
    """CG → CT → RE → evaluation; returns the address of every output."""
    target = Store(store) if store else Store.from_settings()
    with SharedServers() as servers:
        cot = run_cg(config.cg, target, backend, servers)
    data = cot
    if config.extra_cot:
        mix = MixConfig(sources=(cot.manifest.address, *config.extra_cot), on_duplicate="first")
        data = step("mix", mix, target, backend)
    ct = step("sft", config.sft.model_copy(update={"dataset": data.manifest.address}), target, backend)
    sample = step("sample", config.sample, target, backend)
    update = {"dataset": sample.manifest.address, "model": STORE_SCHEME + ct.manifest.address}
    re = step("grpo", config.grpo.model_copy(update=update), target, backend)
    evals = {}
    for name, model in (("CT", ct), ("RE", re)):
        generator = config.evaluate.model.model_copy(update={"model": STORE_SCHEME + model.manifest.address})
        evaluate = config.evaluate.model_copy(update={"model": generator})
        evals[name] = step("evaluate", evaluate, target, backend, label=f"evaluate-{name.lower()}")
    table = comparison(evals, target)
    create_markdown_artifact(table, key="pipeline-f1", description="zero-shot F1 per dataset, CT vs RE")
    return {
        "store": target.url,
        "dataset": cot.manifest.address,
        "training_data": data.manifest.address,
        "ct_model": ct.manifest.address,
        "re_data": sample.manifest.address,
        "re_model": re.manifest.address,
        **{f"eval_{name.lower()}": p.manifest.address for name, p in evals.items()},
        "comparison": table,
    }
