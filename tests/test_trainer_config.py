"""Every preset value reaches the trainer.

For each preset of SFT and GRPO (``paper``, ``paper-1.7b``, ``smoke``), the ``trl.SFTConfig`` / ``trl.GRPOConfig``
the stage builds (``sft_arguments`` / ``grpo_arguments``, the functions its ``run`` calls), built here on a CPU for
the machine the preset is for: an H100 for the paper presets (``Device`` describes it; transformers' own check of
bf16 against this machine's GPU is answered for it), this CPU for ``smoke``. Two arguments cannot be built in one
CPU test process and are checked as what they are: ``ddp_backend`` (NCCL across the job's processes) and
``deepspeed`` (its construction imports the GPU-only deepspeed package), whose config is resolved against the built
arguments by transformers' own ``HfTrainerDeepSpeedConfig`` logic, as the trainer resolves it. The values checked are
the ones the trainers read: ours, and the TRL defaults the experiment relies on (which the released code's TRL had
too). The fixture's ``trainer`` rows (released file and line for each) are checked here as well.

The SFT stage's own tokenization (``padding_free``, ``truncate_left``) is checked against what SFTTrainer builds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transformers
import trl
from accelerate.state import AcceleratorState
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from datasets import Dataset
from test_released_config import TABLE, released_value
from transformers.integrations.deepspeed import (
    HfTrainerDeepSpeedConfig,
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)
from transformers.trainer_utils import SchedulerType

from schemas import GRPOConfig, NERExample, SFTConfig, TrainConfig
from tasks import grpo, sft
from tasks.train_stage import OPTIONAL_PACKAGES, Device, TrainError

H100 = Device(cuda=True, bf16=True, capability=(9, 0), packages=frozenset(OPTIONAL_PACKAGES))
CPU = Device(cuda=False)
PRESETS = ("paper", "paper-1.7b", "smoke")
CONFIGS: dict[str, type[TrainConfig]] = {"sft": SFTConfig, "grpo": GRPOConfig}
SERVER = "http://127.0.0.1:8000"


class Built:
    """What a stage gives its trainer for one preset: the TRL config, the DeepSpeed config as resolved against it,
    and the two arguments a one-process CPU test cannot pass to TRL (checked as values)."""

    def __init__(self, stage: str, preset: str, workdir: Path) -> None:
        self.config = CONFIGS[stage].preset(preset)
        device = CPU if preset == "smoke" else H100
        if stage == "sft":
            arguments = sft.sft_arguments(self.config, device, workdir)  # type: ignore[arg-type]
        else:
            server = SERVER if self.config.rollout == "server" else None  # type: ignore[attr-defined]
            arguments = grpo.grpo_arguments(self.config, device, workdir, server)  # type: ignore[arg-type]
        self.arguments = dict(arguments)
        self.ddp_backend = arguments.pop("ddp_backend")
        deepspeed = arguments.pop("deepspeed")
        self.args = (trl.SFTConfig if stage == "sft" else trl.GRPOConfig)(**arguments)
        self.deepspeed = resolved_deepspeed(deepspeed, self.args) if deepspeed else None


class _ResolvedDeepSpeed(HfTrainerDeepSpeedConfig, HfDeepSpeedConfig):
    """transformers' trainer-side DeepSpeed config on accelerate's base class (what transformers' own base is when
    the deepspeed package is installed), so that it can be built without that package."""

    def __init__(self, config: dict[str, Any]) -> None:
        HfDeepSpeedConfig.__init__(self, config)
        self._dtype = None
        self.mismatches: list[str] = []


def resolved_deepspeed(config: dict[str, Any], args: Any) -> _ResolvedDeepSpeed:
    """``config`` with its ``auto`` values filled from ``args``, as ``TrainingArguments`` does on a GPU machine."""
    resolved = _ResolvedDeepSpeed(copy.deepcopy(config))
    resolved.trainer_config_process(args)
    assert not resolved.mismatches, resolved.mismatches
    return resolved


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Built]]:
    """The trainer configs of every preset, built once; the process's accelerate state reset before and after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)  # the H100's answer
        AcceleratorState._reset_state(reset_partial_state=True)
        try:
            yield {
                (stage, preset): Built(stage, preset, tmp_path_factory.mktemp(f"{stage}-{preset}"))
                for stage in CONFIGS
                for preset in PRESETS
            }
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)


