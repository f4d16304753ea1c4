"""The Kubernetes backend without a cluster: the manifests validated against the Kubernetes API's own schemas
(strict: an unknown field fails), the JobSet's rendezvous checked through the real launcher, the init
container's wait run for real, the failure mapping on status objects built with the client's models, and the
whole run (submit, watch, log, cancel) against a small scripted API server speaking the client's wire format.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.config import kube_config

from flows.jobs import JobFailed
from flows.kubernetes_jobs import (
    WAIT_FOR_RENDEZVOUS,
    job_failure,
    job_name,
    manifests,
    pod_failure,
    render,
    run_kubernetes,
    verdict,
)
from schemas import AnnotateConfig, Config, JudgeConfig, SFTConfig, ValidateConfig, config_hash
from schemas.jobs import WORK_DIR, KubernetesJob, Toleration
from tasks.launch import plan
from tasks.models import default_model_dir
from tasks.settings import Settings
from tasks.store import Store

K8S = kubernetes_validate.latest_version()
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU_BACKEND = KubernetesJob(
    namespace="ml",
    gpus=8,
    cpu="32",
    memory="256Gi",
    node_selector={"gpu": "h100"},
    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    service_account="rner",
    image_pull_secrets=["registry"],
    env={"HF_HOME": "/cache/hf"},
    volumes={"model-cache": "/cache"},
    active_deadline_s=86400,
)


@pytest.fixture
def s3() -> Store:
    return Store("s3://rner-test/k8s")


def sft_2_nodes() -> SFTConfig:
    return SFTConfig.preset("paper", dataset="datasets/ner-cot/v1", parallel={"num_nodes": 2, "processes_per_node": 8})


def validate_strictly(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S, strict=True)


def pod_spec_of_job(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def node_job(jobset: dict[str, Any]) -> dict[str, Any]:
    """The JobSet's Job template as the batch/v1 Job the JobSet controller makes of it."""
    [replicated] = jobset["spec"]["replicatedJobs"]
    template = replicated["template"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x", **template["metadata"]}, **template}


# -- manifests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "config", "image", "gpus"),
    [
        ("validate", ValidateConfig(input="cot/raw/annotate/abc"), "rner-vllm:0.1.0", False),
        ("annotate", AnnotateConfig.preset("paper", input="raw/passages/x"), "rner-vllm:0.1.0", False),  # an endpoint
        ("judge", JudgeConfig.preset("paper", input="cot/valid/x"), "rner-vllm:0.1.0", True),  # its own vLLM
        ("sft", SFTConfig.preset("paper", dataset="datasets/ner-cot/v1"), "rner-trainer:0.1.0", True),
    ],
)
def test_a_one_node_stage_is_a_valid_job(stage: str, config: Config, image: str, gpus: bool, s3: Store) -> None:
    [job] = manifests(stage, config, s3, GPU_BACKEND, name="rner-test-1")
    validate_strictly(job)
    assert (job["kind"], job["metadata"]["namespace"], job["spec"]["backoffLimit"]) == ("Job", "ml", 0)
    assert job["spec"]["activeDeadlineSeconds"] == 86400 and job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = pod_spec_of_job(job)
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "rner" and pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["terminationGracePeriodSeconds"] == 60 and "initContainers" not in pod
    [container] = pod["containers"]
    assert container["image"] == image
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) is gpus and limits.get("nvidia.com/gpu", "8") == "8"
    assert limits["cpu"] == container["resources"]["requests"]["cpu"] == "32"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RNER_STORE"] == "s3://rner-test/k8s" and env["HF_HOME"] == "/cache/hf"
    assert container["envFrom"] == [{"secretRef": {"name": "rner-store", "optional": False}}]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes[mounts["/cache"]]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    labels = {
        "app.kubernetes.io/name": "reasoning-ner",
        "app.kubernetes.io/instance": "rner-test-1",
        "rner.stage": stage,
    }
    assert job["metadata"]["labels"] == pod_labels(job) == labels
    # The command is the stage's own, with the config it was given.
    command = container["command"]
    sent = type(config).model_validate_json(command[command.index("--config-json") + 1])
    assert sent == config and command[command.index("--store") + 1] == "s3://rner-test/k8s"


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    return job["spec"]["template"]["metadata"]["labels"]


