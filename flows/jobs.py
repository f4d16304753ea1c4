"""Run a stage as a job and get its published output back.

A job is the stage's command line (``python -m tasks.<stage> --config-json ... --store ...``) on a
backend (``schemas.jobs``). Its stderr goes line by line to the Prefect run log; ``<step> progress d/t``
lines also reach ``on_progress``; the last stdout line names the published output, which is loaded
from the store and returned. A job that exits non-zero raises ``JobFailed`` with the tail of its log.
Cancelling the flow (or any exception while waiting) stops the job: SIGTERM to its process group, which
the stage turns into a clean shutdown of any server it started, then SIGKILL after a grace period.

Usage::

    published = run_job("annotate", config, LocalJob(), store, on_progress=lambda step, d, t: ...)
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

from prefect.logging import get_run_logger

from schemas import Config, Endpoint
from schemas.jobs import JobBackend
from tasks.errors import RnerError
from tasks.store import Published, Store

STAGE_COMMANDS = {
    "annotate": ["-m", "tasks.annotate"],
    "validate": ["-m", "tasks.validate"],
    "judge": ["-m", "tasks.judge"],
    "publish": ["-m", "tasks.publish"],
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


def run_job(
    stage: str,
    config: Config,
    backend: JobBackend,
    store: Store,
    *,
    endpoint: Endpoint | None = None,
    on_progress: Progress | None = None,
) -> Published:
    command = stage_command(stage, config, store, backend.python, endpoint)
    logger = get_run_logger()
    logger.info("job %s: %s", stage, " ".join([*command[:3], "..."]))
    # The job resolves `store:` model references against the same store it writes to. Its progress reaches
    # the UI as progress lines; the libraries' own progress bars would only flood the run log.
    env = {**os.environ, "RNER_STORE": store.url, "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(process.stdout or []), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        for line in process.stderr or []:
            line = line.rstrip()
            tail.append(line)
            if (m := _PROGRESS.match(line)) and on_progress:
                on_progress(m.group(1) or stage, int(m.group(2)), int(m.group(3)))
            else:
                logger.info("%s | %s", stage, line)
        process.wait()
    finally:
        if process.poll() is None:
            _stop(process)
    reader.join()
    if process.returncode != 0:
        log = "\n".join(tail)
        raise JobFailed(f"stage {stage} exited with status {process.returncode}; its log ends with:\n{log}")
    result = json.loads(stdout[-1])
    published = store.load(result["address"])
    if published.digest != result["digest"]:
        raise JobFailed(f"stage {stage} reported {result['digest']} but {result['address']} has {published.digest}")
    return published


def _stop(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