# --- what both trainers read ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", CONFIGS)
@pytest.mark.parametrize("preset", PRESETS)
def test_the_training_arguments_are_the_presets(built: dict[tuple[str, str], Built], stage: str, preset: str) -> None:
    b = built[stage, preset]
    c, args = b.config, b.args
    assert args.learning_rate == c.learning_rate
    assert args.lr_scheduler_type == SchedulerType(c.lr_scheduler)
    assert args.warmup_steps == c.warmup_ratio and args.get_warmup_steps(1000) == round(1000 * c.warmup_ratio)
    assert (args.weight_decay, args.max_grad_norm) == (c.weight_decay, c.max_grad_norm)
    assert (args.num_train_epochs, args.max_steps) == (c.epochs, c.max_steps or -1)
    assert args.per_device_train_batch_size == c.per_device_batch_size
    assert args.gradient_accumulation_steps == c.gradient_accumulation_steps
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * c.parallel.world_size == (
        c.global_batch_size
    )
    assert (args.bf16, args.gradient_checkpointing, args.use_liger_kernel) == (
        c.bf16, c.gradient_checkpointing, c.liger_kernel,
    )  # fmt: skip
    if c.gradient_checkpointing:
        assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.model_init_kwargs == {
        "dtype": "bfloat16" if c.bf16 else "float32",
        "attn_implementation": "flash_attention_2" if c.flash_attention else "sdpa",
    }
    assert (args.seed, args.logging_steps, args.save_total_limit) == (c.seed, c.logging_steps, 1)
    assert args.save_strategy == ("steps" if c.save_steps else "no") and (
        not c.save_steps or args.save_steps == c.save_steps
    )
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]
    assert b.ddp_backend == ("nccl" if c.parallel.world_size > 1 else None)
    # AdamW, as in the released code: transformers 5's default is the fused kernel of the same update
    assert (args.optim, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == ("adamw_torch_fused", 0.9, 0.999, 1e-8)
    assert args.use_cpu == (preset == "smoke")


@pytest.mark.parametrize("stage", CONFIGS)
@pytest.mark.parametrize("preset", ["paper", "paper-1.7b"])
def test_the_deepspeed_config_is_the_released_zero3(
    built: dict[tuple[str, str], Built], stage: str, preset: str
) -> None:
    """config/accelerate_config/deepspeed_zero3.yaml: stage 3, no offload, bf16, the 16-bit model saved whole
    (zero3_save_16bit_model), and the model built partitioned (zero3_init_flag: transformers builds it under
    ``deepspeed.zero.Init`` when a stage-3 config is alive as the trainer loads the model)."""
    b = built[stage, preset]
    ds = b.deepspeed
    assert ds is not None and ds.is_zero3() and not ds.is_offload()
    zero = ds.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_param" not in zero and "offload_optimizer" not in zero
    assert ds.config["bf16"] == {"enabled": True} and ds.dtype().__repr__() == "torch.bfloat16"
    assert ds.config["train_micro_batch_size_per_gpu"] == b.config.per_device_batch_size
    assert ds.config["gradient_accumulation_steps"] == b.config.gradient_accumulation_steps
    assert ds.config["gradient_clipping"] == b.config.max_grad_norm
    # train_batch_size is the test process's (one process); the job's is the global batch:
    assert ds.config["train_batch_size"] * b.config.parallel.world_size == b.config.global_batch_size
    set_hf_deepspeed_config(ds)
    try:
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()


def test_smoke_runs_without_deepspeed(built: dict[tuple[str, str], Built]) -> None:
    assert built["sft", "smoke"].deepspeed is None and built["grpo", "smoke"].deepspeed is None


@pytest.mark.parametrize("row", TABLE["trainer"], ids=lambda r: f"{r['config']}-{r['preset']}-{r['arg']}")
def test_the_trainer_carries_the_released_trainer_values(
    built: dict[tuple[str, str], Built], row: dict[str, Any]
) -> None:
    b = built[row["config"], row["preset"]]
    if row["arg"].startswith("deepspeed."):
        assert b.deepspeed is not None
        value: Any = b.deepspeed.config
        for part in row["arg"].split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
    else:
        value = getattr(b.args, row["arg"])
    assert value == row["value"] == released_value(row), f"{row['file']}:{row['line']}"


# --- GRPO ----------------------------------------------------------------------------------------------

TRL_DEFAULTS_RELIED_ON = {
    "scale_rewards": "group",  # the released TRL's scale_rewards=True: advantages / the group's std
    "multi_objective_aggregation": "sum_then_normalize",  # weighted sum of the rewards, then the group's advantage
    "top_p": 1.0,
    "top_k": 0,  # no top-k (the released TRL spelt it None)
    "min_p": None,
    "repetition_penalty": 1.0,
    "generation_kwargs": None,
    "mask_truncated_completions": False,
    "importance_sampling_level": "token",
    "delta": None,
    "top_entropy_quantile": 1.0,
    "off_policy_mask_threshold": None,
    "entropy_coef": 0.0,
    "sync_ref_model": False,
    "disable_dropout": False,
    "cast_lm_head_to_fp32": False,
    "shuffle_dataset": True,
    "log_completions": False,
    "ds3_gather_for_generation": True,
}
"""TRL 1.16 defaults the presets rely on: each is what the released code's TRL did too (no such option there, or
the same default)."""


@pytest.mark.parametrize("preset", PRESETS)
def test_the_grpo_trainer_reads_the_presets_values(built: dict[tuple[str, str], Built], preset: str) -> None:
    b = built["grpo", preset]
    c, args = b.config, b.args
    assert isinstance(c, GRPOConfig)
    assert (args.loss_type, args.num_iterations, args.temperature, args.beta) == (
        c.loss_type, c.num_iterations, c.temperature, c.beta,
    )  # fmt: skip
    assert (args.epsilon, args.epsilon_high or args.epsilon) == (c.epsilon, c.epsilon_high or c.epsilon)
    assert (args.num_generations, args.max_completion_length) == (c.num_generations, c.max_completion_length)
    assert args.reward_weights == [c.f1_reward_weight, c.schema_reward_weight]
    assert args.vllm_importance_sampling_correction is c.importance_sampling_correction
    assert args.use_bias_correction_kl is c.kl_bias_correction
    # one generation batch per optimizer step, reused num_iterations times: the global batch of completions
    assert args.steps_per_generation == args.gradient_accumulation_steps
    assert args.generation_batch_size // args.world_size * c.parallel.world_size == c.global_batch_size
    assert args.use_vllm is (c.rollout != "transformers")
    if c.rollout == "server":
        assert (args.vllm_mode, args.vllm_server_base_url) == ("server", SERVER)
    assert args.vllm_max_model_length == c.max_prompt_length + c.max_completion_length
    for name, value in TRL_DEFAULTS_RELIED_ON.items():
        assert getattr(args, name) == value, name


def test_the_paper_grpo_trainer_is_the_released_one(built: dict[tuple[str, str], Built]) -> None:
    for preset in ("paper", "paper-1.7b"):
        args = built["grpo", preset].args
        assert (args.loss_type, args.epsilon, args.epsilon_high, args.num_iterations) == ("dr_grpo", 0.2, 0.28, 4)
        assert (args.temperature, args.beta, args.num_generations, args.max_completion_length) == (0.9, 0.04, 16, 4096)
        assert (args.lr_scheduler_type, args.warmup_steps, args.learning_rate) == (SchedulerType.COSINE, 0.1, 1e-6)
        assert not args.vllm_importance_sampling_correction and not args.use_bias_correction_kl
        assert args.model_init_kwargs["attn_implementation"] == "flash_attention_2"
    assert (
        built["grpo", "paper"].args.per_device_train_batch_size,
        built["grpo", "paper"].args.gradient_accumulation_steps,
    ) == (4, 16)
    small = built["grpo", "paper-1.7b"].args
    assert (small.per_device_train_batch_size, small.gradient_accumulation_steps) == (16, 4)


def test_the_rewards_score_an_empty_answer_to_an_empty_gold_as_the_preset_says() -> None:
    example = NERExample(id="x", text="Nothing to find here.", labels=["person"], entities=[]).model_dump_json()
    for preset, expected in (("paper", 0.0), ("paper-1.7b", 0.0), ("smoke", 1.0)):
        f1, schema = grpo.reward_functions(GRPOConfig.preset(preset))
        assert f1(['{"entities": {}}'], example=[example]) == [expected], preset
        assert schema(['{"entities": {}}'], example=[example]) == [1.0]


def test_the_released_split_reaches_the_trainer(tmp_path: Path) -> None:
    config = GRPOConfig.preset("paper", released_split=True)
    arguments = grpo.grpo_arguments(config, H100, tmp_path, SERVER)
    assert (arguments["per_device_train_batch_size"], arguments["gradient_accumulation_steps"]) == (4, 16)
    assert config.parallel.world_size == 7 and "--tensor_parallel_size 1 " in " ".join(
        grpo.rollout_command(config, "/m", 1)
    )


# --- SFT -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_the_sft_trainer_reads_the_presets_values(built: dict[tuple[str, str], Built], preset: str) -> None:
    b = built["sft", preset]
    c, args = b.config, b.args
    assert isinstance(c, SFTConfig)
    assert (args.padding_free, args.packing) == (c.padding_free, c.packing)
    # the stage cuts what it tokenizes itself (padding-free, truncate_left); TRL cuts the rest, keeping their start
    assert args.max_length == (None if sft.tokenizes_itself(c) else c.max_seq_len)
    assert args.truncation_mode == "keep_start"
    assert (args.loss_type, args.completion_only_loss, args.assistant_only_loss) == ("nll", None, False)
    assert args.dataset_kwargs is None  # TRL prepares the dataset (tokenized rows keep their labels as they are)


def test_the_paper_sft_trainer_is_the_released_one(built: dict[tuple[str, str], Built]) -> None:
    for preset, per_device, accumulation in (("paper", 16, 2), ("paper-1.7b", 32, 1)):
        args = built["sft", preset].args
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (per_device, accumulation)
        assert (args.lr_scheduler_type, args.warmup_steps, args.learning_rate) == (SchedulerType.COSINE, 0.03, 2e-5)
        assert (args.num_train_epochs, args.padding_free, args.use_liger_kernel, args.max_length) == (
            5,
            True,
            True,
            None,
        )
        assert sft.tokenizes_itself(built["sft", preset].config)


class _Template:
    """A tokenizer whose chat template is one token per character (``<u>``/``<a>`` turn markers): enough to check
    which tokens are masked and where a cut falls."""

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, tokenize: bool, return_dict: bool, add_generation_prompt: bool = False
    ) -> dict[str, list[int]]:
        text = "".join(f"{'U' if m['role'] == 'user' else 'A'}{m['content']}." for m in messages)
        return {"input_ids": [ord(ch) for ch in text + ("A" if add_generation_prompt else "")]}