def test_a_cpu_backend_asks_for_no_gpus_and_no_secret(s3: Store) -> None:
    backend = KubernetesJob(env_secret=None)
    [job] = manifests("sft", SFTConfig.preset("smoke", dataset="d"), s3, backend)
    validate_strictly(job)
    [container] = pod_spec_of_job(job)["containers"]
    assert "resources" not in container or not container["resources"]
    assert "envFrom" not in container and "nodeSelector" not in pod_spec_of_job(job)


def test_the_validator_is_strict(s3: Store) -> None:
    """The schema check is not vacuous: a misspelt field and a wrong type are both rejected."""
    [job] = manifests("validate", ValidateConfig(input="x"), s3, GPU_BACKEND)
    misspelt = json.loads(json.dumps(job))
    pod_spec_of_job(misspelt)["containers"][0]["gpus"] = 8
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strictly(misspelt)
    wrong = json.loads(json.dumps(job))
    wrong["spec"]["backoffLimit"] = "none"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strictly(wrong)


def test_two_node_sft_is_a_jobset_whose_pods_meet_at_pod_0(s3: Store) -> None:
    config = sft_2_nodes()
    [jobset] = manifests("sft", config, s3, GPU_BACKEND, name="rner-sft-12345678-abcde")
    assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    spec = jobset["spec"]
    assert spec["network"]["enableDNSHostnames"] is True
    assert spec["failurePolicy"] == {"maxRestarts": 0} and spec["ttlSecondsAfterFinished"] == 86400
    [replicated] = spec["replicatedJobs"]
    assert replicated["replicas"] == 1
    job = node_job(jobset)
    validate_strictly(job)
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 2
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["backoffLimit"] == 0
    pod = pod_spec_of_job(job)
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    command = container["command"]
    assert command[:4] == ["python", "-m", "tasks.launch", "sft"]
    sent = SFTConfig.model_validate_json(command[command.index("--config-json") + 1])
    # JobSet names pod i of job j of replicated job r `<jobset>-<r>-<j>-<i>`, under the subdomain `<jobset>`.
    name = jobset["metadata"]["name"]
    pod0 = f"{name}-{replicated['name']}-0-0.{name}"
    assert sent.parallel.rdzv_endpoint == f"{pod0}:29500"
    assert config_hash(sent) == config_hash(config)  # same output address as without the endpoint
    # What the launcher runs on each node with it: torchrun for 2 nodes x 8 processes at pod 0's rendezvous.
    torchrun = plan("sft", sent, command[4:], [str(i) for i in range(8)]).command
    assert torchrun[torchrun.index("--nnodes") + 1] == "2" and torchrun[torchrun.index("--nproc-per-node") + 1] == "8"
    assert torchrun[torchrun.index("--rdzv-endpoint") + 1] == f"{pod0}:29500" and "--standalone" not in torchrun
    # Every pod first waits until the rendezvous can work.
    [init] = pod["initContainers"]
    assert init["image"] == container["image"] and init["command"][-2:] == [pod0, "29500"]


def test_jobset_restarts_take_the_backoff_limit(s3: Store) -> None:
    [jobset] = manifests("sft", sft_2_nodes(), s3, KubernetesJob(backoff_limit=2))
    assert jobset["spec"]["failurePolicy"] == {"maxRestarts": 2}
    assert node_job(jobset)["spec"]["backoffLimit"] == 0


