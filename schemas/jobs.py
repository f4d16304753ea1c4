"""Where a stage runs: the job backend a flow uses to run a stage's command line.

Every backend runs the same command, ``python -m tasks.<stage> --config-json ... --store ...``; only the
place differs:

- ``local``: a subprocess on the orchestrator's machine, in the project's environment (stages start
  their vLLM servers from the managed vLLM environment themselves);
- ``docker``: a container of the stage's image on a Docker engine, GPUs by device requests;
- ``kubernetes``: a Job (one pod) on a cluster; a training stage on several nodes is a JobSet whose pods
  meet at a torchrun rendezvous on the first pod.

Which image runs a stage (``image_role``): training, and evaluation in-process with transformers, run in
the ``trainer`` image; every other stage (CG's steps, evaluation on a server, the data stages) in the
``vllm`` image, which carries vLLM for the servers those stages start. Which stages get GPUs
(``wants_gpus``): training, and stages that start a vLLM server or generate in-process; a stage that only
talks to a running endpoint gets none.

Secrets never enter a config: ``forward_env`` names the variables (store endpoint and credentials) whose
values the container gets from the orchestrator's environment when it starts, and Kubernetes pods read
them from a Secret (``env_secret``).

Usage (a flow parameter)::

    backend: JobBackend = LocalJob()
    backend = DockerJob(gpus="all")                       # every GPU of the host for GPU stages
    backend = KubernetesJob(namespace="ml", gpus=8, node_selector={"gpu": "h100"})
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from schemas.base import Config, Name, Seq
from schemas.configs import CGConfig, EvalConfig, GRPOConfig, SFTConfig, TransformersRunner, VLLMLaunch

IMAGE_VERSION = "0.1.0"
"""The project version the default image tags carry (``rner images build`` tags ``<version>`` and
``<version>-<content hash>``)."""

ImageRole = Literal["vllm", "trainer"]

FORWARDED_ENV = (
    "RNER_S3_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RNER_STORE_TIMEOUT_S",
    "RNER_STORE_RETRIES",
    "HF_TOKEN",
)
"""What a container gets from the orchestrator's environment by default: where the store is and how to
reach it. Only names are configured; the values are read when the container starts and never logged."""


class Images(Config):
    """The image of each runtime (see ``images/``)."""

    vllm: Name = f"rner-vllm:{IMAGE_VERSION}"
    trainer: Name = f"rner-trainer:{IMAGE_VERSION}"

    def for_role(self, role: ImageRole) -> str:
        return self.vllm if role == "vllm" else self.trainer


class LocalJob(Config):
    """A subprocess of the flow's process."""

    kind: Literal["local"] = "local"
    python: str | None = None
    """Interpreter with the project installed (default: the flow's own)."""


class DockerJob(Config):
    """A container per stage on a Docker engine (the flow's host, or ``docker_host``)."""

    kind: Literal["docker"] = "docker"
    images: Images = Images()
    python: Name = "python"
    """The project's interpreter inside the images (on their ``PATH``)."""
    gpus: Literal["all"] | NonNegativeInt | Seq[NonNegativeInt] = 0
    """GPUs for the stages that use them: ``all``, a count, or device ids; 0 = none."""
    shm_size: Annotated[str, Field(pattern=r"^[0-9]+[bkmg]?$")] = "16g"
    """/dev/shm of the container (NCCL and data loaders need more than Docker's 64 MB)."""
    network: Name = "host"
    """``host`` lets a stage reach servers and the store on the host's loopback, as a local job does."""
    forward_env: Seq[Name] = FORWARDED_ENV
    env: dict[Name, str] = Field(default_factory=dict)
    """Plain variables set in the container (not secrets: they are part of the flow's parameters)."""
    mounts: Seq[Annotated[str, Field(pattern=r"^/[^:]*:/[^:]*(:(ro|rw))?$")]] = ()
    """``/host/path:/container/path[:ro]``; a local store is mounted at its own path without asking."""
    docker_host: str | None = None
    """Engine address (``unix:///var/run/docker.sock``, ``tcp://…``); default: ``DOCKER_HOST`` or the local socket."""
    stop_timeout_s: PositiveFloat = 60.0
    """On cancellation: SIGTERM, then SIGKILL after this long; the container is removed either way."""


