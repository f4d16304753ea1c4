"""Run a stage on Kubernetes: a Job for a one-node stage, a JobSet for training on several nodes.

Usage (``flows.stages.runner_for`` picks this runner for a ``KubernetesJob`` backend)::

    code, lines = run_kubernetes("sft", config, store, KubernetesJob(namespace="ml", gpus=8), on_line=print)
    print(render("sft", "sft.yaml", KubernetesJob(gpus=8)))     # the manifests, for `kubectl apply -f -`

**One node**: a ``batch/v1`` Job with one pod (``restartPolicy: Never``, ``backoffLimit`` =
``backend.backoff_limit``) running the stage's usual command line (``flows.jobs.stage_command``) in the
stage's image (``image_role``), with ``backend.gpus`` of ``backend.gpu_resource`` when the stage wants
GPUs (``wants_gpus``).

**Several nodes** (a training stage with ``parallel.num_nodes > 1``): a JobSet (``jobset.x-k8s.io/v1alpha2``)
with one replicated job ``node`` (1 replica) whose Job runs ``num_nodes`` pods (``parallelism = completions =
num_nodes``, ``completionMode: Indexed``). JobSet rather than Kubeflow's PyTorchJob: it is a Kubernetes SIG
project and generic (no operator that rewrites the pods' environment or command, so every backend keeps the
same command line), it gives every pod a stable DNS name (``network.enableDNSHostnames``: pod *i* is
``<jobset>-node-0-<i>.<jobset>``), and Kubeflow Trainer v2 itself builds on it. Every pod runs the same
launcher command with ``parallel.rdzv_endpoint`` = ``<jobset>-node-0-0.<jobset>:<backend.rdzv_port>``
(a volatile field: the output's address does not change); torchrun on pod 0 owns that name, so it hosts
the c10d rendezvous, and the others join it. The stable names matter twice: torchrun also advertises
rank 0 by its FQDN for the process group's own store, which the other pods must resolve.
An init container holds each pod until the rendezvous can work: pod 0 until its own name resolves (torchrun
decides whether it hosts by resolving it, and would otherwise wait for a host that never comes), the others
until pod 0 accepts connections on the port (torchrun gives up on an absent host after 60 s, and pods pull a
multi-GB image at different speeds). Pod retries make no sense inside one torchrun world, so the Job's
``backoffLimit`` is 0 and ``backend.backoff_limit`` becomes the JobSet's ``failurePolicy.maxRestarts`` (all
pods restart together; the stage resumes from its checkpoints). The JobSet controller must be installed.

**Pods**: environment = ``backend.env``, ``RNER_STORE`` = the store, and every key of the Secret
``backend.env_secret`` (``envFrom``, required: a missing Secret fails the job at once with its name, rather
than a stage failing later without credentials; set ``env_secret: null`` to run without). ``/dev/shm`` is a
memory ``emptyDir`` of ``backend.shm_size`` (NCCL and data loaders need more than the runtime's 64 MB);
``backend.volumes`` are PersistentVolumeClaims mounted at their paths; a local-directory store must be on
one of them, or ``JobFailed`` says the pods could not see it. ``RNER_HOME`` (``/var/lib/rner``: the model
cache and ``HF_HOME``) is the claim ``backend.cache_claim``, else an ``emptyDir`` of ``backend.cache_size``;
a training stage's work directories and checkpoints (``RNER_HOME/runs``) are the pod's own ``emptyDir`` of
``backend.work_size`` (or an ephemeral claim of ``backend.work_storage_class``), never in the container's
writable layer (see ``schemas.jobs``). CPU and memory are requests = limits when set.
Labels: ``app.kubernetes.io/name: reasoning-ner``, ``app.kubernetes.io/instance: <job name>``,
``rner.stage: <stage>``. Names: ``rner-<stage>-<8 hex of the config hash>-<5 random>``.

**Watching**: the Job (JobSet) and its pods are polled every ``backend.poll_s``; node 0's log is followed
(reconnecting where a stream broke off) and each line goes to ``on_line`` in the caller's thread. The run
ends when the Job (JobSet) has finished: the result is node 0's exit code, or ``JobFailed`` for failures that
are not an exit code: a pod that cannot start (image pull errors, a missing Secret, unschedulable for
``backend.unschedulable_timeout_s``, no pod created at all in that time: a quota or an admission policy),
an eviction or preemption, ``OOMKilled``, the deadline (``active_deadline_s``), or another node of a JobSet
failing first (with that node's log tail). Any exception while waiting (a cancelled flow run, a pod that
cannot start, the API gone for ``API_OUTAGE_S``) deletes the Job (JobSet) with foreground propagation; the
pods get ``backend.stop_timeout_s`` (their ``terminationGracePeriodSeconds``) between SIGTERM and SIGKILL.
A finished Job stays for ``ttl_seconds_after_finished``, for ``kubectl describe``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import re
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import urllib3
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client import ApiException

from flows.jobs import LOG_TAIL, JobFailed, stage_command
from schemas import STAGE_CONFIGS, Config, Endpoint, GRPOConfig, SFTConfig, TrainConfig, config_hash
from schemas.jobs import (
    CONTAINER_HF_HOME,
    CONTAINER_HOME,
    CONTAINER_WORK,
    KubernetesJob,
    image_role,
    nodes,
    wants_gpus,
)
from tasks.config import load_config
from tasks.store import Store

JOBSET_GROUP = "jobset.x-k8s.io"
JOBSET_VERSION = "v1alpha2"
REPLICATED_JOB = "node"
CONTAINER = "stage"
INSTANCE_LABEL = "app.kubernetes.io/instance"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"

API_OUTAGE_S = 300.0
"""How long the API may be unreachable (or answer 429/5xx) before a running job is given up and deleted."""
API_TIMEOUT = (10.0, 60.0)
LOG_SILENCE_S = 300.0
"""A log stream silent this long is reopened (a stalled connection looks the same as a quiet stage)."""
FOLLOW_END_S = 30.0
"""How long to wait for node 0's log stream to deliver its last lines once the job has finished."""

