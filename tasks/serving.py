"""LLM servers for the stages: use a running endpoint, or start a vLLM server, wait for it, and always stop it.

Usage::

    raise_on_sigterm()                       # first thing in a stage's main: cancellation runs finally blocks
    with serve(cfg.teacher) as endpoint:     # Endpoint → itself; VLLMLaunch → a server of our own
        client = OpenAI(base_url=endpoint.base_url, api_key="unused")
        ...                                  # the server is stopped when the block ends, however it ends
    with run_server(cmd, env, port=port, startup_timeout_s=900):   # any vLLM server command (trl vllm-serve)
        ...

A ``VLLMLaunch`` runs ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (``spec.python``,
else ``tasks.vllm_env.vllm_python()``), or ``docker run`` of ``spec.image`` with host networking.

- Readiness: ``GET /health`` must answer 200 within ``spec.startup_timeout_s``. If the server exits
  first or the deadline passes, ``ServerError`` carries its exit code and last ``ERROR_LINES`` log lines.
- Logs: every line of the server's stdout/stderr goes to ``on_log`` (default: logger ``rner.serving``
  at INFO); the last ``LOG_LINES`` are kept for error messages.
- Stopping: SIGTERM to the server's process group (vLLM's engine and workers included), SIGKILL after
  ``STOP_GRACE_S``; containers get ``docker stop`` and ``docker rm -f``. This runs on normal exit,
  exceptions, KeyboardInterrupt and generator close (cancellation).
- Orphans: a small watchdog process (``python -m tasks.serving``, in its own session) holds a pipe from
  this process; if this process dies without stopping the server (SIGKILL, OOM kill), the pipe closes and
  the watchdog stops the server the same way. Linux only (pidfds).
- Environment: ``VLLM_CPU_KVCACHE_SPACE`` = ``spec.kv_cache_gib`` (whole GiB, at least 1);
  ``CUDA_VISIBLE_DEVICES`` = ``spec.gpu_ids`` when given; everything else is inherited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import httpx

from schemas.configs import Endpoint, VLLMLaunch
from tasks.errors import RnerError
from tasks.models import resolve_model
from tasks.redact import redact_url
from tasks.settings import Settings
from tasks.vllm_env import cuda_available, vllm_python

HOST = "127.0.0.1"
LOG_LINES = 200
ERROR_LINES = 40
STOP_GRACE_S = 30.0
HEALTH_POLL_S = 0.5

_log = logging.getLogger("rner.serving")


class ServerError(RnerError, RuntimeError):
    """A vLLM server that exited or did not become healthy in time."""


def vllm_args(spec: VLLMLaunch, *, model_path: str, served_name: str, port: int) -> list[str]:
    """The OpenAI server's arguments, the same for a local interpreter and a container."""
    return [
        "--model", model_path, "--served-model-name", served_name, "--host", HOST, "--port", str(port),
        "--max-model-len", str(spec.max_model_len), "--dtype", spec.dtype,
        "--tensor-parallel-size", str(spec.tensor_parallel_size), "--data-parallel-size", str(spec.data_parallel_size),
        *(["--enforce-eager"] if spec.enforce_eager else []), *spec.extra_args,
    ]  # fmt: skip


def vllm_command(spec: VLLMLaunch, *, model_path: str, served_name: str, port: int, python: str) -> list[str]:
    # The module, not the `vllm` console script: that one asks for the metadata of a package named
    # `vllm`, which vllm-cpu does not install.
    args = vllm_args(spec, model_path=model_path, served_name=served_name, port=port)
    return [python, "-m", "vllm.entrypoints.openai.api_server", *args]


