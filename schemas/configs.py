"""Stage configurations, one per stage, with the paper's values as the ``paper`` preset.

Every stage reads one of these (``python -m tasks.<stage> --config X.yaml``; a YAML file may start from
a preset with ``preset: paper`` and override single fields). ``smoke`` presets run on a CPU in about a
minute with the embedded default model. Fields listed in ``VOLATILE`` do not change a stage's output
(concurrency, timeouts, where a server runs) and are left out of the config hash.

Model references (``model: str``) accept ``default`` (the embedded SmolLM2-135M-Instruct), a local
model directory, a hub id, or an ``s3://`` prefix holding a model directory.

Usage::

    cfg = SFTConfig.preset("paper", dataset="datasets/ner-cot/v3")
    cfg = SFTConfig.model_validate(yaml.safe_load(text))
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, SecretStr, model_validator

from schemas.base import Config, Name, Seq
from schemas.records import SamplingParams

DEFAULT_MODEL = "default"

PAPER_BACKBONE = "Qwen/Qwen3-8B-Base"
PAPER_TEACHER = "deepseek-ai/DeepSeek-R1"
PAPER_JUDGE = "Qwen/Qwen3-32B"


class Endpoint(Config):
    """A running OpenAI-compatible server (vLLM, SGLang, a hosted API)."""

    VOLATILE = frozenset({"base_url", "api_key"})
    kind: Literal["endpoint"] = "endpoint"
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    model: Name
    """The model name the server knows (vLLM's ``--served-model-name``)."""
    api_key: SecretStr | None = None


class VLLMLaunch(Config):
    """A vLLM OpenAI server the stage starts itself, waits for, and always stops."""

    VOLATILE = frozenset(
        {
            "gpu_ids",
            "port",
            "extra_args",
            "python",
            "image",
            "startup_timeout_s",
            "tensor_parallel_size",
            "data_parallel_size",
            "kv_cache_gib",
        }
    )
    kind: Literal["vllm"] = "vllm"
    model: Name = DEFAULT_MODEL
    served_name: Name | None = None
    tensor_parallel_size: PositiveInt = 1
    data_parallel_size: PositiveInt = 1
    gpu_ids: Seq[NonNegativeInt] = ()
    max_model_len: PositiveInt = 2048
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    """0 picks a free port."""
    extra_args: Seq[str] = ()
    python: str | None = None
    """Interpreter of the vLLM environment; ``None`` uses the project's managed vLLM virtualenv."""
    image: str | None = None
    """Container image to run the server in instead of a local interpreter."""
    kv_cache_gib: PositiveFloat = 2.0
    """KV cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPU."""
    startup_timeout_s: PositiveFloat = 900.0


class TransformersRunner(Config):
    """Generation in-process with transformers: for small local runs without a server."""

    VOLATILE = frozenset({"batch_size", "device"})
    kind: Literal["transformers"] = "transformers"
    model: Name = DEFAULT_MODEL
    batch_size: PositiveInt = 8
    device: Literal["auto", "cpu", "cuda"] = "auto"


Server = Annotated[Endpoint | VLLMLaunch, Field(discriminator="kind")]
Generator = Annotated[Endpoint | VLLMLaunch | TransformersRunner, Field(discriminator="kind")]


class LLMStage(Config):
    """What every stage that sends requests to an LLM server shares.

    ``input`` is where the stage reads from; the output is pinned to the input's content by digest, so
    the address itself is not part of the config hash. ``shard_size`` is: shard boundaries are part of
    what a resumed run must find again.
    """

    VOLATILE = frozenset({"input", "concurrency", "request_timeout_s", "max_retries"})
    input: Name | None = None
    sampling: SamplingParams = SamplingParams()
    shard_size: PositiveInt = 64
    concurrency: PositiveInt = 64
    request_timeout_s: PositiveFloat = 600.0
    max_retries: NonNegativeInt = 5


_R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}
_SMOKE_LLM = {"shard_size": 8, "concurrency": 16, "request_timeout_s": 120.0}


