"""The extraction service (``rner serve``) on Kubernetes: a ConfigMap, a Deployment and a Service.

    rner k8s render-service --model store:models/re/grpo/abc --labels person,location --store s3://ml/rner \\
        --backend k8s.yaml | kubectl apply -f -
    print(render_service(ServiceDeployment(serve=ServeConfig(server=VLLMLaunch(model="...")))), KubernetesJob()))

Each pod runs ``rner serve --config /etc/rner/serve.yaml`` in the vllm image (the project's environment has the
``serve`` extra; the base's Python has vLLM): the service starts its own vLLM server on the pod's GPUs
(``tensor_parallel_size`` x ``data_parallel_size`` of ``backend.gpu_resource``) and listens on ``0.0.0.0:port``.
Replicas scale out; each is a whole model server, so a request never crosses pods.

- **Config**: the pod's ``ServeConfig`` is the ConfigMap's ``serve.yaml``; its hash is an annotation of the pod
  template, so a new config (a new model) rolls the pods. The rollout keeps every old pod until its replacement is
  ready (``maxUnavailable: 0``, ``maxSurge: 1``: one replica's GPUs must be free during a rollout).
- **The model from the store**: ``store:`` references resolve in the pod against ``RNER_STORE`` (``--store``) with
  the credentials of the backend's ``env_secret`` (``envFrom``, as the stage jobs), into the model cache at
  ``RNER_HOME`` (the ``cache_claim``, else an ``emptyDir`` of ``cache_size``).
- **Probes**: readiness on ``/health`` (ready only once vLLM answers: no traffic before), liveness on ``/health``
  too after a startup probe that allows ``startup_timeout_s`` (a vLLM server loads for minutes; one that dies later
  makes ``/health`` fail and the pod restart).
- **Shutdown**: ``terminationGracePeriodSeconds`` = the service's ``shutdown_grace_s`` plus the vLLM server's own
  stop (``tasks.serving.STOP_GRACE_S``): requests in flight finish before the pod goes.
- **Secrets stay in Secrets**: the bearer token (``RNER_SERVE_TOKEN``) from the key of that name in ``token_secret``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Self

import yaml
from kubernetes import client
from pydantic import Field, PositiveInt, model_validator

from flows.kubernetes_jobs import INSTANCE_LABEL, home_volumes, placement
from schemas.base import Config, Name, config_hash
from schemas.jobs import CONTAINER_HF_HOME, CONTAINER_HOME, KubernetesJob
from schemas.service import TOKEN_ENV, ServeConfig
from tasks.serving import STOP_GRACE_S
from tasks.store import Store

CONTAINER = "serve"
CONFIG_DIR = "/etc/rner"
CONFIG_FILE = "serve.yaml"
CONFIG_HASH_ANNOTATION = "rner.config-hash"

DNSLabel = Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)]


class ServiceDeployment(Config):
    """``rner serve`` as a Kubernetes Deployment behind a Service."""

    serve: ServeConfig
    """What each pod serves (``host`` becomes ``0.0.0.0``): a vLLM launch on the pod's GPUs, or an endpoint."""
    name: DNSLabel = "rner-serve"
    """The ConfigMap's, Deployment's and Service's name: clients in the namespace call ``http://<name>:<port>``."""
    replicas: PositiveInt = 1
    """Pods, each with its own model server."""
    token_secret: Name | None = None
    """A Secret with the key ``RNER_SERVE_TOKEN``: the bearer token clients must send; ``None``: no token."""

    @model_validator(mode="after")
    def _listens_on_its_port(self) -> Self:
        if self.serve.port == 0:
            raise ValueError("serve.port: a Service needs a fixed port, not 0")
        return self


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "reasoning-ner", INSTANCE_LABEL: name, "rner.role": "extraction-service"}


def pod_config(spec: ServiceDeployment) -> ServeConfig:
    """The ``ServeConfig`` a pod runs: the given one, listening on every interface of the pod."""
    return spec.serve.model_copy(update={"host": "0.0.0.0"})


def gpus(serve: ServeConfig) -> int:
    """GPUs one pod needs: its vLLM server's tensor x data parallel size; none in front of an endpoint."""
    server = serve.server
    return server.tensor_parallel_size * server.data_parallel_size if server.kind == "vllm" else 0


