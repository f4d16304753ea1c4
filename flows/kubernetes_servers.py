"""A vLLM server on several Kubernetes nodes, for a model that one node cannot hold (the ``paper`` teacher,
DeepSeek-R1: ~690 GB of FP8 weights against 8 x 80 GB per node; ``rner train plan annotate``).

    rner k8s render-server --model deepseek-ai/DeepSeek-R1 --nodes 2 --gpus-per-node 8 | kubectl apply -f -
    print(render_server(MultiNodeServer(model="deepseek-ai/DeepSeek-R1", nodes=2), KubernetesJob(namespace="ml")))

vLLM's documented multi-node path (docs/deployment/frameworks/lws.md, examples/online_serving/multi-node-serving.sh):
a LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``, a kubernetes-sigs CRD; its controller must be installed) of one
group of ``nodes`` pods. The leader starts a Ray head, waits until every pod's Ray node has joined (the group's size,
``LWS_GROUP_SIZE``), then runs vLLM's OpenAI server with ``--tensor-parallel-size gpus_per_node
--pipeline-parallel-size nodes --distributed-executor-backend ray``; each worker joins the head at
``LWS_LEADER_ADDRESS`` (both set by the LWS controller), retrying until it is up. ``restartPolicy:
RecreateGroupOnPodRestart``: one failed pod restarts the group (a Ray cluster does not survive losing a node);
``startupPolicy: LeaderCreated``: the workers start with the leader (the leader is ready only once they have joined).
A ClusterIP Service of the same name sends ``port`` to the leader, so stages in the namespace reach the server at
``http://<name>:<port>/v1``: the ``paper`` preset's teacher endpoint is ``PAPER_TEACHER_URL``, this default name and
port for DeepSeek-R1.

The pod templates are built with the kubernetes client's models (the CRD wrapper is a dict, as the JobSet's in
``flows.kubernetes_jobs``) from the same ``KubernetesJob`` backend the stages use: namespace, image (the vllm image:
its base, the official vLLM image, brings Ray; ``vllm-python`` is that base's interpreter), GPU resource, node
selector, tolerations, service account, pull secrets, ``/dev/shm`` of ``shm_size``, and the model cache at
``RNER_HOME`` (``HF_HOME`` under it): the claim ``cache_claim`` (ReadWriteMany, so every node shares one download),
else an ``emptyDir`` of ``cache_size`` on each node, which must hold the whole checkpoint (every node downloads it).
Secrets stay in Secrets: ``HF_TOKEN`` from the backend's ``env_secret`` (optional), and the server's API key
(``VLLM_API_KEY``, vLLM's ``--api-key``) from the key ``api_key_secret_key`` of the Secret ``api_key_secret``, by
default the same Secret and key (``RNER_TEACHER_API_KEY``) the stages' pods read the teacher's key from.

Before rendering, the server is planned (``tasks.memory_plan.server_part``): weights and KV cache on ``nodes x
gpus_per_node`` GPUs of ``gpu``; a server that cannot fit is refused with what to change.
"""

from __future__ import annotations

import logging
import re
import shlex
from typing import Annotated, Any, Literal

import yaml
from kubernetes import client
from kubernetes.utils import parse_quantity
from pydantic import Field, PositiveInt

from flows.jobs import JobFailed
from flows.kubernetes_jobs import HOME_VOLUME, INSTANCE_LABEL, placement
from schemas.base import Config, Name, Seq
from schemas.configs import TEACHER_KEY_ENV
from schemas.jobs import CONTAINER_HF_HOME, CONTAINER_HOME, KubernetesJob

LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_VERSION = "v1"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
"""The label the LWS controller puts on every pod of a set (``SetNameLabelKey``)."""
ROLE_LABEL = "role"
LEADER = "leader"
CONTAINER = "vllm"
RAY_JOIN_TIMEOUT_S = 1800
"""How long the leader waits for every node's Ray to join: pods pull a multi-GB image at different speeds."""

WAIT_FOR_RAY_NODES = """\
import sys, time
import ray
want, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
while (alive := sum(node["Alive"] for node in ray.nodes())) < want:
    if time.monotonic() > deadline:
        sys.exit(f"only {alive} of {want} Ray nodes joined the head")
    print(f"{alive} of {want} Ray nodes joined", flush=True)
    time.sleep(5)
"""

_log = logging.getLogger("rner.kubernetes")

DNSLabel = Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)]