_STUCK_WAITING = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"})
"""Waiting reasons a container does not leave by itself (the kubelet retries, but only a fix can help)."""
_NOT_AN_EXIT = frozenset({"OOMKilled", "ContainerCannotRun", "StartError", "DeadlineExceeded"})
"""Terminated reasons where the exit code says nothing about the stage itself."""

WAIT_FOR_RENDEZVOUS = """\
import os, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
first = os.environ.get("JOB_COMPLETION_INDEX") == "0"
while True:
    try:
        socket.getaddrinfo(host, port)
        if not first:
            socket.create_connection((host, port), timeout=5).close()
        break
    except OSError:
        time.sleep(2)
"""

_log = logging.getLogger("rner.kubernetes")


# -- manifests ------------------------------------------------------------------------------------


def job_name(stage: str, config: Config) -> str:
    """A fresh DNS-1123 name ``rner-<stage>-<8 hex of the config hash>-<5 random>`` (at most 40 characters,
    so that a JobSet's pod hostnames, ``<name>-node-0-<i>``, stay within 63)."""
    stage_part = re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")[:20] or "stage"
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"rner-{stage_part}-{config_hash(config)[:8]}-{suffix}"


def rendezvous_endpoint(name: str, backend: KubernetesJob) -> str:
    """``host:port`` of the c10d rendezvous of JobSet ``name``: its first pod's stable DNS name."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}:{backend.rdzv_port}"


def _labels(stage: str, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "reasoning-ner", INSTANCE_LABEL: name, "rner.stage": stage}


def _check_reachable(store: Store, backend: KubernetesJob, endpoint: Endpoint | None) -> None:
    """Refuse what the pods could not reach: a local store on no volume, a server on the flow's loopback."""
    if not store.url.startswith("s3://"):
        path = PurePosixPath(store.url)
        if not any(path.is_relative_to(mount) for mount in backend.volumes.values()):
            mounts = ", ".join(f"{claim} at {mount}" for claim, mount in backend.volumes.items()) or "none"
            raise JobFailed(
                f"the store {store.url} is a local directory the pods could not see: mount it from a "
                f"PersistentVolumeClaim at that path or above (backend volumes: {{claim: mount path}}; now: {mounts}), "
                f"or use an s3:// store"
            )
    if endpoint is not None:
        host = urlparse(endpoint.base_url).hostname or ""
        if host == "localhost" or host == "::1" or host.startswith("127."):
            raise JobFailed(
                f"the endpoint {endpoint.base_url} is on the flow's loopback, which the pods cannot reach: "
                f"give the stage a server address that the cluster reaches"
            )


HOME_VOLUME = "rner-home"
WORK_VOLUME = "rner-work"


def home_volumes(config: Config, backend: KubernetesJob) -> list[tuple[client.V1Volume, client.V1VolumeMount]]:
    """The model cache at ``RNER_HOME`` and, for a training stage, its work directories at ``RNER_HOME/runs``,
    mounted after the cache they sit in."""
    volumes = [(_cache_volume(backend), CONTAINER_HOME)]
    if isinstance(config, TrainConfig):
        volumes.append((_work_volume(backend), CONTAINER_WORK))
    return [(volume, client.V1VolumeMount(name=volume.name, mount_path=path)) for volume, path in volumes]


