"""A stage as a cached Prefect task, and what the UI shows about its output.

``run_stage`` runs one stage as a job (``flows.jobs``) inside a Prefect task whose cache key is the
stage, its full config (inputs included), the store, an optional fingerprint of raw inputs (the files
under a prefix can change while the prefix stays), and the task's source. Results are persisted in the
store (``flows.results``), so a retried flow run, or a new run with the same inputs, gets a Cached
state instead of a job. While the job runs, a progress artifact follows its ``progress`` lines; when
it publishes something new, an event says so (``rner.dataset.published`` / ``rner.model.published``
/ ``rner.output.published``).

``show_output`` then gives the run its artifacts: a table of the output's stats (and its score
histogram or per-dataset F1 when it has them), the markdown card or report it carries (its charts
embedded, ``tasks.inline_images``), and a link to the output in the store.

Usage (inside a flow)::

    published = step("validate", config, store, backend)     # run_stage, then show_output
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.events import emit_event

from flows.jobs import JobRunner, run_job, run_local
from flows.results import StoreResults
from schemas import Config, Endpoint
from schemas.jobs import DockerJob, JobBackend, KubernetesJob
from tasks.inline_images import inline_images
from tasks.store import Published, Store

PROGRESS_EVERY_S = 1.0
PROGRESS_LOG_EVERY_S = 30.0

EndpointFor = Callable[[], Endpoint]
"""Gives a running server on first call (a flow-level server shared by stages), or is None."""


def _key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@task(cache_policy=(INPUTS - "backend" - "server") + TASK_SOURCE, persist_result=True)
def stage_job(
    stage: str,
    config: Config,
    store_url: str,
    backend: JobBackend,
    server: EndpointFor | None = None,
    fingerprint: str | None = None,
) -> dict[str, str]:
    """Run the stage's job; the result is the published output's ``{address, digest}``."""
    store = Store(store_url)
    started = datetime.now(UTC)
    progress = create_progress_artifact(0.0, key=_key(f"{stage}-progress"), description=f"{stage}: items done")
    last = logged = 0.0
    logger = get_run_logger()

    def on_progress(step: str, done: int, total: int) -> None:
        nonlocal last, logged
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or done == total:
            update_progress_artifact(progress, 100.0 * done / max(total, 1), description=f"{step}: {done}/{total}")
            last = now
        if now - logged >= PROGRESS_LOG_EVERY_S or done == total:  # the console and the run log, more sparsely
            logger.info("%s: %d/%d", step, done, total)
            logged = now

    endpoint = server() if server is not None else None
    published = run_job(stage, config, backend, store, runner_for(backend), endpoint=endpoint, on_progress=on_progress)
    update_progress_artifact(progress, 100.0)
    if published.manifest.created_at >= started:
        _announce(stage, published, store)
    return {"address": published.manifest.address, "digest": published.digest}


def runner_for(backend: JobBackend) -> JobRunner[Any]:
    """The job runner of ``backend``'s kind; the Docker and Kubernetes clients are imported only when used."""
    if isinstance(backend, DockerJob):
        from flows.docker_jobs import run_container

        return run_container
    if isinstance(backend, KubernetesJob):
        from flows.kubernetes_jobs import run_kubernetes

        return run_kubernetes
    return run_local


def run_stage(
    stage: str,
    config: Config,
    store: Store,
    backend: JobBackend,
    *,
    server: EndpointFor | None = None,
    fingerprint: str | None = None,
    label: str | None = None,
) -> Published:
    """The stage's published output: from the task cache when this exact work was done before. ``label``
    names the task run when one stage runs twice in a flow (the pipeline evaluates two models)."""
    job = stage_job.with_options(name=label or stage, result_storage=StoreResults.for_store(store))
    result = job(stage, config, store.url, backend, server, fingerprint)
    return store.load(result["address"])


def step(stage: str, config: Config, store: Store, backend: JobBackend, **options: Any) -> Published:
    """``run_stage``, then ``show_output``: what a flow does for each of its stages."""
    published = run_stage(stage, config, store, backend, **options)
    show_output(options.get("label") or stage, published, store)
    return published


def _announce(stage: str, published: Published, store: Store) -> None:
    kind = published.manifest.kind
    event = {"cot": "dataset", "ner": "dataset", "model": "model"}.get(kind, "output")
    emit_event(
        event=f"rner.{event}.published",
        resource={"prefect.resource.id": f"rner.output.{published.manifest.address}", "prefect.resource.name": stage},
        payload={"address": published.manifest.address, "digest": published.digest, "store": store.url, "kind": kind},
    )


def show_output(stage: str, published: Published, store: Store) -> None:
    """Table, card/report and link artifacts for an output (created on every run, cached or not)."""
    manifest = published.manifest
    stats = {k: v for k, v in manifest.stats.items() if k not in ("histogram", "per_dataset")}
    rows = [{"stat": k, "value": v} for k, v in _flatten(stats)]
    create_table_artifact(rows, key=_key(f"{stage}-stats"), description=f"{stage}: {manifest.address}")
    if histogram := manifest.stats.get("histogram"):
        table = [{"score": s, "records": n} for s, n in histogram.items()]
        create_table_artifact(table, key=_key(f"{stage}-scores"), description=f"{stage}: judge score histogram")
    if per_dataset := manifest.stats.get("per_dataset"):
        table = [{"dataset": name, **scores} for name, scores in per_dataset.items()]
        create_table_artifact(table, key=_key(f"{stage}-f1"), description=f"{stage}: F1 per dataset")
    files = {entry.path: entry for entry in manifest.files}
    for entry in (*manifest.files_with("card"), *manifest.files_with("report")):
        if entry.path.endswith(".md"):
            # The UI's browser cannot reach the store: the charts the markdown links go in as data URIs.
            text = inline_images(
                store.read_file(manifest.address, entry).decode(),
                entry.path,
                lambda path: store.read_file(manifest.address, files[path]) if path in files else None,
            )
            create_markdown_artifact(text, key=_key(f"{stage}-{entry.role}"), description=f"{stage}: {entry.path}")
    uri = store.uri(manifest.address)
    link = uri if "://" in uri else f"file://{uri}"
    create_link_artifact(link, link_text=manifest.address, key=_key(f"{stage}-output"), description=f"{stage} output")


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.") if value else [(name, "-")]
        else:
            rows.append((name, value))
    return rows
