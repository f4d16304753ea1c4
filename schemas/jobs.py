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

What a stage writes on its own disk lives under ``RNER_HOME`` (``CONTAINER_HOME`` in the images): the model
cache (``models/``, and the Hugging Face cache ``hf/``, the images' ``HF_HOME``) and the training stages'
work directories with their local checkpoints (``runs/``): tens of GB per model, 100+ GB per checkpoint of
an 8B model under ZeRO-3. In a container's writable layer that fills the engine's or the node's root disk and
is lost with the container, so both backends put them on volumes: a docker volume or host directory
(``DockerJob.home_volume``); on Kubernetes a PersistentVolumeClaim or a size-limited ``emptyDir`` for the
cache, and a per-pod ``emptyDir`` (or ephemeral claim) for the work directories (``KubernetesJob.cache_*``,
``work_*``).

Usage (a flow parameter)::

    backend: JobBackend = LocalJob()
    backend = DockerJob(gpus="all")                       # every GPU of the host for GPU stages
    backend = KubernetesJob(namespace="ml", gpus=8, node_selector={"gpu": "h100"})
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from schemas.base import Config, Name, Seq
from schemas.configs import (
    TEACHER_KEY_ENV,
    CGConfig,
    EvalConfig,
    GRPOConfig,
    SFTConfig,
    TransformersRunner,
    VLLMLaunch,
)

CONTAINER_HOME = "/var/lib/rner"
"""``RNER_HOME`` in the project's images (images/*/Dockerfile), writable for any uid."""
CONTAINER_HF_HOME = f"{CONTAINER_HOME}/hf"
"""``HF_HOME`` in the images: the Hugging Face cache (hub models that stages and vLLM servers download)."""
WORK_DIR = "runs"
"""Where under ``RNER_HOME`` the training stages keep their work directories (``tasks.train_stage``): the
trainer's local checkpoints and the final model before upload; one per node, never shared between nodes."""
CONTAINER_WORK = f"{CONTAINER_HOME}/{WORK_DIR}"
HOME_MOUNTS = frozenset({CONTAINER_HOME, CONTAINER_WORK})
"""The paths the backends mount volumes at themselves."""

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")]
"""A Kubernetes storage quantity: ``300Gi``, ``1Ti``, ``500G``."""

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
    TEACHER_KEY_ENV,
)
"""What a container gets from the orchestrator's environment by default: where the store is and how to
reach it, and the ``paper`` teacher endpoint's API key. Only names are configured; the values are read when the
container starts and never logged."""


class Images(Config):
    """The image of each runtime (see ``images/``)."""

    vllm: Name = f"rner-vllm:{IMAGE_VERSION}"
    """The image of the LLM stages (vLLM serving)."""
    trainer: Name = f"rner-trainer:{IMAGE_VERSION}"
    """The image of the training stages and of in-process generation."""

    def for_role(self, role: ImageRole) -> str:
        return self.vllm if role == "vllm" else self.trainer


class LocalJob(Config):
    """A subprocess of the flow's process."""

    kind: Literal["local"] = "local"
    """Which backend: ``local``, a subprocess."""
    python: str | None = None
    """Interpreter with the project installed (default: the flow's own)."""