def test_a_local_store_must_be_on_a_volume(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(JobFailed, match=r"local directory the pods could not see.*PersistentVolumeClaim"):
        manifests("validate", ValidateConfig(input="x"), store, KubernetesJob())
    with pytest.raises(JobFailed, match="could not see"):
        manifests("validate", ValidateConfig(input="x"), store, KubernetesJob(volumes={"c": str(tmp_path / "st")}))
    [job] = manifests("validate", ValidateConfig(input="x"), store, KubernetesJob(volumes={"c": str(tmp_path)}))
    validate_strictly(job)


def stage_pod(stage: str, config: Config, store: Store, backend: KubernetesJob) -> dict[str, Any]:
    """The (strictly valid) pod spec that runs ``stage``: a Job's, or a JobSet node's."""
    [manifest] = manifests(stage, config, store, backend)
    job = node_job(manifest) if manifest["kind"] == "JobSet" else manifest
    validate_strictly(job)
    return pod_spec_of_job(job)


def volume_at(pod: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume mounted at ``path`` in the stage container (without its name), if any."""
    [container] = pod["containers"]
    names = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == path]
    volumes = {v.pop("name"): v for v in json.loads(json.dumps(pod["volumes"]))}
    return volumes[names[0]] if names else None


@pytest.mark.parametrize(
    ("stage", "config"),
    [
        ("sft", SFTConfig.preset("paper", dataset="datasets/ner-cot/v1")),
        ("sft", sft_2_nodes()),
        ("annotate", AnnotateConfig.preset("paper", input="raw/passages/x")),
    ],
)
def test_checkpoints_and_model_caches_are_on_volumes(stage: str, config: Config, s3: Store) -> None:
    """Not in the container's writable layer: an 8B run writes 100+ GB per checkpoint there, and the model
    cache tens of GB. By default emptyDirs with a size limit; a claim for the cache, an ephemeral claim per pod
    for the work directories (never shared by the nodes of a JobSet) when configured."""
    pod = stage_pod(stage, config, s3, KubernetesJob())
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["RNER_HOME"], env["HF_HOME"]) == ("/var/lib/rner", "/var/lib/rner/hf")
    settings = Settings(RNER_HOME=env["RNER_HOME"])  # type: ignore[call-arg]
    for path in (default_model_dir(settings), PurePosixPath(env["HF_HOME"]) / "hub"):  # models, hub downloads
        assert PurePosixPath(path).is_relative_to("/var/lib/rner")
    assert volume_at(pod, "/var/lib/rner") == {"emptyDir": {"sizeLimit": "200Gi"}}
    training = stage == "sft"
    work = volume_at(pod, f"/var/lib/rner/{WORK_DIR}")  # the stage's checkpoints: settings.home_dir / WORK_DIR
    assert work == ({"emptyDir": {"sizeLimit": "300Gi"}} if training else None)

    backend = KubernetesJob(cache_claim="rner-models", work_size="1Ti", work_storage_class="local-nvme")
    pod = stage_pod(stage, config, s3, backend)
    assert volume_at(pod, "/var/lib/rner") == {"persistentVolumeClaim": {"claimName": "rner-models"}}
    claim = {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-nvme"}
    claim["resources"] = {"requests": {"storage": "1Ti"}}
    per_pod = {"ephemeral": {"volumeClaimTemplate": {"spec": claim}}}
    assert volume_at(pod, f"/var/lib/rner/{WORK_DIR}") == (per_pod if training else None)


def test_the_home_volumes_paths_are_not_for_other_claims() -> None:
    with pytest.raises(ValueError, match=r"volumes: c at /var/lib/rner/runs: the model cache and the work"):
        KubernetesJob(volumes={"c": "/var/lib/rner/runs"})
    KubernetesJob(volumes={"c": "/var/lib/rner/store"})  # a local store under RNER_HOME is fine
    with pytest.raises(ValueError, match="work_size"):
        KubernetesJob(work_size="lots")


def test_a_loopback_endpoint_is_refused(s3: Store) -> None:
    from schemas import Endpoint

    endpoint = Endpoint(base_url="http://127.0.0.1:8000/v1", model="m")
    with pytest.raises(JobFailed, match="loopback"):
        manifests("annotate", AnnotateConfig.preset("smoke", input="x"), s3, KubernetesJob(), endpoint)


def test_names_are_fresh_dns_labels() -> None:
    config = ValidateConfig(input="x")
    names = {job_name("validate", config) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert len(name) <= 40 and name.startswith(f"rner-validate-{config_hash(config)[:8]}-")
        assert all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in name)
    assert job_name("Weird_Stage!", config).startswith("rner-weird-stage-")


def test_render_gives_kubectl_yaml(tmp_path: Path, s3: Store) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("preset: paper\ndataset: datasets/ner-cot/v1\nparallel: {num_nodes: 2}\n")
    [jobset] = yaml.safe_load_all(render("sft", path, GPU_BACKEND, s3))
    assert jobset["kind"] == "JobSet"
    validate_strictly(node_job(jobset))
    [job] = yaml.safe_load_all(render("validate", ValidateConfig(input="x"), GPU_BACKEND, s3))
    validate_strictly(job)


# -- the init container's wait ----------------------------------------------------------------------------


def wait_for(port: int, index: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", WAIT_FOR_RENDEZVOUS, "127.0.0.1", str(port)]
    return subprocess.Popen(command, env={"JOB_COMPLETION_INDEX": index})


def test_workers_wait_for_pod_0_to_listen_and_pod_0_for_its_name() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        worker = wait_for(port, "1")
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=3)  # nothing listens yet
        assert wait_for(port, "0").wait(timeout=10) == 0  # pod 0 only needs its name to resolve
        listener.listen()
        assert worker.wait(timeout=10) == 0


# -- failure mapping -----------------------------------------------------------------------------------


def pod(
    phase: str,
    *,
    name: str = "p",
    index: int = 0,
    created: datetime = T0,
    waiting: tuple[str, str] | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    finished: datetime | None = None,
    pod_reason: tuple[str, str] | None = None,
    conditions: list[client.V1PodCondition] | None = None,
    memory: str | None = None,
) -> client.V1Pod:
    state = client.V1ContainerState()
    if waiting:
        state.waiting = client.V1ContainerStateWaiting(reason=waiting[0], message=waiting[1])
    elif exit_code is not None:
        state.terminated = client.V1ContainerStateTerminated(
            exit_code=exit_code, reason=reason, finished_at=finished or T0 + timedelta(minutes=5)
        )
    else:
        state.running = client.V1ContainerStateRunning(started_at=T0)
    status = client.V1ContainerStatus(name="stage", image="i", image_id="", ready=False, restart_count=0, state=state)
    limits = {"memory": memory} if memory else None
    container = client.V1Container(name="stage", resources=client.V1ResourceRequirements(limits=limits))
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            uid=f"{name}-uid",
            creation_timestamp=created,
            annotations={"batch.kubernetes.io/job-completion-index": str(index)},
        ),
        spec=client.V1PodSpec(containers=[container]),
        status=client.V1PodStatus(
            phase=phase,
            reason=pod_reason[0] if pod_reason else None,
            message=pod_reason[1] if pod_reason else None,
            conditions=conditions,
            container_statuses=[status],
        ),
    )


def unschedulable(since: datetime) -> list[client.V1PodCondition]:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    return [
        client.V1PodCondition(
            type="PodScheduled", status="False", reason="Unschedulable", message=message, last_transition_time=since
        )
    ]


def test_pods_that_are_fine_or_exited_with_a_status_map_to_none() -> None:
    assert pod_failure(pod("Pending", waiting=("ContainerCreating", ""))) is None
    assert pod_failure(pod("Pending", waiting=("ErrImagePull", "i/o timeout"))) is None  # the kubelet retries
    assert pod_failure(pod("Running")) is None
    assert pod_failure(pod("Succeeded", exit_code=0, reason="Completed")) is None
    assert pod_failure(pod("Failed", exit_code=1, reason="Error")) is None  # the stage's own status
    recent = pod("Pending", conditions=unschedulable(T0 - timedelta(minutes=5)))
    assert pod_failure(recent, T0, unschedulable_timeout_s=900) is None


def test_pods_that_cannot_start_or_were_stopped_map_to_a_reason() -> None:
    pull = pod("Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "rner-trainer:0.1.0"'))
    assert pod_failure(pull) == (
        'pod p cannot start container stage: ImagePullBackOff: Back-off pulling image "rner-trainer:0.1.0"'
    )
    secret = pod("Pending", waiting=("CreateContainerConfigError", 'secret "rner-store" not found'))
    assert 'secret "rner-store" not found' in (pod_failure(secret) or "")
    stuck = pod("Pending", conditions=unschedulable(T0 - timedelta(minutes=20)))
    reason = pod_failure(stuck, T0, unschedulable_timeout_s=900)
    assert reason == "pod p could not be scheduled for 1200 s: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    evicted = pod("Failed", exit_code=137, pod_reason=("Evicted", "The node was low on resource: memory.\n"))
    assert pod_failure(evicted) == "pod p failed: Evicted: The node was low on resource: memory."
    preempted = pod(
        "Failed",
        exit_code=143,
        conditions=[client.V1PodCondition(type="DisruptionTarget", status="True", reason="PreemptionByScheduler")],
    )
    assert pod_failure(preempted) == "pod p was stopped by the cluster: PreemptionByScheduler"
    oom = pod("Failed", exit_code=137, reason="OOMKilled", memory="256Gi")
    assert pod_failure(oom) == "pod p was OOMKilled: the stage ran out of its memory limit 256Gi"
    assert "no memory limit" in (pod_failure(pod("Failed", exit_code=137, reason="OOMKilled")) or "")
    cannot_run = pod("Failed", exit_code=128, reason="StartError")
    assert pod_failure(cannot_run) == "pod p: container stage StartError"


def job(condition: tuple[str, str, str] | None = None, deadline: int | None = None) -> client.V1Job:
    conditions = None
    if condition is not None:
        kind, reason, message = condition
        conditions = [client.V1JobCondition(type=kind, status="True", reason=reason, message=message)]
    return client.V1Job(
        metadata=client.V1ObjectMeta(name="j"),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(), active_deadline_seconds=deadline),
        status=client.V1JobStatus(conditions=conditions),
    )


def test_job_failures() -> None:
    assert job_failure(job()) is None
    assert job_failure(job(("Complete", "CompletionsReached", ""))) is None
    assert job_failure(job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))) is None
    deadline = job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"), deadline=3600)
    assert job_failure(deadline) == "job j ran past its deadline of 3600 s (active_deadline_s)"


def test_verdicts_of_finished_jobs() -> None:
    done = pod("Succeeded", exit_code=0, reason="Completed")
    assert verdict([done], [job(("Complete", "", ""))], None).exit_code == 0
    failed = pod("Failed", exit_code=3, reason="Error")
    end = verdict([failed], [job(("Failed", "BackoffLimitExceeded", ""))], "BackoffLimitExceeded")
    assert (end.exit_code, end.reason) == (3, None)  # an exit status of the stage: the caller's to report
    # A retry replaced node 0's pod: the newest attempt counts.
    retried = pod("Failed", name="p2", exit_code=137, reason="OOMKilled", created=T0 + timedelta(hours=1))
    end = verdict([failed, retried], [job(("Failed", "BackoffLimitExceeded", ""))], "BackoffLimitExceeded")
    assert end.reason is not None and end.reason.startswith("pod p2 was OOMKilled")
    timed_out = job(("Failed", "DeadlineExceeded", ""), deadline=60)
    assert "deadline of 60 s" in (verdict([pod("Running")], [timed_out], "DeadlineExceeded").reason or "")


def test_the_first_node_to_fail_is_the_cause() -> None:
    failed = [job(("Failed", "BackoffLimitExceeded", ""))]
    early, late = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    # A worker failed; node 0 was deleted by the Job controller while running (its last state seen).
    end = verdict(
        [pod("Running", name="n0"), pod("Failed", name="n1", index=1, exit_code=1, finished=early)], failed, "x"
    )
    assert end.reason == "node 1 of 2 failed first: pod n1 exited with status 1" and end.pod == "n1"
    # Node 0 failed first; the worker died of it later.
    node0 = pod("Failed", name="n0", exit_code=2, finished=early)
    end = verdict([node0, pod("Failed", name="n1", index=1, exit_code=1, finished=late)], failed, "x")
    assert (end.exit_code, end.reason) == (2, None)
    # A worker out of memory before node 0's own failure.
    oom = pod("Failed", name="n1", index=1, exit_code=137, reason="OOMKilled", finished=early)
    end = verdict([pod("Failed", name="n0", exit_code=1, finished=late), oom], failed, "x")
    assert end.reason is not None and end.reason.startswith("node 1 of 2 failed first: pod n1 was OOMKilled")
    # Ties go to node 0, whose log is the one followed.
    end = verdict([pod("Failed", name="n0", exit_code=1, finished=early), oom], failed, "x")
    assert end.exit_code == 1 and end.reason is None
    assert "no pod recorded a failure" in (verdict([pod("Running")], failed, "FailedJobs: x").reason or "")


# -- against a scripted API server ----------------------------------------------------------------------

Script = Callable[["FakeCluster"], tuple[dict[str, Any], list[dict[str, Any]]]]
"""What the cluster looks like at a poll: (the Job's or JobSet's status, its pods)."""


def pod_json(name: str, index: int, phase: str, state: dict[str, Any], at: str = "00:00") -> dict[str, Any]:
    status = {"name": "stage", "image": "i", "imageID": "", "ready": True, "restartCount": 0, "state": state}
    return {
        "metadata": {
            "name": name,
            "uid": f"{name}-uid",
            "creationTimestamp": f"2026-01-01T00:{at}Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"containers": [{"name": "stage", "image": "i"}]},
        "status": {"phase": phase, "containerStatuses": [status]},
    }


RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


def ended(code: int, at: str = "05:00") -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": "Error" if code else "Completed", "finishedAt": f"2026-01-01T00:{at}Z"}
    return {"terminated": terminated}


class FakeCluster(ThreadingHTTPServer):
    """Answers the calls the backend makes for one Job or JobSet in namespace ``ml``, as ``script`` says. The
    followed log (pod ``node0``) is ``log``; its first stream breaks off halfway, and the reopened one
    repeats every line (the backend asks for a wider window than it needs). Other pods' logs are ``other_log``."""

    def __init__(self, script: Script, log: list[str], other_log: str = "") -> None:
        super().__init__(("127.0.0.1", 0), FakeApi)
        self.script, self.log_lines, self.other_log = script, log, other_log
        self.top: dict[str, Any] | None = None
        self.polls = 0
        self.deleted: list[dict[str, Any]] = []
        self.log_queries: list[dict[str, list[str]]] = []

    @property
    def name(self) -> str:
        assert self.top is not None, "nothing was submitted"
        return str(self.top["metadata"]["name"])


class FakeApi(BaseHTTPRequestHandler):
    server: FakeCluster

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, body: Any, status: int = 200) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def do_POST(self) -> None:
        assert self.path in (
            "/apis/batch/v1/namespaces/ml/jobs",
            "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets",
        )
        self.server.top = self.body()
        self.reply(self.server.top, 201)

    def do_GET(self) -> None:
        url, server = urlparse(self.path), self.server
        query = parse_qs(url.query)
        if url.path in (
            f"/apis/batch/v1/namespaces/ml/jobs/{server.name}",
            f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets/{server.name}",
        ):
            server.polls += 1
            self.reply({**(server.top or {}), "status": server.script(server)[0]})
        elif url.path == "/apis/batch/v1/namespaces/ml/jobs":  # a JobSet's child Jobs
            assert query["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={server.name}"]
            failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
            child = {"metadata": {"name": f"{server.name}-node-0"}, "spec": {"template": {}}, "status": failed}
            self.reply({"items": [child]})
        elif url.path == "/api/v1/namespaces/ml/pods":
            assert query["labelSelector"] == [f"app.kubernetes.io/instance={server.name}"]
            self.reply({"items": server.script(server)[1]})
        elif url.path == "/api/v1/namespaces/ml/pods/node0/log":
            server.log_queries.append(query)
            lines = server.log_lines
            stamped = [f"2026-01-01T00:00:{i:02d}.000000000Z {line}\n" for i, line in enumerate(lines)]
            self.reply("".join(stamped[: len(lines) // 2 if len(server.log_queries) == 1 else None]))
        elif url.path.startswith("/api/v1/namespaces/ml/pods/"):
            assert query["tailLines"] == ["60"]
            self.reply(server.other_log)
        else:
            self.reply({"kind": "Status", "message": f"no {url.path}"}, 404)

    def do_DELETE(self) -> None:
        self.server.deleted.append({"path": self.path, **self.body()})
        self.reply({"kind": "Status", "status": "Success"})


@contextmanager
def fake_clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[ThreadingHTTPServer], None]]:
    """``serve(server)`` starts a scripted API server and points the kubernetes client's default kubeconfig at it
    (context ``fake``); every server started is stopped when the block ends."""
    servers: list[ThreadingHTTPServer] = []

    def serve(server: ThreadingHTTPServer) -> None:
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            "current-context": "fake",
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))

    try:
        yield serve
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeCluster]]:
    with fake_clusters(tmp_path, monkeypatch) as serve:

        def start(script: Script, log: list[str], other_log: str = "") -> FakeCluster:
            server = FakeCluster(script, log, other_log)
            serve(server)
            return server

        yield start