def _cache_volume(backend: KubernetesJob) -> client.V1Volume:
    """``backend.cache_claim``, shared by every pod that mounts it, else an ``emptyDir`` of ``cache_size``."""
    if backend.cache_claim:
        claim = client.V1PersistentVolumeClaimVolumeSource(claim_name=backend.cache_claim)
        return client.V1Volume(name=HOME_VOLUME, persistent_volume_claim=claim)
    return client.V1Volume(name=HOME_VOLUME, empty_dir=client.V1EmptyDirVolumeSource(size_limit=backend.cache_size))


def _work_volume(backend: KubernetesJob) -> client.V1Volume:
    """The pod's own volume of ``work_size``: a claim of ``work_storage_class`` made and deleted with the pod
    (a generic ephemeral volume), else an ``emptyDir`` on the node's disk."""
    if not backend.work_storage_class:
        return client.V1Volume(name=WORK_VOLUME, empty_dir=client.V1EmptyDirVolumeSource(size_limit=backend.work_size))
    spec = client.V1PersistentVolumeClaimSpec(
        access_modes=["ReadWriteOnce"],
        storage_class_name=backend.work_storage_class,
        resources=client.V1VolumeResourceRequirements(requests={"storage": backend.work_size}),
    )
    template = client.V1PersistentVolumeClaimTemplate(spec=spec)
    return client.V1Volume(name=WORK_VOLUME, ephemeral=client.V1EphemeralVolumeSource(volume_claim_template=template))


def placement(backend: KubernetesJob) -> dict[str, Any]:
    """Where a pod may run and what it runs as: the backend's node selector, tolerations, service account and
    image pull secrets, as ``V1PodSpec`` arguments (every pod this project renders takes the same)."""
    return {
        "node_selector": dict(backend.node_selector) or None,
        "tolerations": [
            client.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
            for t in backend.tolerations
        ]
        or None,
        "service_account_name": backend.service_account,
        "image_pull_secrets": [client.V1LocalObjectReference(name=s) for s in backend.image_pull_secrets] or None,
    }


def _pod_template(
    stage: str,
    config: Config,
    store: Store,
    backend: KubernetesJob,
    name: str,
    endpoint: Endpoint | None,
    rendezvous: str | None,
) -> client.V1PodTemplateSpec:
    _check_reachable(store, backend, endpoint)
    image = backend.images.for_role(image_role(stage, config))
    command = stage_command(stage, config, store, backend.python, endpoint)
    # Ours win over backend.env: the stage must write where the flow reads. Progress reaches the flow as
    # progress lines (TQDM bars would flood the log); unbuffered output keeps stdout and stderr in order.
    home = {"RNER_HOME": CONTAINER_HOME, "HF_HOME": CONTAINER_HF_HOME}  # where home_volumes mounts the cache
    env = {**home, **backend.env, "RNER_STORE": store.url, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if wants_gpus(stage, config) and backend.gpus:
        limits[backend.gpu_resource] = str(backend.gpus)
    for resource, quantity in (("cpu", backend.cpu), ("memory", backend.memory)):
        if quantity:
            limits[resource] = requests[resource] = quantity
    volumes = [
        client.V1Volume(
            name="shm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=backend.shm_size)
        )
    ]
    mounts = [client.V1VolumeMount(name="shm", mount_path="/dev/shm")]
    for volume, mount in home_volumes(config, backend):
        volumes.append(volume)
        mounts.append(mount)
    for i, (claim, path) in enumerate(backend.volumes.items()):
        volumes.append(
            client.V1Volume(
                name=f"claim-{i}", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
            )
        )
        mounts.append(client.V1VolumeMount(name=f"claim-{i}", mount_path=path))
    container = client.V1Container(
        name=CONTAINER,
        image=image,
        command=command,
        env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=backend.env_secret, optional=False))]
        if backend.env_secret
        else None,
        resources=client.V1ResourceRequirements(limits=limits or None, requests=requests or None),
        volume_mounts=mounts,
    )
    init = None
    if rendezvous is not None:
        host, _, port = rendezvous.rpartition(":")
        init = [
            client.V1Container(
                name="wait-for-rendezvous",
                image=image,
                command=[backend.python, "-c", WAIT_FOR_RENDEZVOUS, host, port],
            )
        ]
    spec = client.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        init_containers=init,
        volumes=volumes,
        # The pause container becomes PID 1: it reaps orphans (torchrun's, vLLM's) and the stage gets
        # SIGTERM's default action if it installs no handler (PID 1 would ignore it until SIGKILL).
        share_process_namespace=True,
        termination_grace_period_seconds=math.ceil(backend.stop_timeout_s),
        **placement(backend),
    )
    return client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=_labels(stage, name)), spec=spec)