class AnnotateConfig(LLMStage):
    """CG step 1: a teacher LLM writes reasoning and entities for each passage.

    ``input``: a prefix in the store holding raw passage JSONL files (``Passage`` lines), or the address
    of a published ``passages``/``ner`` output.
    """

    VOLATILE = LLMStage.VOLATILE | {"only"}
    teacher: Server = VLLMLaunch()
    max_passage_chars: PositiveInt = 20_000
    """Longer passages are rejected (``text_too_long``), never truncated."""
    only: Seq[Name] = ()
    """Read just these raw files under ``input`` (the scheduled refresh's new shards); all when empty."""
    PRESETS: ClassVar = {
        "paper": {
            "teacher": {"kind": "vllm", "model": PAPER_TEACHER, "tensor_parallel_size": 8, "max_model_len": 40960},
            "sampling": _R1_SAMPLING,
        },
        "smoke": {"sampling": {"temperature": 0.0, "max_tokens": 256}, **_SMOKE_LLM},
    }


class ValidateConfig(Config):
    """CG step 2: structural checks of each CoT record, with reason codes."""

    VOLATILE = frozenset({"input"})
    input: Name | None = None
    max_reasoning_chars: PositiveInt = 20_000
    max_answer_chars: PositiveInt = 8_000
    max_entities: PositiveInt = 256
    require_mentions_in_reasoning: bool = True
    PRESETS: ClassVar = {"paper": {}, "smoke": {}}


class JudgeConfig(LLMStage):
    """CG step 3: a judge LLM scores each reasoning chain 0-10."""

    judge: Server = VLLMLaunch()
    PRESETS: ClassVar = {
        "paper": {
            "judge": {"kind": "vllm", "model": PAPER_JUDGE, "tensor_parallel_size": 4, "max_model_len": 40960},
            "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192},
        },
        "smoke": {"sampling": {"temperature": 0.0, "max_tokens": 64}, **_SMOKE_LLM},
    }


class PublishConfig(Config):
    """CG step 4: keep records the judge scored at least ``min_score`` as a new NER-CoT version."""

    VOLATILE = frozenset({"cot", "verdicts", "base"})
    cot: Name | None = None
    """Address of the validated CoT records."""
    verdicts: Name | None = None
    """Address of the judge's verdicts on them."""
    min_score: Annotated[float, Field(ge=0, le=10)] = 9.0
    dataset: Name = "ner-cot"
    base: Name | None = None
    """A previous version whose records the new version carries over (an incremental refresh)."""
    PRESETS: ClassVar = {"paper": {"min_score": 9.0}, "smoke": {"min_score": 0.0}}


class CGConfig(Config):
    """The four CG steps as one run (``rner cg run``): annotate → validate → judge → publish.

    ``input`` is the raw passages; each step's own input is the previous step's output, so the steps
    must not name inputs themselves. When teacher and judge are the same launch spec, one server serves
    both.
    """

    VOLATILE = frozenset({"input"})
    input: Name
    annotate: AnnotateConfig = AnnotateConfig()
    validation: ValidateConfig = ValidateConfig()
    judge: JudgeConfig = JudgeConfig()
    publish: PublishConfig = PublishConfig()
    PRESETS: ClassVar = {
        name: {
            "input": "raw/passages",
            "annotate": AnnotateConfig.PRESETS[name],
            "validation": ValidateConfig.PRESETS[name],
            "judge": JudgeConfig.PRESETS[name],
            "publish": PublishConfig.PRESETS[name],
        }
        for name in ("paper", "smoke")
    }

    @model_validator(mode="after")
    def _steps_take_no_inputs(self) -> Self:
        named = [
            step
            for step, value in (
                ("annotate.input", self.annotate.input),
                ("validation.input", self.validation.input),
                ("judge.input", self.judge.input),
                ("publish.cot", self.publish.cot),
                ("publish.verdicts", self.publish.verdicts),
                ("publish.base", self.publish.base),
                ("annotate.only", self.annotate.only or None),
            )
            if value is not None
        ]
        if named:
            raise ValueError(f"{', '.join(named)}: set only the CG config's `input`; the steps are chained")
        return self