def test_the_stage_tokenizes_as_sftrainer_and_cuts_as_released() -> None:
    row = {"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "xyz"}]}
    tokens = sft.tokenized_example(row, _Template())
    assert "".join(map(chr, tokens["input_ids"])) == "Uab.Axyz."
    assert tokens["labels"] == [-100] * 5 + [ord(ch) for ch in "xyz."]  # the prompt and the generation prompt masked
    longer = sft.tokenized_example({**row, "prompt": [{"role": "user", "content": "a" * 9}]}, _Template())
    rows = Dataset.from_list([tokens, longer])
    kept, masked = sft.cut(rows, 6, "truncate_left")  # the last six tokens, as the released sft.py:116 keeps
    assert masked == 0 and ["".join(map(chr, ids)) for ids in kept["input_ids"]] == [".Axyz.", ".Axyz."]
    assert kept["labels"] == [tokens["labels"][-6:], longer["labels"][-6:]]
    kept, masked = sft.cut(rows, 6, "truncate")  # the first six: the second example's are all prompt
    assert masked == 1 and len(kept) == 1
    with pytest.raises(TrainError, match="no examples left to train on once cut to 2 tokens"):
        sft.cut(rows, 2, "truncate")


def test_paper_prompts_end_with_the_tokenizers_eos_as_the_released_code_does() -> None:
    row = {"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "xy"}]}
    tokenizer = _Template()
    tokenizer.eos_token_id = ord("$")  # type: ignore[attr-defined]
    plain = sft.tokenized_example(row, tokenizer)
    ended = sft.tokenized_example(row, tokenizer, eos=True)
    assert ended["input_ids"] == [*plain["input_ids"], ord("$")] and ended["labels"] == [*plain["labels"], ord("$")]
    tokenizer.eos_token_id = ord(".")  # the template's last token: not added twice
    assert sft.tokenized_example(row, tokenizer, eos=True) == plain
    paper = SFTConfig.preset("smoke", dataset="d", prompt="paper")
    assert sft.tokenizes_itself(paper) and not sft.tokenizes_itself(SFTConfig.preset("smoke", dataset="d"))


@pytest.mark.slow
def test_the_stage_tokenizes_exactly_as_sftrainer(tiny_model: Path, tmp_path: Path) -> None:
    """The tokens and labels the stage builds equal the ones SFTTrainer builds from the same conversation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = {
        "prompt": [{"role": "user", "content": "Find the people: Ada met Charles."}],
        "completion": [{"role": "assistant", "content": '<think>\nAda, Charles.\n</think>\n{"entities": {}}'}],
    }
    args = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None)
    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=Dataset.from_list([row]),
        processing_class=tokenizer,
    )  # fmt: skip
    prepared = trainer.train_dataset[0]
    ours = sft.tokenized_example(row, tokenizer)
    assert ours["input_ids"] == prepared["input_ids"] and ours["labels"] == prepared["labels"]
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ours["labels"].count(-100) == len(prompt)


@pytest.mark.slow
def test_sft_trains_on_the_last_tokens_of_over_long_examples(
    training_data: Any, sft_smoke: Any, train_settings: Any, tiny_model: Path
) -> None:
    """``too_long: truncate_left`` through the trainer (on a CPU: the stage's own tokens, as with padding_free)."""
    config = sft_smoke(model=str(tiny_model), too_long="truncate_left", max_seq_len=64, max_steps=2)
    published = sft.run(config, training_data.store, settings=train_settings)
    stats = published.manifest.stats
    assert (stats["too_long"], stats["too_long_policy"], stats["trained"], stats["fully_masked"]) == (
        2, "truncate_left", 2, 0,
    )  # fmt: skip
    assert stats["final"]["step"] == 2 and stats["tokens"] == 2 * 64
