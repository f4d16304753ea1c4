"""Run a stage as a job and get its published output back.

A job is the stage's command line (``python -m tasks.<stage> --config-json ... --store ...``) on a
backend (``schemas.jobs``): a local subprocess, a container (``flows.docker_jobs``) or a Kubernetes Job
(``flows.kubernetes_jobs``). Each backend is a ``JobRunner``, the interface this module owns; the backends import
it, never the other way round (the caller picks the runner: ``flows.stages.runner_for``). The job's stderr goes
line by line to the Prefect run log; ``<step> progress d/t``
lines also reach ``on_progress``; its result line names the published output, which is loaded from the
store and returned. A job that exits non-zero raises ``JobFailed`` with the tail of its log. Cancelling
the flow (or any exception while waiting) stops the job on every backend: SIGTERM first, which the stage
turns into a clean shutdown of any server it started, then SIGKILL after a grace period.

Usage::

    published = run_job("annotate", config, LocalJob(), store, run_local, on_progress=lambda step, d, t: ...)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from prefect.logging import get_run_logger

from schemas import Config, Endpoint
from schemas.jobs import JobBackend, LocalJob
from tasks.errors import RnerError
from tasks.store import Published, Store

STAGE_COMMANDS = {
    "annotate": ["-m", "tasks.annotate"],
    "validate": ["-m", "tasks.validate"],
    "judge": ["-m", "tasks.judge"],
    "publish": ["-m", "tasks.publish"],
    "import": ["-m", "tasks.data_import"],
    "cg": ["-m", "tasks.cg"],
    "mix": ["-m", "tasks.mix"],
    "sample": ["-m", "tasks.sample"],
    "evaluate": ["-m", "tasks.evaluate"],
    # Training goes through the launcher: N processes x M nodes as the config's `parallel` says.
    "sft": ["-m", "tasks.launch", "sft"],
    "grpo": ["-m", "tasks.launch", "grpo"],
}
STOP_GRACE_S = 60.0
LOG_TAIL = 60

_PROGRESS = re.compile(r"^(?:(\w+) )?progress (\d+)/(\d+)$")

Progress = Callable[[str, int, int], None]


class JobFailed(RnerError):
    """The stage's process failed; the message carries the end of its log."""


B = TypeVar("B", bound=Config, contravariant=True)


class JobRunner(Protocol[B]):
    """What a backend implements: run ``stage_command`` for the stage on backend ``B`` (``LocalJob``,
    ``DockerJob``, ``KubernetesJob``) to the end, each stderr line to ``on_line`` as it comes; stop it on any
    exception while waiting; return (exit status, stdout lines)."""

    def __call__(
        self,
        stage: str,
        config: Config,
        store: Store,
        backend: B,
        on_line: Callable[[str], None],
        *,
        endpoint: Endpoint | None = None,
    ) -> tuple[int, list[str]]: ...


def stage_command(
    stage: str, config: Config, store: Store, python: str | None = None, endpoint: Endpoint | None = None
) -> list[str]:
    """The command line that runs ``stage`` with ``config`` against ``store``, the same on every backend."""
    if stage not in STAGE_COMMANDS:
        raise JobFailed(f"unknown stage {stage!r} (known: {', '.join(STAGE_COMMANDS)})")
    command = [python or sys.executable, *STAGE_COMMANDS[stage], "--config-json", config.model_dump_json()]
    command += ["--store", store.url]
    if endpoint is not None:
        command += ["--endpoint", endpoint.base_url, "--endpoint-model", endpoint.model]
    return command


class JobLog:
    """What a job prints, as it prints it: ``progress`` lines to ``on_progress``, the rest to the run log,
    the last ``LOG_TAIL`` lines kept for the error message of a failed job."""

    def __init__(self, stage: str, on_progress: Progress | None) -> None:
        self.stage = stage
        self.on_progress = on_progress
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._logger = get_run_logger()

    def __call__(self, line: str) -> None:
        line = line.rstrip()
        self.tail.append(line)
        if (m := _PROGRESS.match(line)) and self.on_progress:
            self.on_progress(m.group(1) or self.stage, int(m.group(2)), int(m.group(3)))
        else:
            self._logger.info("%s | %s", self.stage, line)


def run_job(
    stage: str,
    config: Config,
    backend: JobBackend,
    store: Store,
    runner: JobRunner[Any],
    *,
    endpoint: Endpoint | None = None,
    on_progress: Progress | None = None,
) -> Published:
    """Run the stage with ``runner`` on ``backend`` to the end; its published output (``JobFailed`` if it failed)."""
    log = JobLog(stage, on_progress)
    get_run_logger().info("job %s on %s", stage, backend.kind)
    status, stdout = runner(stage, config, store, backend, log, endpoint=endpoint)
    if status != 0:
        tail = "\n".join(log.tail)
        raise JobFailed(f"stage {stage} exited with status {status}; its log ends with:\n{tail}")
    return _published(stage, stdout, store)


def _published(stage: str, lines: list[str], store: Store) -> Published:
    """The output named by the job's result line: the last line that is ``{"address": ..., "digest": ...}``
    (a Kubernetes pod's log mixes stdout and stderr, so it is looked for, not assumed last)."""
    for line in reversed(lines):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and {"address", "digest"} <= result.keys():
            break
    else:
        raise JobFailed(f"stage {stage} ended without naming its output")
    published = store.load(result["address"])
    if published.digest != result["digest"]:
        raise JobFailed(f"stage {stage} reported {result['digest']} but {result['address']} has {published.digest}")
    return published


def run_local(
    stage: str,
    config: Config,
    store: Store,
    backend: LocalJob,
    on_line: Callable[[str], None],
    *,
    endpoint: Endpoint | None = None,
) -> tuple[int, list[str]]:
    """The ``LocalJob`` runner: a subprocess in its own session; stderr to ``on_line`` as it comes."""
    command = stage_command(stage, config, store, backend.python, endpoint)
    # The job resolves `store:` model references against the same store it writes to. Its progress reaches
    # the UI as progress lines; the libraries' own progress bars would only flood the run log.
    env = {**os.environ, "RNER_STORE": store.url, "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(process.stdout or []), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        for line in process.stderr or []:
            on_line(line)
        process.wait()
    finally:
        if process.poll() is None:
            _stop(process)
    reader.join()
    return process.returncode, [line.rstrip("\n") for line in stdout]


def _stop(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
