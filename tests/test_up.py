"""`rner up`: a local Prefect server, the deployments of deploy/prefect.yaml, and a worker that runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fault_server import FaultServer, ok, sequence
from test_cg_run import seed, teacher_or_judge

from flows.deployments import DEPLOYMENTS
from schemas import CGConfig
from tasks.store import Store

pytestmark = pytest.mark.slow

FINAL = ("COMPLETED", "FAILED", "CRASHED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_registers_deployments_and_its_worker_runs_them(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed below
    up = subprocess.Popen([sys.executable, "-m", "tasks.cli", "up", "--port", str(port)], env=env, stdout=log,
                          stderr=log, start_new_session=True)  # fmt: skip
    try:
        deployments = _wait(
            lambda: len(found := httpx.post(f"{api}/deployments/filter", json={}).json()) >= len(DEPLOYMENTS) and found,
            240,
            "the deployments of deploy/prefect.yaml",
        )
        by_name = {d["name"]: d for d in deployments}  # type: ignore[union-attr]
        assert {"cg-demo", "cg-paper", "cg-refresh"} <= set(by_name)
        schedules = {s["slug"]: s for s in by_name["cg-refresh"]["schedules"]}
        assert schedules["nightly-paper"]["schedule"]["cron"] == "0 2 * * *"
        assert schedules["nightly-paper"]["parameters"]["config"]["judge"]["judge"]["model"] == "Qwen/Qwen3-32B"
        assert schedules["demo-every-30-min"]["active"] is False

        store = Store(tmp_path / "store")
        seed(store, 4)
        with FaultServer(sequence(ok(answer=teacher_or_judge))) as llm:
            server = llm.endpoint.model_dump(mode="json")
            config = CGConfig.preset("smoke", input="raw/passages", annotate={"teacher": server},
                                     judge={"judge": server})  # fmt: skip
            body = {"parameters": {"config": config.model_dump(mode="json"), "store": store.url}}
            run = httpx.post(f"{api}/deployments/{by_name['cg-demo']['id']}/create_flow_run", json=body).json()
            state = _wait(
                lambda: (s := httpx.get(f"{api}/flow_runs/{run['id']}").json()["state_type"]) in FINAL and s,
                300,
                "the worker to run the flow",
            )
        assert state == "COMPLETED", (tmp_path / "up.log").read_text()[-3000:]
        assert store.load("datasets/ner-cot/v1").manifest.stats["kept"] > 0
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:  # `rner up` gives each child 30 s to stop, then kills it
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            pytest.fail(f"`rner up` did not stop on Ctrl-C within 180 s:\n{(tmp_path / 'up.log').read_text()[-3000:]}")
        finally:
            log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