class DockerJob(Config):
    """A container per stage on a Docker engine (the flow's host, or ``docker_host``)."""

    kind: Literal["docker"] = "docker"
    """Which backend: ``docker``, a container per stage."""
    images: Images = Images()
    """The image of each runtime."""
    python: Name = "python"
    """The project's interpreter inside the images (on their ``PATH``)."""
    gpus: Literal["all"] | NonNegativeInt | Seq[NonNegativeInt] = 0
    """GPUs for the stages that use them: ``all``, a count, or device ids; 0 = none."""
    shm_size: Annotated[str, Field(pattern=r"^[0-9]+[bkmg]?$")] = "16g"
    """/dev/shm of the container (NCCL and data loaders need more than Docker's 64 MB)."""
    network: Name = "host"
    """``host`` lets a stage reach servers and the store on the host's loopback, as a local job does."""
    forward_env: Seq[Name] = FORWARDED_ENV
    """Names of variables copied from the orchestrator's environment into the container when it starts (values
    never logged)."""
    env: dict[Name, str] = Field(default_factory=dict)
    """Plain variables set in the container (not secrets: they are part of the flow's parameters)."""
    mounts: Seq[Annotated[str, Field(pattern=r"^/[^:]*:/[^:]*(:(ro|rw))?$")]] = ()
    """``/host/path:/container/path[:ro]``; a local store is mounted at its own path without asking."""
    home_volume: Annotated[str, Field(pattern=r"^(/.*|[A-Za-z0-9][A-Za-z0-9_.-]+)$")] | None = "rner-home"
    """What holds ``RNER_HOME`` (``/var/lib/rner``) in every stage's container: the model cache (``models/``,
    ``HF_HOME`` = ``hf/``) and the training stages' work directories with their local checkpoints (``runs/``;
    100+ GB for an 8B model under ZeRO-3). A named volume (the engine creates it on first use with the image's
    permissions, writable by any uid, and keeps it: models download once for all jobs; put the engine's volume
    directory on a disk with room) or an absolute host path (a bind mount: the orchestrator's uid, which jobs
    run as, must be able to write it). One volume rather than one for the cache and one for checkpoints: a
    named volume nested in another starts empty and owned by root, so a job running as another uid could not
    write its checkpoints. ``None``: the container's writable layer (it grows by as much, and loses it all).
    A training stage cleans up its own work directory when it publishes."""
    docker_host: str | None = None
    """Engine address (``unix:///var/run/docker.sock``, ``tcp://…``); default: ``DOCKER_HOST`` or the local socket."""
    stop_timeout_s: PositiveFloat = 60.0
    """On cancellation: SIGTERM, then SIGKILL after this long; the container is removed either way."""

    @model_validator(mode="after")
    def _home_is_mounted_once(self) -> Self:
        if self.home_volume and any(m.split(":")[1].rstrip("/") == CONTAINER_HOME for m in self.mounts):
            raise ValueError(f"mounts: {CONTAINER_HOME} is home_volume's; set home_volume to that source instead")
        return self


