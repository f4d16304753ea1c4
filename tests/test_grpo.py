"""RE (GRPO) for real on a CPU: the session's CT model (``store:<address>``) trained further on the two
passages it learned, with both rewards, generating with transformers (vLLM rollouts are GPU only: their
command and the refusal on a CPU are tested here, the runs under the ``gpu`` marker).

GRPO only moves the weights when the rewards of a prompt's completions differ. The base model never
answers in the format (all rewards 0) and a fully trained one always does; the CT model of the session,
sampled at temperature 1 with a 48-token budget, does sometimes: with the seeds fixed, the second step's
group has unequal rewards.
"""

from __future__ import annotations

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
