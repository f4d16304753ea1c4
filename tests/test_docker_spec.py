"""What the docker backend asks the engine for, built without one: GPUs as device requests (only for stages that
compute on an accelerator), /dev/shm for NCCL, the environment, the store's mount. A real engine runs these specs
in tests/test_docker.py (which also reads a running container's host config back); GPUs cannot be granted here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.docker_jobs import container_spec, device_requests
from schemas import SFTConfig, ValidateConfig
from schemas.jobs import DockerJob
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
    assert [(m["Source"], m["Target"]) for m in spec["mounts"]] == [(store.url, store.url)]  # a local store is bound


def test_a_stage_that_only_talks_to_servers_asks_for_no_gpus(tmp_path: Path) -> None:
    spec = container_spec("validate", ValidateConfig(input="cot/x"), Store(tmp_path), DockerJob(gpus="all"))
    assert spec["device_requests"] == []
    assert spec["image"] == DockerJob().images.vllm