def job_manifest(
    stage: str, config: Config, store: Store, backend: KubernetesJob, name: str, endpoint: Endpoint | None = None
) -> client.V1Job:
    """The Job that runs a one-node stage."""
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name=name, namespace=backend.namespace, labels=_labels(stage, name)),
        spec=client.V1JobSpec(
            template=_pod_template(stage, config, store, backend, name, endpoint, rendezvous=None),
            backoff_limit=backend.backoff_limit,
            ttl_seconds_after_finished=backend.ttl_seconds_after_finished,
            active_deadline_seconds=backend.active_deadline_s,
        ),
    )


def jobset_manifest(
    stage: str, config: Config, store: Store, backend: KubernetesJob, name: str, endpoint: Endpoint | None = None
) -> dict[str, Any]:
    """The JobSet that runs a training stage on ``parallel.num_nodes`` pods meeting at pod 0's rendezvous."""
    if not isinstance(config, SFTConfig | GRPOConfig):
        raise JobFailed(f"stage {stage} runs on one node; only training stages run as a JobSet")
    rendezvous = rendezvous_endpoint(name, backend)
    parallel = config.parallel.model_copy(update={"rdzv_endpoint": rendezvous})
    config = config.model_copy(update={"parallel": parallel})
    n = config.parallel.num_nodes
    template = client.V1JobTemplateSpec(
        metadata=client.V1ObjectMeta(labels=_labels(stage, name)),
        spec=client.V1JobSpec(
            parallelism=n,
            completions=n,
            completion_mode="Indexed",
            backoff_limit=0,
            active_deadline_seconds=backend.active_deadline_s,
            template=_pod_template(stage, config, store, backend, name, endpoint, rendezvous),
        ),
    )
    return {
        "apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}",
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": backend.namespace, "labels": _labels(stage, name)},
        "spec": {
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "successPolicy": {"operator": "All"},
            "failurePolicy": {"maxRestarts": backend.backoff_limit},
            "ttlSecondsAfterFinished": backend.ttl_seconds_after_finished,
            "replicatedJobs": [
                {
                    "name": REPLICATED_JOB,
                    "replicas": 1,
                    "template": client.ApiClient().sanitize_for_serialization(template),
                }
            ],
        },
    }


