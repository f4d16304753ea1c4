"""One flow per training and evaluation stage, for running a stage alone from the UI or a deployment.

Each runs its stage as one cached job (``flows.stages.step``) and returns the published output's
address and digest; the config is the flow's parameter, so the UI's run form is the stage's validated
config. (``flows.cg`` is the CG stage's flow; ``flows.pipeline`` chains them all.)

Usage::

    from flows.stage_flows import sft
    sft(SFTConfig.preset("smoke", dataset="datasets/ner-cot/v1"))
"""

from prefect import flow

from flows.stages import step
from schemas import Config, EvalConfig, GRPOConfig, SampleConfig, SFTConfig
from schemas.jobs import JobBackend, LocalJob
from tasks.store import Store


def _run(stage: str, config: Config, backend: JobBackend, store: str | None) -> dict[str, str]:
    target = Store(store) if store else Store.from_settings()
    published = step(stage, config, target, backend)
    return {"address": published.manifest.address, "digest": published.digest}


@flow(name="sft")
def sft(config: SFTConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, str]:  # noqa: B008
    """CT: supervised fine-tuning on a NER-CoT dataset; publishes a model."""
    return _run("sft", config, backend, store)


@flow(name="sample")
def sample(config: SampleConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, str]:  # noqa: B008
    """RE data: a stratified sample of labelled NER sets."""
    return _run("sample", config, backend, store)


@flow(name="grpo")
def grpo(config: GRPOConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, str]:  # noqa: B008
    """RE: GRPO from the CT model, reward 10 * F1 + 1 * schema; publishes a model."""
    return _run("grpo", config, backend, store)


@flow(name="evaluate")
def evaluate(config: EvalConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, str]:  # noqa: B008
    """Zero-shot evaluation of a model on eval sets: F1 report, charts, predictions."""
    return _run("evaluate", config, backend, store)
