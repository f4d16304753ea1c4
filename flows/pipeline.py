"""The whole method as one flow: CG → CT → RE → zero-shot evaluation of the base model and both trained ones.

Every stage is a cached job (``flows.stages``), chained through the store: CG's NER-CoT version (mixed
with ``extra_cot`` when given) trains the CT model; the RE sample and the CT model train the RE model
with GRPO; the base model CT started from (``evaluate_base``), the CT model and the RE model are evaluated
on the same eval sets. A retry of a failed run, or a new run with the same inputs, finds the finished
stages as cache hits. The run ends with a comparison report (F1 per dataset, one row per model;
``tasks.report``), published and shown as an artifact, and returns where everything is.

Usage::

    rner pipeline --preset smoke            # the embedded defaults, on a CPU
    pipeline(PipelineConfig.preset("smoke"))
"""

from prefect import flow

from flows.cg import run_cg
from flows.chain import evaluate_models, publish_report, reinforce, train, training_data
from flows.servers import SharedServers
from schemas import PipelineConfig
from schemas.jobs import JobBackend, LocalJob
from tasks.store import Store


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
    data = training_data((cot.manifest.address, *config.extra_cot), target, backend)
    ct = train(config.sft, data, target, backend)
    sample, re = reinforce(ct, config.sample, config.grpo, target, backend)
    models = {"Base": config.sft.model} if config.evaluate_base else {}
    evals = evaluate_models({**models, "CT": ct, "RE": re}, config.evaluate, target, backend)
    title = f"Zero-shot F1 per dataset: {' vs '.join(evals)}"
    report, table = publish_report("pipeline", title, evals, target)
    return {
        "store": target.url,
        "dataset": cot.manifest.address,
        "training_data": data.manifest.address,
        "ct_model": ct.manifest.address,
        "re_data": sample.manifest.address,
        "re_model": re.manifest.address,
        **{f"eval_{name.lower()}": p.manifest.address for name, p in evals.items()},
        "report": report.manifest.address,
        "comparison": table,
    }