def manifests(
    stage: str,
    config: Config,
    store: Store,
    backend: KubernetesJob,
    endpoint: Endpoint | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """What runs ``stage`` as plain, ``kubectl apply``-able dicts: a Job, or a JobSet for several nodes.

    ``name``: default a fresh ``job_name``. Raises ``JobFailed`` for what the pods could not reach.
    """
    name = name or job_name(stage, config)
    if nodes(stage, config) > 1:
        return [jobset_manifest(stage, config, store, backend, name, endpoint)]
    job = job_manifest(stage, config, store, backend, name, endpoint)
    return [client.ApiClient().sanitize_for_serialization(job)]


def render(stage: str, config: Config | str | Path, backend: KubernetesJob, store: Store | None = None) -> str:
    """The manifests of ``stage`` as YAML, for ``kubectl apply -f -``.

    ``config``: a stage config or a YAML file of one (presets allowed); ``store``: default ``RNER_STORE``.
    Each call names the job afresh, so applying it twice runs the stage twice.
    """
    if not isinstance(config, Config):
        if stage not in STAGE_CONFIGS:
            raise JobFailed(f"unknown stage {stage!r} (known: {', '.join(STAGE_CONFIGS)})")
        config = load_config(STAGE_CONFIGS[stage], config)
    docs = manifests(stage, config, store or Store.from_settings(), backend)
    return yaml.safe_dump_all(docs, sort_keys=False, width=1_000_000)


# -- status -------------------------------------------------------------------------------------------


def _say(reason: str | None, message: str | None) -> str:
    """``reason: message`` on one line."""
    text = " ".join((message or "").split())
    return f"{reason}: {text}" if reason and text else reason or text or "no reason given"


def _terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated | None:
    """The stage container's end, once it has one."""
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name == CONTAINER and status.state and status.state.terminated:
            return status.state.terminated
    return None


def _memory_limit(pod: client.V1Pod) -> str | None:
    for container in (pod.spec and pod.spec.containers) or []:
        if container.name == CONTAINER and container.resources and container.resources.limits:
            return container.resources.limits.get("memory")
    return None


def pod_failure(
    pod: client.V1Pod, now: datetime | None = None, unschedulable_timeout_s: float = math.inf
) -> str | None:
    """Why ``pod`` failed other than by the stage's exit code, or None: pending (within the deadline), running,
    succeeded, or the stage exited with a status of its own.

    A pending pod fails when a container cannot start (image pull, missing Secret or key) or the scheduler
    has not placed it for ``unschedulable_timeout_s`` (as of ``now``); an ended one when it was evicted,
    preempted or stopped by its node, ran out of memory, or its container could not run.
    """
    status = pod.status or client.V1PodStatus()
    name = pod.metadata.name
    statuses = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
    if status.phase == "Pending":
        for container in statuses:
            waiting = container.state and container.state.waiting
            if waiting and waiting.reason in _STUCK_WAITING:
                return f"pod {name} cannot start container {container.name}: {_say(waiting.reason, waiting.message)}"
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                since = condition.last_transition_time
                if now is not None and since is not None and (now - since).total_seconds() >= unschedulable_timeout_s:
                    waited = int((now - since).total_seconds())
                    return f"pod {name} could not be scheduled for {waited} s: {_say(None, condition.message)}"
        return None
    if status.phase == "Failed":
        if status.reason:
            return f"pod {name} failed: {_say(status.reason, status.message)}"
        for condition in status.conditions or []:
            if condition.type == "DisruptionTarget" and condition.status == "True":
                return f"pod {name} was stopped by the cluster: {_say(condition.reason, condition.message)}"
    for container in status.init_container_statuses or []:
        ended = container.state and container.state.terminated
        if ended and ended.exit_code:
            return f"pod {name}: init container {container.name} failed with status {ended.exit_code}: " + _say(
                ended.reason, ended.message
            )
    ended = _terminated(pod)
    if ended and ended.reason in _NOT_AN_EXIT:
        if ended.reason == "OOMKilled":
            limit = _memory_limit(pod)
            where = f"its memory limit {limit}" if limit else "its node's memory (no memory limit set)"
            return f"pod {name} was OOMKilled: the stage ran out of {where}"
        return f"pod {name}: container {CONTAINER} {_say(ended.reason, ended.message)}"
    return None


def job_failure(job: client.V1Job) -> str | None:
    """Why ``job`` failed other than by a pod's failure, or None: running, complete, or failed because a pod
    failed (``BackoffLimitExceeded``: the pod says how)."""
    for condition in (job.status and job.status.conditions) or []:
        if condition.type != "Failed" or condition.status != "True" or condition.reason == "BackoffLimitExceeded":
            continue
        if condition.reason == "DeadlineExceeded":
            deadline = job.spec.active_deadline_seconds if job.spec else None
            return f"job {job.metadata.name} ran past its deadline of {deadline} s (active_deadline_s)"
        return f"job {job.metadata.name} failed: {_say(condition.reason, condition.message)}"
    return None


def job_end(job: client.V1Job) -> tuple[bool, str | None]:
    """(finished, why it failed: None when it completed)."""
    for condition in (job.status and job.status.conditions) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return True, None if condition.type == "Complete" else _say(condition.reason, condition.message)
    return False, None


def jobset_end(jobset: dict[str, Any]) -> tuple[bool, str | None]:
    """(finished, why it failed: None when it completed) of a JobSet object."""
    for condition in jobset.get("status", {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Completed", "Failed"):
            failed = _say(condition.get("reason"), condition.get("message"))
            return True, None if condition["type"] == "Completed" else failed
    return False, None


def pod_index(pod: client.V1Pod) -> int:
    """The pod's node index (its completion index; a one-pod Job's pod is node 0)."""
    return int(((pod.metadata and pod.metadata.annotations) or {}).get(INDEX_ANNOTATION, "0"))


def _latest(pods: Sequence[client.V1Pod]) -> dict[int, client.V1Pod]:
    """The newest pod of each node: retries and restarts replace a node's pod."""
    latest: dict[int, client.V1Pod] = {}
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)):
        latest[pod_index(pod)] = pod
    return latest


@dataclass(frozen=True)
class Verdict:
    """How a finished Job or JobSet ended."""

    exit_code: int = 0
    """Node 0's exit status, when ``reason`` is None: the stage ran to an end of its own."""
    reason: str | None = None
    """A failure that is not node 0's exit status (raise ``JobFailed``)."""
    pod: str | None = None
    """The pod whose log explains ``reason``, when it is not node 0's."""


def verdict(pods: Sequence[client.V1Pod], jobs: Sequence[client.V1Job], failed: str | None) -> Verdict:
    """What a finished Job (JobSet) came to. ``pods``: the last state seen of every pod (deleted ones too),
    ``jobs``: its Job(s), ``failed``: why the Job (JobSet) says it failed, None when it completed.

    The first node to fail is the cause (the others fail because it did); on a tie, node 0.
    """
    latest = _latest(pods)
    node0 = latest.get(0)
    ended = _terminated(node0) if node0 is not None else None
    if failed is None:
        return Verdict(exit_code=ended.exit_code if ended else 0)
    for job in jobs:
        if reason := job_failure(job):
            return Verdict(reason=reason)
    failures: list[tuple[datetime, int, client.V1Pod, str | None, int]] = []
    for index, pod in latest.items():
        reason, end = pod_failure(pod), _terminated(pod)
        if reason or (end and end.exit_code):
            at = (end and end.finished_at) or datetime.max.replace(tzinfo=UTC)
            failures.append((at, index, pod, reason, end.exit_code if end else -1))
    if not failures:
        return Verdict(reason=f"{failed} (no pod recorded a failure: was node 0's pod deleted?)")
    _, index, pod, reason, code = min(failures, key=lambda f: (f[0], f[1]))
    if index == 0:
        return Verdict(reason=reason) if reason else Verdict(exit_code=code)
    what = reason or f"pod {pod.metadata.name} exited with status {code}"
    return Verdict(reason=f"node {index} of {len(latest)} failed first: {what}", pod=pod.metadata.name)


# -- the cluster ------------------------------------------------------------------------------------


def api_client(backend: KubernetesJob) -> client.ApiClient:
    """A client for the in-cluster service account, else the kubeconfig (``backend.context`` or the current one)."""
    configuration = client.Configuration()
    if backend.context is None:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except kube_config.ConfigException:
            pass
    try:
        kube_config.load_kube_config(context=backend.context, client_configuration=configuration)
    except (kube_config.ConfigException, OSError, ValueError) as e:
        raise JobFailed(
            f"no Kubernetes cluster configured: {e} (run in a pod with a service account, or give a kubeconfig: "
            f"KUBECONFIG or ~/.kube/config, and backend context)"
        ) from None
    return client.ApiClient(configuration)


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{e.status} {e.reason}"


def api_error(e: Exception) -> str:
    """A failed API call in one line: the API's own message for an ``ApiException``, else the error's text."""
    return _api_message(e) if isinstance(e, ApiException) else str(e)


def _transient(e: Exception) -> bool:
    return not isinstance(e, ApiException) or e.status in (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class _Observed:
    jobs: list[client.V1Job]
    pods: list[client.V1Pod]
    finished: bool
    failed: str | None
    suspended: bool


class _Cluster:
    """The API calls of one job: submit, observe, read logs, delete."""

    def __init__(self, api: client.ApiClient, backend: KubernetesJob, manifest: dict[str, Any]) -> None:
        self.core, self.batch, self.custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
        self.namespace = backend.namespace
        self.manifest = manifest
        self.kind: str = manifest["kind"]
        self.name: str = manifest["metadata"]["name"]
        self.host = api.configuration.host

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def submit(self) -> None:
        try:
            if self.kind == "Job":
                self.batch.create_namespaced_job(self.namespace, self.manifest, _request_timeout=API_TIMEOUT)
            else:
                self.custom.create_namespaced_custom_object(
                    JOBSET_GROUP, JOBSET_VERSION, self.namespace, "jobsets", self.manifest, _request_timeout=API_TIMEOUT
                )
        except ApiException as e:
            hint = ""
            if self.kind == "JobSet" and e.status == 404:
                hint = f" (is the JobSet controller installed? multi-node stages need {JOBSET_GROUP}/{JOBSET_VERSION})"
            raise JobFailed(f"Kubernetes at {self.host} refused {self}: {_api_message(e)}{hint}") from None
        except urllib3.exceptions.HTTPError as e:
            raise JobFailed(f"cannot reach Kubernetes at {self.host}: {e}") from None

    def observe(self) -> _Observed:
        try:
            if self.kind == "Job":
                job = self.batch.read_namespaced_job(self.name, self.namespace, _request_timeout=API_TIMEOUT)
                jobs, (finished, failed), suspended = [job], job_end(job), bool(job.spec.suspend)
            else:
                jobset = self.custom.get_namespaced_custom_object(
                    JOBSET_GROUP, JOBSET_VERSION, self.namespace, "jobsets", self.name, _request_timeout=API_TIMEOUT
                )
                selector = f"{JOBSET_LABEL}={self.name}"
                jobs = self.batch.list_namespaced_job(
                    self.namespace, label_selector=selector, _request_timeout=API_TIMEOUT
                ).items
                (finished, failed), suspended = jobset_end(jobset), bool(jobset["spec"].get("suspend"))
        except ApiException as e:
            if e.status == 404:
                raise JobFailed(f"{self} was deleted while it ran, not by this flow") from None
            raise
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{INSTANCE_LABEL}={self.name}", _request_timeout=API_TIMEOUT
        ).items
        return _Observed(jobs, pods, finished, failed, suspended)

    def warnings(self, jobs: Sequence[client.V1Job]) -> list[str]:
        """The latest warning events of the Job(s) and the JobSet: why no pod was created (best effort)."""
        found: list[tuple[datetime, str]] = []
        for name in {self.name, *(job.metadata.name for job in jobs)}:
            try:
                events = self.core.list_namespaced_event(
                    self.namespace, field_selector=f"involvedObject.name={name}", _request_timeout=API_TIMEOUT
                ).items
            except (ApiException, urllib3.exceptions.HTTPError):
                continue
            for event in events:
                if event.type == "Warning":
                    at = event.last_timestamp or event.event_time or datetime.min.replace(tzinfo=UTC)
                    found.append((at, f"{name}: {_say(event.reason, event.message)}"))
        return [text for _, text in sorted(found)[-3:]]

    def log_tail(self, pod: str) -> list[str]:
        """The end of a pod's stage log (best effort: the pod may be gone)."""
        try:
            # Raw bytes: client 36 returns a preloaded log as the repr of bytes (kubernetes-client/python#2596).
            response = self.core.read_namespaced_pod_log(
                pod,
                self.namespace,
                container=CONTAINER,
                tail_lines=LOG_TAIL,
                _preload_content=False,
                _request_timeout=API_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as e:
            return [f"(no log of {pod}: {api_error(e)})"]
        return response.data.decode("utf-8", "replace").splitlines()

    def delete(self) -> None:
        """Delete the Job (JobSet) and, before it goes, its pods (best effort: say how to do it by hand)."""
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            if self.kind == "Job":
                self.batch.delete_namespaced_job(self.name, self.namespace, body=body, _request_timeout=API_TIMEOUT)
            else:
                self.custom.delete_namespaced_custom_object(
                    JOBSET_GROUP, JOBSET_VERSION, self.namespace, "jobsets", self.name, body=body,
                    _request_timeout=API_TIMEOUT,
                )  # fmt: skip
        except ApiException as e:
            if e.status != 404:
                _log.warning("could not delete %s (%s): kubectl delete %s", self, _api_message(e), self._kubectl())
        except urllib3.exceptions.HTTPError as e:
            _log.warning("could not delete %s (%s): kubectl delete %s", self, e, self._kubectl())

    def _kubectl(self) -> str:
        return f"-n {self.namespace} {self.kind.lower()} {self.name}"


class _LogFollower:
    """Streams the stage container's log of one pod into a queue, in a thread, until told the pod has ended
    (then reads once more, for what a broken-off stream missed).

    A stream that breaks off (API server restart, stalled connection, read timeout) is reopened a minute
    before the last line arrived (a margin for clock skew: the API counts seconds on its own clock); lines up
    to that line's timestamp are skipped, so none comes twice.
    """

    def __init__(self, cluster: _Cluster, pod: str, lines: queue.Queue[str]) -> None:
        self.cluster, self.pod, self.lines = cluster, pod, lines
        self.ended = threading.Event()
        self.error: str | None = None
        """Why the log cannot be read at all (no right to read it): the job's result would never arrive."""
        self._thread = threading.Thread(target=self._run, name=f"log {pod}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last, last_at = "", time.monotonic()
        while True:
            # Once the pod has ended, one more read: a stream that broke off just before the end missed lines.
            final = self.ended.is_set()
            try:
                stream = self.cluster.core.read_namespaced_pod_log(
                    self.pod,
                    self.cluster.namespace,
                    container=CONTAINER,
                    follow=True,
                    timestamps=True,
                    since_seconds=math.ceil(time.monotonic() - last_at) + 60 if last else None,
                    _preload_content=False,
                    _request_timeout=(API_TIMEOUT[0], LOG_SILENCE_S),
                )
                try:
                    for raw in stream:
                        stamp, _, text = raw.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                        # The kubelet's timestamps have a fixed width (RFC 3339, nanoseconds): they sort as text.
                        if stamp <= last:
                            continue
                        last, last_at = stamp, time.monotonic()
                        self.lines.put(text)
                finally:
                    stream.release_conn()
            except ApiException as e:
                if e.status in (401, 403):
                    self.error = f"cannot read the log of pod {self.pod}: {_api_message(e)}"
                if e.status in (401, 403, 404):
                    return
            except (urllib3.exceptions.HTTPError, OSError):
                pass
            if final:
                return
            self.ended.wait(1.0)

    def finish(self) -> None:
        """The pod has ended: read what the stream still holds, then stop."""
        self.ended.set()
        self._thread.join(FOLLOW_END_S)


def _started(pod: client.V1Pod) -> bool:
    """Whether the stage container has a log to read."""
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name == CONTAINER and status.state and (status.state.running or status.state.terminated):
            return True
    return False


class _Watch:
    """Follows one submitted job to its end."""

    def __init__(self, cluster: _Cluster, backend: KubernetesJob, stage: str, on_line: Callable[[str], None]) -> None:
        self.cluster, self.backend, self.stage, self.on_line = cluster, backend, stage, on_line
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._followers: dict[str, _LogFollower] = {}
        self._seen: dict[str, client.V1Pod] = {}

    def failure(self, reason: str, tail: Sequence[str] | None = None) -> JobFailed:
        log = "\n".join(self.lines[-LOG_TAIL:] if tail is None else tail)
        return JobFailed(f"stage {self.stage} on Kubernetes ({self.cluster}): {reason}; its log ends with:\n{log}")

    def wait(self) -> Verdict:
        """Node 0's log to ``on_line`` until the job has finished; then how it ended. Raises ``JobFailed`` for a
        pod that cannot start, a job that starts no pod, the API gone for ``API_OUTAGE_S``."""
        started, outage = time.monotonic(), None
        while True:
            try:
                seen = self.cluster.observe()
            except (ApiException, urllib3.exceptions.HTTPError) as e:
                if not _transient(e):
                    raise self.failure(f"the Kubernetes API refused to tell: {api_error(e)}") from None
                outage = outage or time.monotonic()
                if time.monotonic() - outage > API_OUTAGE_S:
                    raise self.failure(f"lost the Kubernetes API for {API_OUTAGE_S:.0f} s: {api_error(e)}") from None
                self._drain(self.backend.poll_s)
                continue
            outage = None
            self._seen.update({pod.metadata.uid: pod for pod in seen.pods})
            node0 = _latest(seen.pods).get(0)
            if node0 is not None and _started(node0) and node0.metadata.uid not in self._followers:
                self._finish_followers()  # a retry or restart replaced node 0's pod
                self._followers[node0.metadata.uid] = _LogFollower(self.cluster, node0.metadata.name, self._queue)
            for follower in self._followers.values():
                if follower.error:
                    raise self.failure(follower.error)
            if seen.finished:
                self._finish_followers()
                self._drain(0)
                return verdict(list(self._seen.values()), seen.jobs, seen.failed)
            self._check_starting(seen, time.monotonic() - started)
            self._drain(self.backend.poll_s)

    def _check_starting(self, seen: _Observed, waited_s: float) -> None:
        timeout = self.backend.unschedulable_timeout_s
        now = datetime.now(UTC)
        for pod in seen.pods:
            if pod.status and pod.status.phase == "Pending" and (reason := pod_failure(pod, now, timeout)):
                raise self.failure(reason)
        if not seen.pods and not seen.suspended and waited_s > timeout:
            why = "; ".join(self.cluster.warnings(seen.jobs)) or "no warning events"
            raise self.failure(f"no pod was created in {waited_s:.0f} s: {why}")

    def _drain(self, seconds: float) -> None:
        """Hand log lines to ``on_line`` (in this thread) as they come for ``seconds``; 0: those queued now."""
        until = time.monotonic() + seconds
        while True:
            left = until - time.monotonic()
            if seconds and left <= 0:
                return
            try:
                line = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return
            self.lines.append(line)
            self.on_line(line)

    def _finish_followers(self) -> None:
        for follower in self._followers.values():
            follower.finish()

    def stop(self) -> None:
        for follower in self._followers.values():
            follower.ended.set()


def run_kubernetes(
    stage: str,
    config: Config,
    store: Store,
    backend: KubernetesJob,
    on_line: Callable[[str], None],
    *,
    endpoint: Endpoint | None = None,
) -> tuple[int, list[str]]:
    """Submit the stage's Job (or JobSet), follow the log of its first pod (node 0) calling on_line for every
    line, wait for the end; return (exit code of node 0's container, all its log lines). Any exception while
    waiting (cancellation: Prefect raises in the flow) deletes the Job/JobSet (propagation Foreground; the
    pods' grace is backend.stop_timeout_s) before re-raising. Failures that are not an exit code (image pull
    errors, unschedulable past a deadline, OOMKilled, deadline exceeded, evicted, a worker node of a JobSet
    failing) raise flows.jobs.JobFailed with a clear one-line reason plus the log tail there is."""
    [manifest] = manifests(stage, config, store, backend, endpoint)
    cluster = _Cluster(api_client(backend), backend, manifest)
    cluster.submit()
    _log.info("submitted %s", cluster)
    watch = _Watch(cluster, backend, stage, on_line)
    try:
        end = watch.wait()
    except BaseException:
        watch.stop()
        cluster.delete()
        raise
    if end.reason is not None:
        raise watch.failure(end.reason, cluster.log_tail(end.pod) if end.pod else None)
    return end.exit_code, watch.lines