class Toleration(Config):
    key: Name | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesJob(Config):
    """A Kubernetes Job per stage; a training stage with ``parallel.num_nodes > 1`` becomes a JobSet.

    Pods run the same command as every other backend; store credentials come from the Secret
    ``env_secret`` (``envFrom``), a local store must be on a volume every pod mounts (``volumes``).
    """

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: Name = "default"
    images: Images = Images()
    python: Name = "python"
    gpus: NonNegativeInt = 0
    """GPUs per pod (node) for the stages that use them."""
    gpu_resource: Name = "nvidia.com/gpu"
    cpu: Name | None = None
    """CPU request and limit per pod, e.g. ``"32"``."""
    memory: Name | None = None
    """Memory request and limit per pod, e.g. ``"256Gi"``."""
    shm_size: Name = "16Gi"
    node_selector: dict[Name, str] = Field(default_factory=dict)
    tolerations: Seq[Toleration] = ()
    service_account: Name | None = None
    image_pull_secrets: Seq[Name] = ()
    env_secret: Name | None = "rner-store"
    """A Secret whose keys become the pods' environment (``RNER_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, …)."""
    env: dict[Name, str] = Field(default_factory=dict)
    volumes: dict[Name, Name] = Field(default_factory=dict)
    """PersistentVolumeClaim name → mount path in every pod (a local store, a model cache)."""
    rdzv_port: Annotated[int, Field(ge=1, le=65535)] = 29500
    """Port of the torchrun rendezvous on the first pod of a multi-node JobSet."""
    ttl_seconds_after_finished: NonNegativeInt = 86400
    poll_s: PositiveFloat = 5.0
    context: Name | None = None
    """kubeconfig context; default: the in-cluster config, else the current context."""
    stop_timeout_s: PositiveFloat = 60.0
    """Grace period of the pods when a cancelled job is deleted."""
    backoff_limit: NonNegativeInt = 0
    """Pod retries of a Job; 0 because a stage resumes itself and a rerun should be the flow's choice."""
    active_deadline_s: PositiveInt | None = None
    unschedulable_timeout_s: PositiveFloat = 900.0
    """A pod the scheduler cannot place (no node with the GPUs, a taint, a missing claim), or a job that gets
    no pod at all (a quota, an admission policy), fails after this long; leave time for an autoscaler."""


JobBackend = Annotated[LocalJob | DockerJob | KubernetesJob, Field(discriminator="kind")]

TRAINING_STAGES = frozenset({"sft", "grpo"})


def image_role(stage: str, config: Config) -> ImageRole:
    """The runtime a stage needs: ``trainer`` for training and in-process generation, else ``vllm``."""
    if stage in TRAINING_STAGES:
        return "trainer"
    if isinstance(config, EvalConfig) and isinstance(config.model, TransformersRunner):
        return "trainer"
    return "vllm"


def wants_gpus(stage: str, config: Config) -> bool:
    """Whether the stage computes on an accelerator itself (training, servers it starts, in-process generation)."""
    if isinstance(config, SFTConfig | GRPOConfig):
        return True
    generators = [getattr(config, name, None) for name in ("teacher", "judge", "model")]
    if isinstance(config, CGConfig):
        generators += [config.annotate.teacher, config.judge.judge]
    return any(isinstance(g, VLLMLaunch | TransformersRunner) for g in generators)


def nodes(stage: str, config: Config) -> int:
    """How many nodes (pods, containers) the stage runs on."""
    return config.parallel.num_nodes if isinstance(config, SFTConfig | GRPOConfig) else 1