class Parallelism(Config):
    """How many processes on how many nodes, and which GPUs training may use."""

    VOLATILE = frozenset({"rdzv_endpoint"})
    num_nodes: PositiveInt = 1
    processes_per_node: PositiveInt = 1
    rdzv_endpoint: str | None = None
    """``host:port`` of the rendezvous for multi-node runs."""


class SFTConfig(Config):
    """CT: supervised fine-tuning on the NER-CoT dataset (TRL SFTTrainer)."""

    VOLATILE = frozenset({"logging_steps", "save_steps", "parallel", "per_device_batch_size"})
    dataset: Name
    model: Name = DEFAULT_MODEL
    with_cot: bool = True
    """False trains on the answer alone (the paper's ablation)."""
    epochs: PositiveFloat = 1.0
    max_steps: PositiveInt | None = None
    learning_rate: PositiveFloat = 2e-5
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    global_batch_size: PositiveInt = 8
    per_device_batch_size: PositiveInt = 1
    max_seq_len: PositiveInt = 2048
    packing: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    liger_kernel: bool = False
    flash_attention: bool = False
    deepspeed_zero: Literal[0, 2, 3] = 0
    seed: int = 42
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = 500
    parallel: Parallelism = Parallelism()
    PRESETS: ClassVar = {
        "paper": {
            "dataset": "datasets/ner-cot",
            "model": PAPER_BACKBONE,
            "epochs": 5,
            "learning_rate": 2e-5,
            "lr_scheduler": "cosine",
            "global_batch_size": 256,
            "per_device_batch_size": 4,
            "max_seq_len": 8192,
            "bf16": True,
            "gradient_checkpointing": True,
            "liger_kernel": True,
            "flash_attention": True,
            "deepspeed_zero": 3,
            "parallel": {"processes_per_node": 8},
        },
        "smoke": {
            "dataset": "datasets/ner-cot",
            "max_steps": 4,
            "learning_rate": 5e-5,
            "global_batch_size": 4,
            "per_device_batch_size": 2,
            "max_seq_len": 512,
            "logging_steps": 1,
        },
    }

    @model_validator(mode="after")
    def _batch_divides(self) -> Self:
        per_step = self.per_device_batch_size * self.parallel.num_nodes * self.parallel.processes_per_node
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_batch_size x "
                f"processes ({per_step}); gradient accumulation needs a whole number of micro-batches"
            )
        return self


class SampleConfig(Config):
    """RE data: stratified sampling from labelled NER sets."""

    sources: Seq[Name]
    """Dataset addresses in the store, or paths of InstructUIE-layout folders."""
    split: Literal["train", "dev", "test"] = "train"
    total: PositiveInt
    per_dataset_cap: PositiveInt | None = None
    seed: int = 42
    PRESETS: ClassVar = {
        "paper": {"sources": ["datasets/instructuie"], "total": 4703},
        "smoke": {"sources": ["datasets/demo"], "total": 16, "per_dataset_cap": 4},
    }