class MultiNodeServer(Config):
    """A vLLM OpenAI server over ``nodes`` x ``gpus_per_node`` GPUs: tensor parallel within a node, pipeline
    parallel across nodes (vLLM's recommendation for multi-node serving)."""

    model: Name
    """A hub id (downloaded by every node into the model cache) or a path on the cache claim."""
    served_name: Name | None = None
    """The name clients ask for (``--served-model-name``); default: ``model``."""
    nodes: PositiveInt = 2
    gpus_per_node: PositiveInt = 8
    max_model_len: PositiveInt = 40960
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    """``auto``: the checkpoint's (FP8 checkpoints stay FP8 either way)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    ray_port: Annotated[int, Field(ge=1, le=65535)] = 6379
    name: DNSLabel | None = None
    """The LeaderWorkerSet's and the Service's name; default ``vllm-<model's last path part>``."""
    api_key_secret: Name | None = "rner-store"
    """The Secret holding the server's API key; ``None``: a server without a key (anyone in the cluster may use it)."""
    api_key_secret_key: Name = TEACHER_KEY_ENV
    extra_args: Seq[str] = ()
    """More ``vllm serve`` arguments (``--gpu-memory-utilization 0.92``, ``--enable-expert-parallel``, ...)."""
    python: str = "vllm-python"
    """The interpreter with vLLM and Ray in the image (the vllm image's base Python)."""
    image: str | None = None
    """Default: the backend's vllm image."""


def server_name(spec: MultiNodeServer) -> str:
    """``spec.name``, else ``vllm-<the model's last path part>`` as a DNS label (``vllm-deepseek-r1``)."""
    if spec.name:
        return spec.name
    base = re.sub(r"[^a-z0-9]+", "-", spec.model.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    return f"vllm-{base}"[:40].rstrip("-")


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "reasoning-ner", INSTANCE_LABEL: name, "rner.role": "llm-server"}


def vllm_args(spec: MultiNodeServer) -> list[str]:
    return [
        "--model", spec.model, "--served-model-name", spec.served_name or spec.model,
        "--host", "0.0.0.0", "--port", str(spec.port),
        "--tensor-parallel-size", str(spec.gpus_per_node), "--pipeline-parallel-size", str(spec.nodes),
        "--distributed-executor-backend", "ray", "--max-model-len", str(spec.max_model_len), "--dtype", spec.dtype,
        *spec.extra_args,
    ]  # fmt: skip


def leader_script(spec: MultiNodeServer) -> str:
    """The leader's shell script: a Ray head, every node joined, then vLLM's OpenAI server in its place."""
    py = shlex.quote(spec.python)
    ray = f"{py} -m ray.scripts.scripts"
    wait = f'{py} -c {shlex.quote(WAIT_FOR_RAY_NODES)} "$LWS_GROUP_SIZE" {RAY_JOIN_TIMEOUT_S}'
    serve = f"exec {py} -m vllm.entrypoints.openai.api_server {shlex.join(vllm_args(spec))}"
    return f"set -e\n{ray} start --head --port={spec.ray_port} --disable-usage-stats\n{wait}\n{serve}\n"


def worker_script(spec: MultiNodeServer) -> str:
    """A worker's shell script: join the leader's Ray head, retrying until it is up, and stay."""
    py = shlex.quote(spec.python)
    address = f'"$LWS_LEADER_ADDRESS:{spec.ray_port}"'
    return (
        f"until {py} -m ray.scripts.scripts start --address={address} --block --disable-usage-stats; do\n"
        f'  echo "waiting for the Ray head at $LWS_LEADER_ADDRESS"; sleep 5\n'
        "done\n"
    )


def _pod_template(spec: MultiNodeServer, backend: KubernetesJob, name: str, leader: bool) -> client.V1PodTemplateSpec:
    env = [
        client.V1EnvVar(name="RNER_HOME", value=CONTAINER_HOME),
        client.V1EnvVar(name="HF_HOME", value=CONTAINER_HF_HOME),
        *[client.V1EnvVar(name=k, value=v) for k, v in backend.env.items() if k not in ("RNER_HOME", "HF_HOME")],
    ]
    if backend.env_secret:
        ref = client.V1SecretKeySelector(name=backend.env_secret, key="HF_TOKEN", optional=True)
        env.append(client.V1EnvVar(name="HF_TOKEN", value_from=client.V1EnvVarSource(secret_key_ref=ref)))
    if leader and spec.api_key_secret:
        ref = client.V1SecretKeySelector(name=spec.api_key_secret, key=spec.api_key_secret_key, optional=False)
        env.append(client.V1EnvVar(name="VLLM_API_KEY", value_from=client.V1EnvVarSource(secret_key_ref=ref)))
    limits = {backend.gpu_resource: str(spec.gpus_per_node)}
    requests: dict[str, str] = {}
    for resource, quantity in (("cpu", backend.cpu), ("memory", backend.memory)):
        if quantity:
            limits[resource] = requests[resource] = quantity
    shm = client.V1EmptyDirVolumeSource(medium="Memory", size_limit=backend.shm_size)
    if backend.cache_claim:
        cache = client.V1Volume(
            name=HOME_VOLUME,
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=backend.cache_claim),
        )
    else:
        cache = client.V1Volume(
            name=HOME_VOLUME, empty_dir=client.V1EmptyDirVolumeSource(size_limit=backend.cache_size)
        )
    probe = None
    if leader:  # vLLM answers /health once the model is loaded on every node (no API key needed there)
        probe = client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/health", port=spec.port), period_seconds=10, failure_threshold=3
        )
    container = client.V1Container(
        name=CONTAINER,
        image=spec.image or backend.images.vllm,
        command=["sh", "-c", leader_script(spec) if leader else worker_script(spec)],
        env=env,
        ports=[client.V1ContainerPort(container_port=spec.port, name="http")] if leader else None,
        readiness_probe=probe,
        resources=client.V1ResourceRequirements(limits=limits, requests=requests or None),
        volume_mounts=[
            client.V1VolumeMount(name="shm", mount_path="/dev/shm"),
            client.V1VolumeMount(name=HOME_VOLUME, mount_path=CONTAINER_HOME),
        ],
    )
    pod = client.V1PodSpec(
        containers=[container],
        volumes=[client.V1Volume(name="shm", empty_dir=shm), cache],
        **placement(backend),
    )
    labels = {**_labels(name), **({ROLE_LABEL: LEADER} if leader else {ROLE_LABEL: "worker"})}
    return client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod)


