"""The launcher: commands for N processes x M nodes with GPUs split between training and rollouts, and the
SFT step run for real through it, on this CPU machine with gloo, as 2 processes on one node and as 2 "nodes"
x 1 process that meet at a c10d rendezvous on 127.0.0.1 (the multi-node code path: each node has its own
RNER_HOME, so its own work directory, as separate machines would).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from schemas import GRPOConfig, SFTConfig, config_hash
from tasks.launch import ROLLOUT_GPUS_ENV, LaunchError, plan
from tasks.serving import free_port
from tasks.store import Published, Store

PY = sys.executable
ARGS = ["--config", "x.yaml"]


def sft(**fields: Any) -> SFTConfig:
    return SFTConfig.model_validate({"dataset": "d", "global_batch_size": 8, **fields})


# --- commands -------------------------------------------------------------------------------------------


def test_one_process_runs_the_stage_module() -> None:
    assert plan("sft", sft(), ARGS, []).command == [PY, "-m", "tasks.sft", *ARGS]
    assert plan("grpo", GRPOConfig(dataset="d"), ARGS, []).command == [PY, "-m", "tasks.grpo", *ARGS]


def test_processes_on_one_node_use_a_standalone_rendezvous() -> None:
    job = plan("sft", sft(parallel={"processes_per_node": 2}), ARGS, [])
    assert job.command == [
        PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--standalone",
        "--redirects", "1:1", "-m", "tasks.sft", *ARGS,
    ]  # fmt: skip
    assert job.env == {}  # a CPU node: gloo, no GPUs to hand out
    deepspeed = plan("sft", sft(deepspeed_zero=3), ARGS, ["0"])
    assert "--standalone" in deepspeed.command and deepspeed.env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_nodes_meet_at_the_c10d_rendezvous() -> None:
    config = sft(parallel={"num_nodes": 2, "processes_per_node": 4, "rdzv_endpoint": "node0:29400"})
    job = plan("sft", config, ARGS, [])
    assert job.command[3:13] == [
        "--nnodes", "2", "--nproc-per-node", "4",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29400", "--rdzv-id", config_hash(config)[:16],
    ]  # fmt: skip
    with pytest.raises(LaunchError, match=r"2 nodes need parallel\.rdzv_endpoint"):
        plan("sft", sft(parallel={"num_nodes": 2}), ARGS, [])


def test_rollout_gpus_are_kept_from_the_trainers() -> None:
    paper = GRPOConfig.preset("paper")  # 6 training processes + 2 rollout GPUs
    job = plan("grpo", paper, ARGS, [str(i) for i in range(8)])
    assert job.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5", ROLLOUT_GPUS_ENV: "6,7"}
    assert job.command[job.command.index("--nproc-per-node") + 1] == "6"
    assert job.command[job.command.index("--redirects") + 1] == "1:1,2:1,3:1,4:1,5:1"
    small = GRPOConfig.preset("paper", global_batch_size=32, parallel={"processes_per_node": 2}, rollout_gpus=1)
    assert plan("grpo", small, ARGS, ["3", "4", "5", "6"]).env == {"CUDA_VISIBLE_DEVICES": "3,4", ROLLOUT_GPUS_ENV: "6"}
    with pytest.raises(LaunchError, match=r"6 processes per node need one GPU each; this node has 4 for training"):
        plan("grpo", paper, ARGS, [str(i) for i in range(6)])
    with pytest.raises(LaunchError, match="rollout_gpus 2 leaves none of this node's 2 GPU"):
        plan("grpo", paper, ARGS, ["0", "1"])
    with pytest.raises(LaunchError, match="rollout_gpus 2: this node has no GPU"):
        plan("grpo", paper, ARGS, [])


def test_launch_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "sft.yaml"
    bad.write_text("preset: huge\n")
    result = subprocess.run([PY, "-m", "tasks.launch", "sft", "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "sft.yaml" in result.stderr
    assert "SFTConfig has no preset 'huge' (known: paper, paper-1.7b, smoke)" in result.stderr
    assert "Traceback" not in result.stderr


# --- the SFT step, distributed for real on this CPU -------------------------------------------------------


@pytest.fixture(scope="module")
def step_config(sft_smoke: Callable[..., SFTConfig], tiny_model: Path) -> Callable[..., SFTConfig]:
    """One optimizer step over both passages, one per process, of a tiny model (the mechanics are the point)."""
    return lambda **parallel: sft_smoke(model=str(tiny_model), global_batch_size=2, max_steps=1, parallel=parallel)


@pytest.fixture(scope="module")
def two_processes(
    training_data: Any, step_config: Callable[..., SFTConfig], launcher: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Store, Published]:
    tmp = tmp_path_factory.mktemp("two-processes")
    store = Store(tmp / "store")
    training_data.publish(store)
    return store, launcher.published(
        launcher.start("sft", step_config(processes_per_node=2), store, tmp / "home"), store
    )


@pytest.mark.slow
def test_sft_step_as_two_processes(
    two_processes: tuple[Store, Published], tiny_model: Path, model_weights: Callable[..., dict[str, torch.Tensor]]
) -> None:
    store, published = two_processes
    stats = published.manifest.stats
    assert (stats["world_size"], stats["global_step"], stats["trained"]) == (2, 1, 2)
    trained = model_weights(store, published)
    base = load_file(tiny_model / "model.safetensors")
    assert any(not torch.equal(trained[name], base[name]) for name in base)


@pytest.mark.slow
def test_sft_step_as_two_nodes_at_a_rendezvous(
    training_data: Any,
    step_config: Callable[..., SFTConfig],
    two_processes: tuple[Store, Published],
    launcher: Any,
    tmp_path: Path,
    model_weights: Callable[..., dict[str, torch.Tensor]],
) -> None:
    store = Store(tmp_path / "store")
    training_data.publish(store)
    config = step_config(num_nodes=2, processes_per_node=1, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    nodes = [launcher.start("sft", config, store, tmp_path / f"node{i}") for i in range(2)]
    first, second = (launcher.published(node, store) for node in nodes)
    assert first == second  # both nodes ran to the end and report the one output
    published = first
    assert published.manifest.stats["world_size"] == 2
    # The same step as on one node with two processes: same data split, same averaged gradient, same weights.
    reference_store, reference = two_processes
    ours, theirs = model_weights(store, published), model_weights(reference_store, reference)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