FAST = KubernetesJob(namespace="ml", context="fake", poll_s=0.05)


def job_script(code: int, running_polls: int) -> Script:
    """A Job whose one pod runs ``running_polls`` polls, then exits with ``code``."""

    def script(cluster: FakeCluster) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if cluster.polls <= running_polls:
            return {}, [pod_json("node0", 0, "Running", RUNNING)]
        kind, reason = ("Failed", "BackoffLimitExceeded") if code else ("Complete", "CompletionsReached")
        phase = "Failed" if code else "Succeeded"
        return {"conditions": [{"type": kind, "status": "True", "reason": reason}]}, [
            pod_json("node0", 0, phase, ended(code))
        ]

    return script


def test_a_job_runs_and_its_log_comes_once_in_order(cluster: Callable[..., FakeCluster], s3: Store) -> None:
    fake = cluster(job_script(0, running_polls=3), ["a", "b", "c", "d"])
    seen: list[str] = []
    code, lines = run_kubernetes("validate", ValidateConfig(input="x"), s3, FAST, seen.append)
    assert (code, lines, seen) == (0, ["a", "b", "c", "d"], ["a", "b", "c", "d"])
    first = fake.log_queries[0]  # the client spells booleans True, which the API server's ParseBool takes
    assert first["follow"] == first["timestamps"] == ["True"] and first["container"] == ["stage"]
    assert "sinceSeconds" in fake.log_queries[1]  # reopened where it broke off
    assert fake.deleted == []  # a finished job stays for its TTL