def docker_command(
    spec: VLLMLaunch, *, model_path: str, served_name: str, port: int, container: str, gpus: bool
) -> list[str]:
    """``docker run`` of ``spec.image``, whose entrypoint is the OpenAI server (as in the official image).

    ``gpus``: give the container GPUs (``spec.gpu_ids`` if set, else all of them).
    """
    assert spec.image is not None
    cmd = ["docker", "run", "--rm", "--name", container, "--network", "host", "--ipc", "host"]
    if spec.gpu_ids:
        # docker parses --gpus as CSV: a list of devices must be quoted inside the value.
        cmd += ["--gpus", f'"device={",".join(map(str, spec.gpu_ids))}"']
    elif gpus:
        cmd += ["--gpus", "all"]
    for name, value in kv_cache_env(spec).items():
        cmd += ["-e", f"{name}={value}"]
    if model_path.startswith("/"):  # a local directory (hub ids are fetched inside the container)
        cmd += ["-v", f"{model_path}:{model_path}:ro"]
    return [*cmd, spec.image, *vllm_args(spec, model_path=model_path, served_name=served_name, port=port)]


def kv_cache_env(spec: VLLMLaunch) -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(spec.kv_cache_gib)))}


def server_env(spec: VLLMLaunch) -> dict[str, str]:
    """The variables a local server gets on top of the inherited environment."""
    env = kv_cache_env(spec)
    if spec.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_ids))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def serve(
    server: Endpoint | VLLMLaunch,
    *,
    on_log: Callable[[str], None] | None = None,
    settings: Settings | None = None,
) -> Iterator[Endpoint]:
    """An endpoint to send requests to for the duration of the block (see the module docstring)."""
    if isinstance(server, Endpoint):
        yield server
        return
    spec = server
    settings = settings or Settings()
    model_path = resolve_model(spec.model, settings)
    served_name = spec.served_name or spec.model
    port = spec.port or free_port()
    container = None
    if spec.image:
        container = f"rner-vllm-{uuid.uuid4().hex[:12]}"
        gpus = bool(spec.gpu_ids) or cuda_available()
        cmd = docker_command(
            spec, model_path=model_path, served_name=served_name, port=port, container=container, gpus=gpus
        )
        env = dict(os.environ)
    else:
        python = spec.python or vllm_python(settings)
        cmd = vllm_command(spec, model_path=model_path, served_name=served_name, port=port, python=python)
        env = {**os.environ, **server_env(spec)}
    with run_server(cmd, env, port=port, startup_timeout_s=spec.startup_timeout_s, on_log=on_log, container=container):
        yield Endpoint(base_url=f"http://{HOST}:{port}/v1", model=served_name)


@contextmanager
def run_server(
    cmd: list[str],
    env: dict[str, str],
    *,
    port: int,
    startup_timeout_s: float,
    on_log: Callable[[str], None] | None = None,
    container: str | None = None,
) -> Iterator[None]:
    """Run ``cmd``, a vLLM server listening on ``HOST:port``, for the duration of the block: healthy when the
    block starts, stopped however it ends, watched by a watchdog (see the module docstring). ``serve`` runs
    the OpenAI server with it; GRPO runs ``trl vllm-serve``."""
    _log.info("starting vLLM server: %s", " ".join(cmd))
    process = _Process.start(cmd, env, on_log or _log.info, container)
    try:
        started = time.monotonic()
        _wait_healthy(process, f"http://{HOST}:{port}/health", started + startup_timeout_s)
        _log.info("vLLM server ready on port %d after %.0f s", port, time.monotonic() - started)
        yield
    finally:
        process.stop()
        _log.info("vLLM server on port %d stopped", port)


