"""RE (GRPO) for real on a CPU: the session's CT model (``store:<address>``) trained further on the two
passages it learned, with both rewards, generating with transformers (vLLM rollouts are GPU only: their
command and the refusal on a CPU are tested here, the runs under the ``gpu`` marker).

GRPO only moves the weights when the rewards of a prompt's completions differ. The base model never
answers in the format (all rewards 0) and a fully trained one always does; the CT model of the session,
sampled at temperature 1 with a 48-token budget, does sometimes: with the seeds fixed, the second step's
group has unequal rewards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from schemas import Entity, GRPOConfig, NERExample
from tasks import grpo
from tasks.launch import ROLLOUT_GPUS_ENV
from tasks.prompts import ner_messages
from tasks.settings import Settings
from tasks.store import Published
from tasks.train_stage import Device, TrainError


def test_examples_carry_the_gold_to_the_rewards() -> None:
    text = "Ada Lovelace met Charles Babbage."
    ada = Entity(text="Ada Lovelace", label="person", start=0, end=12)
    example = NERExample(id="x", text=text, labels=["person", "MISC"], entities=[ada])
    row = grpo.grpo_example(example)
    assert row["prompt"] == ner_messages(text, ["person"])  # the paper's schema: catch-all labels dropped
    assert NERExample.model_validate_json(row["example"]) == example
    # A CT model trained on answers alone is asked for the answer alone (what the demo's RE does).
    assert grpo.grpo_example(example, with_cot=False)["prompt"] == ner_messages(text, ["person"], with_cot=False)
    assert ner_messages(text, ["person"], with_cot=False) != row["prompt"]


def test_rollout_server_command_and_its_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    paper = GRPOConfig.preset("paper")
    command = grpo.rollout_command(paper, "/models/ct", 8123)
    assert command == [
        sys.executable, "-m", "trl.scripts.vllm_serve", "--model", "/models/ct", "--host", "127.0.0.1",
        "--port", "8123", "--tensor_parallel_size", "2", "--dtype", "bfloat16", "--max_model_len", "6144",
    ]  # fmt: skip
    [problem] = grpo.rollout_problems(paper, Device(cuda=False))
    assert problem == "rollout: server needs a CUDA GPU (this machine has none) and the vllm package " + (
        "(pip install 'reasoning-ner[vllm]')"
    )
    gpu = Device(cuda=True, bf16=True, capability=(9, 0), packages=frozenset({"vllm"}))
    assert grpo.rollout_problems(paper, gpu) == []
    assert grpo.rollout_problems(GRPOConfig.preset("smoke"), Device(cuda=False)) == []  # transformers rollouts
    monkeypatch.delenv(ROLLOUT_GPUS_ENV, raising=False)
    with (
        pytest.raises(TrainError, match="rollout: server needs its GPUs in RNER_ROLLOUT_GPUS"),
        grpo.rollout_server(paper, "/models/ct"),
    ):
        pytest.fail("no server without its GPUs")
    with pytest.raises(ValueError, match="rollout_gpus > 0 goes with rollout: server"):
        GRPOConfig.preset("paper", rollout="colocate")


ROLLOUT_WORKER = """\
import json, os, socket, subprocess, sys
from contextlib import contextmanager

# A torch.distributed world of its own, as vLLM's workers make one: on a free port, one process, 5 s to connect.
OWN_WORLD = (
    "import datetime, sys, torch.distributed as d; d.init_process_group('gloo', init_method=sys.argv[1], rank=0, "
    "world_size=1, timeout=datetime.timedelta(seconds=5))"
)


