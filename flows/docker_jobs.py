"""The docker job backend: a stage as a container of its image, on the flow's Docker engine.

The container runs the same command line as a local job (``flows.jobs.stage_command``) with the image's
interpreter. What it gets:

- the image of its runtime (``schemas.jobs.image_role``: ``vllm`` or ``trainer``), which must be on the
  engine already (``rner images build`` builds them; a registry pull is the engine's business);
- GPUs by device request (``backend.gpus``: ``all``, a count or device ids) when the stage computes on
  one itself (``schemas.jobs.wants_gpus``), and ``backend.shm_size`` of /dev/shm for NCCL;
- the host's network by default, so an ``--endpoint`` on the host's loopback and the store's endpoint
  are reached exactly as a local job reaches them;
- the store: ``RNER_STORE``; a local-directory store is bind-mounted at its own path; for S3 the
  variables named in ``backend.forward_env`` (endpoint, credentials) are copied from the orchestrator's
  environment when the container is created — never written into a config or a log;
- ``RNER_HOME`` (``/var/lib/rner``: the model cache, ``HF_HOME``, the training work directories and their
  checkpoints) on ``backend.home_volume``, a named volume or a host directory, rather than in the
  container's writable layer (see ``schemas.jobs``); ``RNER_HOME`` and ``HF_HOME`` are set to match;
- the orchestrator's uid:gid, so files it writes into a mounted store belong to the user.

Its stderr is streamed line by line to ``on_line`` while it runs; its stdout is read at the end (the last
line names the published output). The container is removed on success, on failure and on cancellation:
any exception while waiting (Prefect cancelling the flow, Ctrl-C) first stops it (SIGTERM, which the
stage turns into a clean shutdown of the servers it started, then SIGKILL after
``backend.stop_timeout_s``).

Usage::

    code, stdout = run_container("judge", config, store, DockerJob(), on_line=print, endpoint=endpoint)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound
from docker.types import DeviceRequest, Mount

from flows.jobs import JobFailed, stage_command
from schemas import Config, Endpoint, config_hash
from schemas.jobs import CONTAINER_HF_HOME, CONTAINER_HOME, DockerJob, image_role, wants_gpus
from tasks.store import Store

LABEL = "io.reasoning-ner.job"
"""Every job container carries this label (its value: the stage), so leftovers are easy to find:
``docker ps -a --filter label=io.reasoning-ner.job``."""


def container_name(stage: str, config: Config) -> str:
    return f"rner-{stage}-{config_hash(config)[:8]}-{secrets.token_hex(3)}"


def device_requests(backend: DockerJob) -> list[DeviceRequest]:
    """``backend.gpus`` as the engine's device request (what ``docker run --gpus`` sends)."""
    gpus = backend.gpus
    if gpus == 0 or gpus == ():
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int):
        return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def _mount(spec: str) -> Mount:
    source, target, *mode = spec.split(":")
    return Mount(target=target, source=source, type="bind", read_only=mode == ["ro"])


def home_mounts(backend: DockerJob) -> list[Mount]:
    """``backend.home_volume`` at the images' ``RNER_HOME``: a host directory (an absolute path) or a named
    volume, which the engine creates on first use from the image's directory (permissions included)."""
    source = backend.home_volume
    if source is None:
        return []
    return [Mount(target=CONTAINER_HOME, source=source, type="bind" if source.startswith("/") else "volume")]


def container_spec(
    stage: str, config: Config, store: Store, backend: DockerJob, *, endpoint: Endpoint | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for this stage (environment values included)."""
    command = stage_command(stage, config, store, backend.python, endpoint)
    forwarded = {name: os.environ[name] for name in backend.forward_env if name in os.environ}
    home = {"RNER_HOME": CONTAINER_HOME, "HF_HOME": CONTAINER_HF_HOME}  # where home_mounts puts the volume
    environment = {
        **forwarded, **home, **backend.env, "RNER_STORE": store.url, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"
    }  # fmt: skip
    mounts = [*home_mounts(backend), *(_mount(m) for m in backend.mounts)]
    if not store.url.startswith("s3://"):
        mounts.append(Mount(target=store.url, source=store.url, type="bind"))
    return {
        "image": backend.images.for_role(image_role(stage, config)),
        "entrypoint": command[:1],
        "command": command[1:],
        "name": container_name(stage, config),
        "environment": environment,
        "network_mode": backend.network,
        "shm_size": backend.shm_size,
        "device_requests": device_requests(backend) if wants_gpus(stage, config) else [],
        "mounts": mounts,
        "user": f"{os.getuid()}:{os.getgid()}",
        "labels": {LABEL: stage},
    }


def _client(backend: DockerJob) -> docker.DockerClient:
    try:
        return docker.DockerClient(base_url=backend.docker_host) if backend.docker_host else docker.from_env()
    except DockerException as e:
        where = backend.docker_host or os.environ.get("DOCKER_HOST", "the local socket")
        raise JobFailed(f"no Docker engine at {where}: {e}") from None


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Text lines from a byte stream cut anywhere (the engine sends what the process wrote, as it wrote it)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace")


def run_container(
    stage: str,
    config: Config,
    store: Store,
    backend: DockerJob,
    on_line: Callable[[str], None],
    *,
    endpoint: Endpoint | None = None,
) -> tuple[int, list[str]]:
    """Run the stage's container to the end: (its exit status, its stdout lines); stderr goes to ``on_line``."""
    client = _client(backend)
    spec = container_spec(stage, config, store, backend, endpoint=endpoint)
    try:
        client.images.get(spec["image"])
    except ImageNotFound:
        raise JobFailed(
            f"image {spec['image']} is not on the Docker engine: build it (`rner images build`) or pull it"
        ) from None
    container = client.containers.create(**spec)
    try:
        container.start()
        for line in lines(container.logs(stream=True, follow=True, stdout=False, stderr=True)):
            on_line(line)
        status = container.wait()["StatusCode"]
        stdout = list(lines([container.logs(stdout=True, stderr=False)]))
        container.reload()
        if container.attrs["State"].get("OOMKilled"):
            on_line(f"container {container.name} was killed: out of memory")
        return status, stdout
    except BaseException:
        container.stop(timeout=int(backend.stop_timeout_s))
        raise
    finally:
        container.remove(force=True)