def lws_manifest(spec: MultiNodeServer, backend: KubernetesJob) -> dict[str, Any]:
    """The LeaderWorkerSet: one group of ``spec.nodes`` pods, the leader serving."""
    name = server_name(spec)
    serialize = client.ApiClient().sanitize_for_serialization
    template: dict[str, Any] = {
        "size": spec.nodes,
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": serialize(_pod_template(spec, backend, name, leader=True)),
        "workerTemplate": serialize(_pod_template(spec, backend, name, leader=False)),
    }
    return {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": backend.namespace, "labels": _labels(name)},
        "spec": {"replicas": 1, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": template},
    }


def service_manifest(spec: MultiNodeServer, backend: KubernetesJob) -> dict[str, Any]:
    """The Service in front of the leader: ``http://<name>:<port>/v1`` in its namespace."""
    name = server_name(spec)
    service = client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(name=name, namespace=backend.namespace, labels=_labels(name)),
        spec=client.V1ServiceSpec(
            type="ClusterIP",
            selector={LWS_NAME_LABEL: name, ROLE_LABEL: LEADER},
            ports=[client.V1ServicePort(name="http", port=spec.port, target_port=spec.port, protocol="TCP")],
        ),
    )
    return client.ApiClient().sanitize_for_serialization(service)


def check_server_fits(spec: MultiNodeServer, backend: KubernetesJob, gpu_name: str = "h100-80gb") -> str | None:
    """Refuse (``JobFailed``) a server whose weights and one full-length sequence cannot fit its GPUs, or whose
    checkpoint cannot fit each node's model cache; the plan's one-line verdict, or None when the model's config is not
    at hand (planned offline: ``tasks.memory_plan.KNOWN_CONFIGS``)."""
    from tasks.memory_plan import GIB, PlanError, gpu_named, model_shape, server_part

    try:
        shape = model_shape(spec.model)
    except PlanError as e:
        _log.warning("not planned: %s", e)
        return None
    dtype = 2  # auto and both 16-bit types; FP8 matrices count their own bytes
    part = server_part(
        f"{server_name(spec)}: multi-node vLLM server, {spec.model}",
        shape,
        gpu_named(gpu_name),
        tensor_parallel=spec.gpus_per_node,
        pipeline_parallel=spec.nodes,
        max_model_len=spec.max_model_len,
        dtype_bytes=dtype,
        knob="--gpus-per-node",
        spread="more nodes (--nodes)",
    )
    if not part.fits:
        raise JobFailed(f"{spec.nodes} node(s) x {spec.gpus_per_node} {gpu_name}: {part.summary}")
    checkpoint = shape.weight_bytes(dtype)
    if not backend.cache_claim and parse_quantity(backend.cache_size) < checkpoint * 1.05:
        raise JobFailed(
            f"{spec.model}'s ~{checkpoint / GIB:.0f} GiB of weights do not fit the model cache (an emptyDir of "
            f"cache_size {backend.cache_size} on each node, and every node downloads the whole checkpoint): give the "
            "backend a cache_claim (a ReadWriteMany claim every node mounts) or a larger cache_size"
        )
    return part.summary


def server_manifests(spec: MultiNodeServer, backend: KubernetesJob) -> list[dict[str, Any]]:
    """The LeaderWorkerSet and its Service, as ``kubectl apply``-able dicts."""
    return [lws_manifest(spec, backend), service_manifest(spec, backend)]


def render_server(spec: MultiNodeServer, backend: KubernetesJob, gpu: str = "h100-80gb") -> str:
    """The server's manifests as YAML, after its memory plan (``check_server_fits``)."""
    summary = check_server_fits(spec, backend, gpu)
    head = f"# {summary}\n" if summary else ""
    return head + yaml.safe_dump_all(server_manifests(spec, backend), sort_keys=False, width=1_000_000)
