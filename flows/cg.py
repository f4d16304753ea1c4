"""The CG flow: annotate → validate → judge → publish, each step a cached job.

Each step's output feeds the next; the raw passages are fingerprinted so that new files under the same
prefix make a new run annotate again. When teacher and judge are the same launch spec, the flow starts
that server once, when the first step needs it. Every step shows its stats, its card or report and a
link to its output in the run's artifacts, and logs one line with its counts and top reject reasons
(``tasks.step_summary``), so the console says why a dataset came out small or empty.

Usage::

    from flows.cg import cg
    cg(CGConfig.preset("smoke", input="raw/passages/demo"))
"""

from typing import Any

from prefect import flow, get_run_logger

from flows.servers import SharedServers
from flows.stages import step
from schemas import CGConfig, Config
from schemas.jobs import JobBackend, LocalJob
from tasks.step_summary import step_summary
from tasks.store import Published, Store


def cg_step(stage: str, config: Config, store: Store, backend: JobBackend, **options: Any) -> Published:
    """``step``, then one log line with the step's counts and top reject reasons."""
    published = step(stage, config, store, backend, **options)
    get_run_logger().info(step_summary(stage, published, store))
    return published


def run_cg(
    config: CGConfig,
    store: Store,
    backend: JobBackend,
    servers: SharedServers,
    *,
    only: tuple[str, ...] = (),
    base: str | None = None,
) -> Published:
    """The four steps, chained (shared by the ``cg`` and ``cg-refresh`` flows and the pipeline): annotate
    the raw files under ``config.input`` (just ``only`` when given), publish on top of ``base`` if any."""
    shared = (
        servers.provider(config.annotate.teacher, backend) if config.annotate.teacher == config.judge.judge else None
    )
    annotated = cg_step(
        "annotate",
        config.annotate.model_copy(update={"input": config.input, "only": only}),
        store,
        backend,
        server=shared,
        fingerprint=store.fingerprint(config.input),
    )
    valid = cg_step("validate", config.validation.model_copy(update={"input": annotated.manifest.address}), store,
                    backend)  # fmt: skip
    judged = cg_step("judge", config.judge.model_copy(update={"input": valid.manifest.address}), store, backend,
                     server=shared)  # fmt: skip
    update = {"cot": valid.manifest.address, "verdicts": judged.manifest.address, "base": base}
    published = cg_step("publish", config.publish.model_copy(update=update), store, backend)
    return published


@flow(name="cg")
def cg(config: CGConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, str]:  # noqa: B008
    """CoT generation: a new version of the NER-CoT dataset from raw passages."""
    target = Store(store) if store else Store.from_settings()
    with SharedServers() as servers:
        published = run_cg(config, target, backend, servers)
    return {"address": published.manifest.address, "digest": published.digest}
