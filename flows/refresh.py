"""The scheduled refresh: annotate only the raw passage files the latest NER-CoT version has not seen.

The latest version's ``raw_files`` (kept by publish, cumulatively) say which files under the raw prefix
its records came from. New files run through CG; their kept records are published on top of the
latest version as vN+1. With no new files nothing runs, and the run says so (log and artifact). Raw
files are append-only: a file already used whose content changed is an error, not a silent re-run.

Usage (deployed with a cron schedule, see deploy/prefect.yaml)::

    cg_refresh(CGConfig.preset("smoke", input="raw/passages"))
"""

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cg import run_cg
from flows.servers import SharedServers
from schemas import CGConfig, sha256_hex
from schemas.jobs import JobBackend, LocalJob
from tasks.errors import RnerError
from tasks.publish import latest
from tasks.store import Store


@flow(name="cg-refresh")
def cg_refresh(config: CGConfig, backend: JobBackend = LocalJob(), store: str | None = None) -> dict[str, object]:  # noqa: B008
    """Publish vN+1 = vN + the kept records of raw files vN does not contain (or nothing, and say so)."""
    logger = get_run_logger()
    target = Store(store) if store else Store.from_settings()
    current = latest(target, config.publish.dataset)
    base = current.manifest.address if current else None
    seen: dict[str, str] = current.manifest.stats.get("raw_files", {}) if current else {}  # type: ignore[assignment]
    files = [p for p in target.list(config.input) if p.endswith(".jsonl")]
    changed = [p for p in files if p in seen and sha256_hex(target.get(p)) != seen[p]]
    if changed:
        raise RnerError(
            f"raw files changed after {base} used them: {changed}; raw passage files are append-only, add new ones"
        )
    new = tuple(p for p in files if p not in seen)
    if not new:
        where = target.uri(config.input)
        message = (
            f"Nothing new under `{where}`: its {len(files)} raw file(s) are all in `{base}`."
            if files
            else f"No raw passage files under `{where}` yet."
        )
        logger.info(message)
        create_markdown_artifact(message, key="refresh", description="cg-refresh: nothing to do")
        return {"address": base, "new_files": 0}
    logger.info("%d new raw file(s) under %s: %s", len(new), config.input, ", ".join(new))
    with SharedServers() as servers:
        published = run_cg(config, target, backend, servers, only=new, base=base)
    create_markdown_artifact(
        f"Published `{published.manifest.address}` from {len(new)} new raw file(s): "
        f"{published.manifest.stats['kept']} new records, {published.manifest.stats['carried_over']} carried over.",
        key="refresh",
        description="cg-refresh: what this run added",
    )
    return {"address": published.manifest.address, "digest": published.digest, "new_files": len(new)}