class GRPOConfig(Config):
    """RE: reinforcement learning with GRPO, reward = 10 * F1 + 1 * schema (TRL GRPOTrainer)."""

    VOLATILE = frozenset({"logging_steps", "save_steps", "parallel", "per_device_batch_size"})
    dataset: Name
    model: Name = DEFAULT_MODEL
    num_generations: Annotated[int, Field(ge=2)] = 4
    beta: Annotated[float, Field(ge=0)] = 0.04
    epsilon: PositiveFloat = 0.2
    epochs: PositiveFloat = 1.0
    max_steps: PositiveInt | None = None
    learning_rate: PositiveFloat = 1e-6
    """Not stated in the paper; TRL's GRPO default."""
    global_batch_size: PositiveInt = 8
    per_device_batch_size: PositiveInt = 4
    max_prompt_length: PositiveInt = 1024
    max_completion_length: PositiveInt = 256
    temperature: PositiveFloat = 1.0
    f1_reward_weight: Annotated[float, Field(ge=0)] = 10.0
    schema_reward_weight: Annotated[float, Field(ge=0)] = 1.0
    empty_match_f1: Annotated[float, Field(ge=0, le=1)] = 1.0
    """F1 when gold and prediction are both empty. The released code uses 0.0; 1.0 (nothing to find,
    nothing found) is our default."""
    rollout: Literal["server", "colocate", "transformers"] = "transformers"
    rollout_gpus: NonNegativeInt = 0
    """GPUs of the node given to the ``trl vllm-serve`` rollout server (``rollout: server``)."""
    bf16: bool = False
    gradient_checkpointing: bool = False
    deepspeed_zero: Literal[0, 2, 3] = 0
    seed: int = 42
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = 500
    parallel: Parallelism = Parallelism()
    PRESETS: ClassVar = {
        "paper": {
            "model": PAPER_BACKBONE,
            "dataset": "datasets/re",
            "num_generations": 16,
            "beta": 0.04,
            "epsilon": 0.2,
            "epochs": 1,
            "global_batch_size": 384,
            "per_device_batch_size": 16,
            "max_completion_length": 4096,
            "max_prompt_length": 2048,
            "rollout": "server",
            "rollout_gpus": 2,
            "bf16": True,
            "gradient_checkpointing": True,
            "deepspeed_zero": 3,
            "parallel": {"processes_per_node": 6},
        },
        "smoke": {
            "dataset": "datasets/re",
            "num_generations": 4,
            "max_steps": 2,
            "global_batch_size": 4,
            "per_device_batch_size": 4,
            "max_completion_length": 48,
            "logging_steps": 1,
        },
    }

    @model_validator(mode="after")
    def _generations_divide_batch(self) -> Self:
        if self.global_batch_size % self.num_generations:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} must be a multiple of num_generations "
                f"{self.num_generations}: each prompt's completions form one group"
            )
        return self


class EvalConfig(Config):
    """Zero-shot evaluation: generate on eval sets, score with the paper's metric (and strict spans)."""

    VOLATILE = frozenset({"concurrency", "request_timeout_s", "max_retries"})
    model: Generator = TransformersRunner()
    datasets: Seq[Name] = ()
    """Dataset addresses in the store, or paths of InstructUIE-layout folders."""
    suite: Name | None = None
    """A named suite (``crossner_mit``, ``instructuie_20``) resolved under ``suite_root``."""
    suite_root: str | None = None
    max_examples: PositiveInt | None = None
    sampling: SamplingParams = SamplingParams(temperature=0.0, max_tokens=1024)
    concurrency: PositiveInt = 64
    request_timeout_s: PositiveFloat = 600.0
    max_retries: NonNegativeInt = 5
    PRESETS: ClassVar = {
        "paper": {
            "model": {"kind": "vllm", "model": PAPER_BACKBONE, "max_model_len": 8192},
            "suite": "crossner_mit",
            "sampling": {"max_tokens": 4096},
        },
        "smoke": {"datasets": ["datasets/demo"], "max_examples": 8, "sampling": {"max_tokens": 256}},
    }

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> Self:
        if not self.datasets and self.suite is None:
            raise ValueError("give 'datasets' or a 'suite'")
        return self


STAGE_CONFIGS: dict[str, type[Config]] = {
    "annotate": AnnotateConfig,
    "validate": ValidateConfig,
    "judge": JudgeConfig,
    "publish": PublishConfig,
    "cg": CGConfig,
    "sft": SFTConfig,
    "sample": SampleConfig,
    "grpo": GRPOConfig,
    "evaluate": EvalConfig,
}
