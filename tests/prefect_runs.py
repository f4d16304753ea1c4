"""What the flow tests read back from the Prefect server: task run states, artifacts, logs, and a retry of a
finished flow run the way the UI's Retry does it (the same flow run, scheduled again)."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.flow_engine import run_flow
from prefect.logging.handlers import APILogHandler
from prefect.states import Scheduled


def task_runs(flow_run_id: object) -> dict[str, list[str]]:
    """Task name (without its run suffix) → the states of its runs, oldest first."""

    async def read() -> dict[str, list[str]]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states: dict[str, list[str]] = {}
        for run in sorted(runs, key=lambda r: r.expected_start_time):
            states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name if run.state else "?")
        return states

    return asyncio.run(read())


def artifacts(flow_run_id: object) -> dict[str, str]:
    """Artifact key → type, of one flow run."""

    async def read() -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
        return {a.key: a.type for a in found if a.key}

    return asyncio.run(read())


def logs(flow_run_id: object) -> list[str]:
    """The messages of one flow run's log, its tasks' included, as the UI shows them."""

    async def read() -> list[str]:
        await APILogHandler.aflush()  # logs reach the server in batches, from a background worker
        async with get_client() as client:
            found = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [entry.message for entry in found]

    return asyncio.run(read())


def retry(flow: Any, flow_run_id: object) -> Any:
    """Run the same flow run again, with its parameters; its final state."""

    async def reschedule() -> Any:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
            return await client.read_flow_run(flow_run_id)

    flow_run = asyncio.run(reschedule())
    return run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
