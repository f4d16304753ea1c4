"""Servers a flow starts for its stages: on first use, shared, and stopped when the flow ends.

CG's annotate and judge steps often use the same model; starting it once saves a server start (minutes
for a large model). A stage that is a cache hit never asks, so no server starts for finished work.

Usage::

    with SharedServers() as servers:
        run_stage("annotate", config, store, backend, server=servers.provider(config.teacher, backend))
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from types import TracebackType
from typing import Self

from prefect import get_run_logger

from flows.stages import EndpointFor
from schemas import Endpoint, VLLMLaunch
from schemas.jobs import DockerJob, JobBackend, KubernetesJob
from tasks.serving import serve


class SharedServers:
    def __init__(self) -> None:
        self._stack = ExitStack()
        self._running: dict[VLLMLaunch, Endpoint] = {}
        self._lock = threading.Lock()

    def provider(self, spec: Endpoint | VLLMLaunch, backend: JobBackend) -> EndpointFor | None:
        """A lazy endpoint for a launch spec; ``None`` for a running endpoint (stages connect to it) and on
        Kubernetes (a pod cannot reach a server on the orchestrator's loopback: each starts its own). For
        docker jobs the server is a container of the vllm image too."""
        if isinstance(spec, Endpoint) or isinstance(backend, KubernetesJob):
            return None
        if isinstance(backend, DockerJob) and spec.image is None:
            spec = spec.model_copy(update={"image": backend.images.vllm})
        return _Provider(self, spec)

    def endpoint(self, spec: VLLMLaunch) -> Endpoint:
        with self._lock:
            if spec not in self._running:
                logger = get_run_logger()
                # Minutes pass here without a word otherwise: the first start on a machine creates the vLLM
                # environment, and every start loads (on CPU: compiles) the model.
                logger.info("starting a vLLM server for %s (the first on a machine builds its environment)", spec.model)
                started = time.monotonic()
                self._running[spec] = self._stack.enter_context(serve(spec))
                logger.info("vLLM server for %s ready after %.0f s", spec.model, time.monotonic() - started)
            return self._running[spec]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()


class _Provider:
    """Callable handle to a shared server; its repr is what Prefect records as the task parameter."""

    def __init__(self, servers: SharedServers, spec: VLLMLaunch) -> None:
        self._servers = servers
        self.spec = spec

    def __call__(self) -> Endpoint:
        return self._servers.endpoint(self.spec)

    def __repr__(self) -> str:
        return f"shared vLLM server for {self.spec.model}"
