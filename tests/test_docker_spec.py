"""What the docker backend asks the engine for, built without one: GPUs as device requests (only for stages that
compute on an accelerator), /dev/shm for NCCL, the environment, the store's mount, the volume that holds model
caches and checkpoints. A real engine runs these specs in tests/test_docker.py (which also reads a running
container's host config back); GPUs cannot be granted here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from flows.docker_jobs import container_spec, device_requests
from schemas import SFTConfig, ValidateConfig
from schemas.jobs import WORK_DIR, DockerJob
from tasks.models import default_model_dir
from tasks.settings import Settings
from tasks.store import Store


def _gpus(count: int = 0, ids: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"Driver": "", "Count": count, "DeviceIDs": ids or [], "Capabilities": [["gpu"]], "Options": {}}]


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(0, []), ((), []), ("all", _gpus(-1)), (2, _gpus(2)), ((6, 7), _gpus(ids=["6", "7"]))],
)
def test_gpus_become_the_engines_device_requests(gpus: Any, expected: list[dict[str, Any]]) -> None:
    assert [dict(request) for request in device_requests(DockerJob(gpus=gpus))] == expected


def test_a_training_stage_gets_its_gpus_and_shared_memory(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    backend = DockerJob(gpus=(6, 7), shm_size="32g", env={"NCCL_DEBUG": "INFO"})
    spec = container_spec("sft", SFTConfig.preset("smoke", dataset="datasets/ner-cot"), store, backend)
    assert spec["image"] == backend.images.trainer
    assert [dict(r) for r in spec["device_requests"]] == _gpus(ids=["6", "7"])
    assert (spec["shm_size"], spec["network_mode"]) == ("32g", "host")
    assert spec["environment"]["NCCL_DEBUG"] == "INFO"
    assert spec["environment"]["RNER_STORE"] == store.url
    bound = [(m["Source"], m["Target"]) for m in spec["mounts"] if m["Type"] == "bind"]
    assert bound == [(store.url, store.url)]  # a local store is bound


def test_a_stage_that_only_talks_to_servers_asks_for_no_gpus(tmp_path: Path) -> None:
    spec = container_spec("validate", ValidateConfig(input="cot/x"), Store(tmp_path), DockerJob(gpus="all"))
    assert spec["device_requests"] == []
    assert spec["image"] == DockerJob().images.vllm


def written_locally(environment: dict[str, str]) -> dict[str, PurePosixPath]:
    """Where a stage in a container with ``environment`` writes big files: its training work directories (local
    checkpoints), the converted and fetched models, the Hugging Face cache."""
    settings = Settings(RNER_HOME=environment["RNER_HOME"])  # type: ignore[call-arg]
    return {
        "checkpoints": PurePosixPath(settings.home_dir / WORK_DIR / "models/ct/sft/abc/trainer/checkpoint-150"),
        "models": PurePosixPath(default_model_dir(settings)),
        "hf": PurePosixPath(environment["HF_HOME"]) / "hub",
    }


@pytest.mark.parametrize(("home", "kind"), [("rner-home", "volume"), ("/data/rner", "bind")])
def test_checkpoints_and_model_caches_are_on_a_volume(tmp_path: Path, home: str, kind: str) -> None:
    """Not in the container's writable layer, which an 8B run would grow by 100+ GB per checkpoint."""
    config = SFTConfig.preset("paper", dataset="datasets/ner-cot")
    spec = container_spec("sft", config, Store("s3://b/p"), DockerJob(home_volume=home))
    [mount] = spec["mounts"]
    assert (mount["Type"], mount["Source"], mount["Target"]) == (kind, home, "/var/lib/rner")
    assert (spec["environment"]["RNER_HOME"], spec["environment"]["HF_HOME"]) == ("/var/lib/rner", "/var/lib/rner/hf")
    for what, path in written_locally(spec["environment"]).items():
        assert path.is_relative_to(mount["Target"]), what
    assert DockerJob().home_volume == "rner-home"  # by default


def test_without_a_home_volume_nothing_is_mounted_there(tmp_path: Path) -> None:
    spec = container_spec("validate", ValidateConfig(input="x"), Store("s3://b/p"), DockerJob(home_volume=None))
    assert spec["mounts"] == []
    with pytest.raises(ValueError, match="mounts: /var/lib/rner is home_volume's"):
        DockerJob(mounts=["/data:/var/lib/rner"])
    assert DockerJob(home_volume=None, mounts=["/data:/var/lib/rner"]).mounts == ("/data:/var/lib/rner",)