class Toleration(Config):
    key: Name | None = None
    """The taint key tolerated; ``None`` with ``Exists``: every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """``Equal`` matches ``value``; ``Exists`` any value."""
    value: str | None = None
    """The taint value (``Equal`` only)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect tolerated; ``None``: all."""


class KubernetesJob(Config):
    """A Kubernetes Job per stage; a training stage with ``parallel.num_nodes > 1`` becomes a JobSet.

    Pods run the same command as every other backend; store credentials come from the Secret
    ``env_secret`` (``envFrom``), a local store must be on a volume every pod mounts (``volumes``).
    """

    kind: Literal["kubernetes"] = "kubernetes"
    """Which backend: ``kubernetes``, a Job (a JobSet for multi-node training) per stage."""
    namespace: Name = "default"
    """The namespace the Jobs run in."""
    images: Images = Images()
    """The image of each runtime."""
    python: Name = "python"
    """The project's interpreter inside the images (on their ``PATH``)."""
    gpus: NonNegativeInt = 0
    """GPUs per pod (node) for the stages that use them."""
    gpu_resource: Name = "nvidia.com/gpu"
    """The extended resource that counts GPUs."""
    cpu: Name | None = None
    """CPU request and limit per pod, e.g. ``"32"``."""
    memory: Name | None = None
    """Memory request and limit per pod, e.g. ``"256Gi"``."""
    shm_size: Name = "16Gi"
    """Size of the memory-backed /dev/shm of each pod (NCCL and data loaders need more than 64 MB)."""
    node_selector: dict[Name, str] = Field(default_factory=dict)
    """Labels a node must have to run the pods."""
    tolerations: Seq[Toleration] = ()
    """Taints the pods tolerate (e.g. of GPU nodes)."""
    service_account: Name | None = None
    """The pods' service account; ``None``: the namespace's default."""
    image_pull_secrets: Seq[Name] = ()
    """Secrets to pull the images with."""
    env_secret: Name | None = "rner-store"
    """A Secret whose keys become the pods' environment (``RNER_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, …)."""
    env: dict[Name, str] = Field(default_factory=dict)
    """Plain variables set in the pods (not secrets: they are part of the flow's parameters)."""
    volumes: dict[Name, Name] = Field(default_factory=dict)
    """PersistentVolumeClaim name → mount path in every pod (a local store, a dataset); the model cache and
    the work directories have their own fields."""
    cache_claim: Name | None = None
    """A PersistentVolumeClaim mounted at ``RNER_HOME`` (``/var/lib/rner``) in every pod: the model cache
    (``models/``, ``HF_HOME`` = ``hf/``), kept between jobs so that models download once. ReadWriteMany to
    share it between the nodes of a JobSet or concurrent jobs. ``None``: an ``emptyDir`` of ``cache_size``,
    filled anew by every pod."""
    cache_size: Quantity = "200Gi"
    """Size limit of the ``emptyDir`` cache when there is no ``cache_claim`` (the kubelet evicts a pod that
    writes more): room for the models a stage loads (Qwen3-8B ~16 GB, the paper's judge Qwen3-32B ~64 GB;
    its teacher DeepSeek-R1, ~700 GB, wants a claim)."""
    work_size: Quantity = "300Gi"
    """Room for a training stage's work directory in each pod (``RNER_HOME/runs``, always the pod's own: the
    nodes of a JobSet must not share it): the trainer's local checkpoint (for an 8B model under ZeRO-3, bf16
    weights + fp32 master weights + Adam states ~110 GB, twice while the next one is written) and the final
    model. An ``emptyDir`` with this size limit on the node's disk, or a claim of this size (``work_storage_class``)."""
    work_storage_class: Name | None = None
    """A StorageClass for the work directories: each training pod then gets its own PersistentVolumeClaim of
    ``work_size`` (a generic ephemeral volume, made and deleted with the pod), for nodes whose own disk is too
    small. ``None``: an ``emptyDir``."""
    rdzv_port: Annotated[int, Field(ge=1, le=65535)] = 29500
    """Port of the torchrun rendezvous on the first pod of a multi-node JobSet."""
    ttl_seconds_after_finished: NonNegativeInt = 86400
    """A finished Job is kept this long (for ``kubectl describe``), then deleted."""
    poll_s: PositiveFloat = 5.0
    """Seconds between polls of the Job and its pods."""
    context: Name | None = None
    """kubeconfig context; default: the in-cluster config, else the current context."""
    stop_timeout_s: PositiveFloat = 60.0
    """Grace period of the pods when a cancelled job is deleted."""
    backoff_limit: NonNegativeInt = 0
    """Pod retries of a Job; 0 because a stage resumes itself and a rerun should be the flow's choice."""
    active_deadline_s: PositiveInt | None = None
    """A Job running longer than this is stopped and fails; ``None``: no limit."""
    unschedulable_timeout_s: PositiveFloat = 900.0
    """A pod the scheduler cannot place (no node with the GPUs, a taint, a missing claim), or a job that gets
    no pod at all (a quota, an admission policy), fails after this long; leave time for an autoscaler."""

    @model_validator(mode="after")
    def _home_is_mounted_once(self) -> Self:
        taken = [f"{claim} at {path}" for claim, path in self.volumes.items() if path.rstrip("/") in HOME_MOUNTS]
        if taken:
            raise ValueError(
                f"volumes: {', '.join(taken)}: the model cache and the work directories are mounted there "
                "(cache_claim, work_size, work_storage_class)"
            )
        return self


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