def starts_its_own_world(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", OWN_WORLD, f"tcp://127.0.0.1:{port}"]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0


if os.environ["RANK"] == "0":  # the process that starts the server (tasks.grpo.run)
    from schemas import GRPOConfig
    from tasks import grpo

    started = []

    @contextmanager
    def run_server(command, env, **kwargs):
        started.append({"command": command, "env": env})
        yield

    grpo.run_server = run_server
    with grpo.rollout_server(GRPOConfig.preset("paper"), "/models/ct") as url:
        pass
    seen = {"worker": dict(os.environ), "url": url, **started[0]}
    if sys.argv[2:] == ["own-world"]:
        seen["own_world"] = {"server": starts_its_own_world(seen["env"]), "worker": starts_its_own_world(os.environ)}
    with open(sys.argv[1], "w") as out:
        json.dump(seen, out)
"""


def rollout_server_under_torchrun(tmp_path: Path, *args: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(the environment torchrun's workers start from, what the first of 2 workers saw: its environment, the
    rollout server's command and environment), as the launcher runs GRPO; ``own-world``: and whether a
    torch.distributed world of its own starts in the server's environment and in the worker's."""
    script, result = tmp_path / "worker.py", tmp_path / "server.json"
    script.write_text(ROLLOUT_WORKER)
    parent = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun sets it for 2 processes
    parent |= {"HF_HOME": "/cache/hf", "AWS_SECRET_ACCESS_KEY": "secret", ROLLOUT_GPUS_ENV: "6,7"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, str(script), str(result), *args], env=parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return parent, json.loads(result.read_text())


def test_the_rollout_server_gets_the_workers_environment_without_torchruns(tmp_path: Path) -> None:
    """``trl vllm-serve`` started from a real torchrun worker: none of what torchrun set for the trainers
    (TORCHELASTIC_USE_AGENT_STORE=True, RANK, MASTER_PORT, ...) reaches it; the rest does."""
    parent, seen = rollout_server_under_torchrun(tmp_path)
    added = {k for k, v in seen["worker"].items() if parent.get(k) != v}  # what torchrun set in the worker
    assert {
        "TORCHELASTIC_USE_AGENT_STORE",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "MASTER_PORT",
        "OMP_NUM_THREADS",
    } <= added
    env = seen["env"]
    assert {k: env[k] for k in added if k in env} == {}
    assert env["CUDA_VISIBLE_DEVICES"] == "6,7"  # the rollout GPUs, not the trainers'
    kept = ("HF_HOME", "AWS_SECRET_ACCESS_KEY", "PATH")
    assert {k: env[k] for k in kept} == {k: parent[k] for k in kept}
    assert seen["command"][:3] == [sys.executable, "-m", "trl.scripts.vllm_serve"]
    assert seen["url"] == f"http://127.0.0.1:{seen['command'][seen['command'].index('--port') + 1]}"


@pytest.mark.slow
def test_in_the_workers_environment_a_world_of_its_own_never_starts(tmp_path: Path) -> None:
    """Why: with torchrun's TORCHELASTIC_USE_AGENT_STORE=True, torch.distributed's tcp:// rendezvous connects to
    its store as a client, expecting torchrun's agent to host it; vLLM's workers would wait there forever (5 s
    here). In the rollout server's environment the same world starts at once."""
    _, seen = rollout_server_under_torchrun(tmp_path, "own-world")
    assert seen["own_world"] == {"server": True, "worker": False}


def test_rollout_env_drops_every_torchrun_variable() -> None:
    worker = {
        "PATH": "/usr/bin", "HF_HOME": "/var/lib/rner/hf", "NCCL_DEBUG": "INFO", ROLLOUT_GPUS_ENV: "6,7",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "6",
        "LOCAL_WORLD_SIZE": "6", "GROUP_RANK": "0", "ROLE_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
        "OMP_NUM_THREADS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "abc",
        "TORCHELASTIC_ERROR_FILE": "/tmp/error.json", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }  # fmt: skip
    assert grpo.rollout_env(worker) == {
        "PATH": "/usr/bin", "HF_HOME": "/var/lib/rner/hf", "NCCL_DEBUG": "INFO", ROLLOUT_GPUS_ENV: "6,7",
        "CUDA_VISIBLE_DEVICES": "6,7",
    }  # fmt: skip
    with pytest.raises(TrainError, match="rollout: server needs its GPUs in RNER_ROLLOUT_GPUS"):
        grpo.rollout_env({"PATH": "/usr/bin"})


@pytest.mark.slow
def test_grpo_smoke(
    sft_model: Published,
    training_data: Any,
    train_settings: Settings,
    log_history: Callable[..., list[dict[str, Any]]],
    model_weights: Callable[..., dict[str, torch.Tensor]],
) -> None:
    store = training_data.store
    config = GRPOConfig.preset(
        "smoke",
        dataset=training_data.re.manifest.address,
        model=f"store:{sft_model.manifest.address}",
        learning_rate=1e-5,
    )  # G = 4, one prompt per step, 48 new tokens, two steps
    published = grpo.run(config, store, settings=train_settings)
    manifest = published.manifest
    assert (manifest.kind, manifest.stage) == ("model", "grpo") and manifest.address.startswith("models/re/grpo/")
    assert manifest.inputs == (training_data.re.ref, sft_model.ref)  # data and the CT model it started from
    assert manifest.stats["global_step"] == 2 and manifest.stats["trained"] == 2
    steps = [h for h in log_history(store, published) if "reward" in h]
    assert len(steps) == 2
    for h in steps:  # both rewards logged, combined 10 : 1
        f1, schema = h["rewards/f1_reward/mean"], h["rewards/schema_reward/mean"]
        assert 0 <= f1 <= 1 and 0 <= schema <= 1
        assert h["reward"] == pytest.approx(10 * f1 + schema)
    assert any(h["reward_std"] > 0 for h in steps)  # some group had unequal rewards: something to learn
    before, after = model_weights(store, sft_model), model_weights(store, published)
    assert any(not torch.equal(before[name], after[name]) for name in before)


@pytest.mark.slow
def test_grpo_refuses_bad_input(sft_model: Published, training_data: Any, train_settings: Settings) -> None:
    store = training_data.store
    smoke = GRPOConfig.preset("smoke", dataset=training_data.re.manifest.address)
    with pytest.raises(TrainError, match=r"is a 'cot' output; grpo trains on a 'ner' dataset"):
        grpo.run(
            smoke.model_copy(update={"dataset": training_data.cot.manifest.address}), store, settings=train_settings
        )
    with pytest.raises(TrainError, match="2 of 2 examples have a prompt longer than 32 tokens"):
        grpo.run(smoke.model_copy(update={"max_prompt_length": 32, "too_long": "fail"}), store, settings=train_settings)
    if not Device.detect().cuda:
        server = GRPOConfig.preset("paper", dataset=training_data.re.manifest.address)
        with pytest.raises(TrainError, match=r"(?s)rollout: server needs a CUDA GPU"):
            grpo.run(server, store, settings=train_settings)


# --- GPU: vLLM rollouts -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("rollout", ["colocate", "server"])
def test_grpo_with_vllm_rollouts(
    rollout: str, training_data: Any, default_model: Path, launcher: Any, tmp_path: Path
) -> None:
    if rollout == "server" and torch.cuda.device_count() < 2:
        pytest.skip("a rollout server needs a GPU of its own beside the training one")
    config = GRPOConfig.preset(
        "smoke",
        dataset=training_data.re.manifest.address,
        model=str(default_model),
        rollout=rollout,
        rollout_gpus=1 if rollout == "server" else 0,
        bf16=True,
        max_completion_length=64,
    )
    process = launcher.start("grpo", config, training_data.store, tmp_path)
    final = launcher.published(process, training_data.store).manifest.stats["final"]
    assert "rewards/f1_reward/mean" in final
    print(f"GPU GRPO ({rollout} rollouts): seconds per step", final["step_time"])