def test_a_failing_stage_returns_its_status(cluster: Callable[..., FakeCluster], s3: Store) -> None:
    cluster(job_script(3, running_polls=2), ["boom"])
    assert run_kubernetes("validate", ValidateConfig(input="x"), s3, FAST, lambda line: None) == (3, ["boom"])


def test_cancelling_deletes_the_job(cluster: Callable[..., FakeCluster], s3: Store) -> None:
    fake = cluster(job_script(0, running_polls=10_000), ["a", "b"])

    def cancel(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_kubernetes("validate", ValidateConfig(input="x"), s3, FAST, cancel)
    [deleted] = fake.deleted
    assert deleted["path"] == f"/apis/batch/v1/namespaces/ml/jobs/{fake.name}"
    assert deleted["propagationPolicy"] == "Foreground"


def test_a_pod_that_cannot_start_fails_the_job_and_deletes_it(cluster: Callable[..., FakeCluster], s3: Store) -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "rner-vllm:0.1.0"'}}
    fake = cluster(lambda c: ({}, [pod_json("node0", 0, "Pending", waiting)]), [])
    with pytest.raises(
        JobFailed, match=r'cannot start container stage: ImagePullBackOff: Back-off pulling image "rner'
    ):
        run_kubernetes("validate", ValidateConfig(input="x"), s3, FAST, print)
    assert len(fake.deleted) == 1


def test_a_jobset_whose_worker_fails_first_names_it(cluster: Callable[..., FakeCluster], s3: Store) -> None:
    def script(c: FakeCluster) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if c.polls <= 2:
            return {}, [pod_json("node0", 0, "Running", RUNNING), pod_json("node1", 1, "Running", RUNNING)]
        # The worker died; the Job controller then deleted node 0's pod, which is gone.
        failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "x"}]}
        return failed, [pod_json("node1", 1, "Failed", ended(1, at="03:00"))]

    fake = cluster(script, ["rendezvous ok", "step 1"], other_log="Traceback\nCUDA error: out of memory\n")
    with pytest.raises(JobFailed) as failed:
        run_kubernetes("sft", sft_2_nodes(), s3, FAST, print)
    message = str(failed.value)
    assert f"JobSet ml/{fake.name}): node 1 of 2 failed first: pod node1 exited with status 1" in message
    assert message.endswith("its log ends with:\nTraceback\nCUDA error: out of memory")
    assert fake.deleted == []  # it had finished


def test_no_cluster_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: Store) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(JobFailed, match="no Kubernetes cluster configured"):
        run_kubernetes("validate", ValidateConfig(input="x"), s3, KubernetesJob(), print)