def config_map(spec: ServiceDeployment, backend: KubernetesJob) -> client.V1ConfigMap:
    text = yaml.safe_dump(pod_config(spec).model_dump(mode="json"), sort_keys=False)
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(name=spec.name, namespace=backend.namespace, labels=_labels(spec.name)),
        data={CONFIG_FILE: text},
    )


def deployment(spec: ServiceDeployment, backend: KubernetesJob, store: Store | None = None) -> client.V1Deployment:
    serve = pod_config(spec)
    home = {"RNER_HOME": CONTAINER_HOME, "HF_HOME": CONTAINER_HF_HOME}
    env = [client.V1EnvVar(name=k, value=v) for k, v in {**home, **backend.env}.items()]
    if store is not None:
        env.append(client.V1EnvVar(name="RNER_STORE", value=store.url))
    if spec.token_secret:
        ref = client.V1SecretKeySelector(name=spec.token_secret, key=TOKEN_ENV, optional=False)
        env.append(client.V1EnvVar(name=TOKEN_ENV, value_from=client.V1EnvVarSource(secret_key_ref=ref)))
    limits: dict[str, str] = {backend.gpu_resource: str(gpus(serve))} if gpus(serve) else {}
    requests: dict[str, str] = {}
    for resource, quantity in (("cpu", backend.cpu), ("memory", backend.memory)):
        if quantity:
            limits[resource] = requests[resource] = quantity
    shm = client.V1EmptyDirVolumeSource(medium="Memory", size_limit=backend.shm_size)
    volumes = [
        client.V1Volume(name="shm", empty_dir=shm),
        client.V1Volume(name="config", config_map=client.V1ConfigMapVolumeSource(name=spec.name)),
    ]
    mounts = [
        client.V1VolumeMount(name="shm", mount_path="/dev/shm"),
        client.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
    ]
    for volume, mount in home_volumes(spec, backend):
        volumes.append(volume)
        mounts.append(mount)
    startup_s = serve.server.startup_timeout_s if serve.server.kind == "vllm" else 120.0

    def probe(**timing: int) -> client.V1Probe:
        return client.V1Probe(http_get=client.V1HTTPGetAction(path="/health", port="http"), **timing)

    container = client.V1Container(
        name=CONTAINER,
        image=backend.images.vllm,
        command=["rner", "serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        env=env,
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=backend.env_secret, optional=False))]
        if backend.env_secret
        else None,
        ports=[client.V1ContainerPort(container_port=serve.port, name="http", protocol="TCP")],
        startup_probe=probe(period_seconds=10, failure_threshold=math.ceil(startup_s / 10)),
        readiness_probe=probe(period_seconds=5, failure_threshold=2),
        liveness_probe=probe(period_seconds=15, failure_threshold=4, timeout_seconds=10),
        resources=client.V1ResourceRequirements(limits=limits or None, requests=requests or None),
        volume_mounts=mounts,
    )
    pod = client.V1PodSpec(
        containers=[container],
        volumes=volumes,
        termination_grace_period_seconds=math.ceil(serve.shutdown_grace_s + STOP_GRACE_S),
        **placement(backend),
    )
    labels = _labels(spec.name)
    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels, annotations={CONFIG_HASH_ANNOTATION: config_hash(serve)}),
        spec=pod,
    )
    rollout = client.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0)
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name=spec.name, namespace=backend.namespace, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=spec.replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            strategy=client.V1DeploymentStrategy(type="RollingUpdate", rolling_update=rollout),
            template=template,
        ),
    )


def service(spec: ServiceDeployment, backend: KubernetesJob) -> client.V1Service:
    port = spec.serve.port
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(name=spec.name, namespace=backend.namespace, labels=_labels(spec.name)),
        spec=client.V1ServiceSpec(
            type="ClusterIP",
            selector=_labels(spec.name),
            ports=[client.V1ServicePort(name="http", port=port, target_port="http", protocol="TCP")],
        ),
    )


def service_manifests(
    spec: ServiceDeployment, backend: KubernetesJob, store: Store | None = None
) -> list[dict[str, Any]]:
    """The ConfigMap, Deployment and Service, as ``kubectl apply``-able dicts."""
    serialize = client.ApiClient().sanitize_for_serialization
    return [serialize(m) for m in (config_map(spec, backend), deployment(spec, backend, store), service(spec, backend))]


def render_service(spec: ServiceDeployment, backend: KubernetesJob, store: Store | None = None) -> str:
    return yaml.safe_dump_all(service_manifests(spec, backend, store), sort_keys=False, width=1_000_000)