@dataclass
class _Process:
    """A server in its own process group, a thread that forwards and keeps its log lines, and a watchdog."""

    popen: subprocess.Popen[str]
    pidfd: int
    watchdog: subprocess.Popen[bytes]
    container: str | None
    tail: deque[str]
    reader: threading.Thread

    @classmethod
    def start(
        cls, cmd: list[str], env: dict[str, str], on_log: Callable[[str], None], container: str | None
    ) -> _Process:
        popen = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        # Opened before anything can reap the server, so it always refers to this process.
        pidfd = os.pidfd_open(popen.pid)
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "tasks.serving", str(popen.pid), str(pidfd), str(STOP_GRACE_S), container or ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(pidfd,),
            start_new_session=True,
        )
        tail: deque[str] = deque(maxlen=LOG_LINES)
        reader = threading.Thread(target=_forward, args=(popen, tail, on_log), name="vllm-log", daemon=True)
        reader.start()
        return cls(popen, pidfd, watchdog, container, tail, reader)

    def last_lines(self) -> str:
        return "\n".join(list(self.tail)[-ERROR_LINES:])

    def stop(self) -> None:
        stop_server(self.popen.pid, self.pidfd, self.container, STOP_GRACE_S)
        self.popen.wait()
        # Only now: had this process died during the stop above, the watchdog would have finished it.
        self.watchdog.kill()
        self.watchdog.wait()
        assert self.watchdog.stdin is not None
        self.watchdog.stdin.close()
        os.close(self.pidfd)
        self.reader.join(timeout=5)


def stop_server(pgid: int, pidfd: int, container: str | None, grace_s: float) -> None:
    """SIGTERM the server's process group, SIGKILL it if its leader (``pidfd``) is still there after ``grace_s``."""
    if container:
        for cmd in (["docker", "stop", "-t", str(int(grace_s)), container], ["docker", "rm", "-f", container]):
            subprocess.run(cmd, capture_output=True, check=False)
    _signal_group(pgid, signal.SIGTERM)
    exited, _, _ = select.select([pidfd], [], [], grace_s)  # a pidfd turns readable when its process ends
    if not exited:
        _log.warning("vLLM server (pid %d) ignored SIGTERM for %.0f s: killing it", pgid, grace_s)
    # Also sweeps workers that outlived a leader which did exit.
    _signal_group(pgid, signal.SIGKILL)


def _watchdog(pgid: str, pidfd: str, grace_s: str, container: str) -> None:
    """Stop the server once the process that started it is gone without stopping it (SIGKILL, OOM kill).

    Our stdin is a pipe whose only writer is that process: EOF means it has ended, however it ended.
    PR_SET_PDEATHSIG is not enough: it only sends SIGTERM, and vLLM hangs if that arrives during startup.
    """
    sys.stdin.buffer.read()
    stop_server(int(pgid), int(pidfd), container or None, float(grace_s))


def _forward(popen: subprocess.Popen[str], tail: deque[str], on_log: Callable[[str], None]) -> None:
    assert popen.stdout is not None
    for raw in popen.stdout:
        line = raw.rstrip()
        tail.append(line)
        try:
            on_log(line)
        except Exception:
            # Stopping here would stop draining the pipe, and a server blocked on a full pipe hangs.
            _log.exception("on_log failed on a vLLM log line")


def _wait_healthy(process: _Process, url: str, deadline: float) -> None:
    # trust_env=False: an HTTP(S)_PROXY from the environment must not capture requests to loopback.
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while True:
            code = process.popen.poll()
            if code is not None:
                # Drain what it wrote before exiting: those lines explain the exit. No EOF to wait for
                # while a worker it left behind still holds the pipe.
                process.reader.join(timeout=1)
                raise ServerError(
                    redact_url(
                        f"vLLM server exited with code {code} before it was ready; last log lines:\n"
                        f"{process.last_lines()}"
                    )
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerError(
                    redact_url(
                        f"vLLM server not healthy at {url} before the startup timeout; last log lines:\n"
                        f"{process.last_lines()}"
                    )
                )
            time.sleep(HEALTH_POLL_S)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def raise_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, so ``finally`` blocks (and ``serve``) run.

    SIGTERM is how Prefect, docker and kubernetes cancel a run; by default it ends Python without
    unwinding. Call it once, from the main thread, at the start of a stage's entry point.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        # Further SIGTERMs must not interrupt the cleanup this one starts; SIGKILL still ends everything.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    _watchdog(*sys.argv[1:])
