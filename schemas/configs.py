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

import math
import re
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.base import Config, Name, Seq
from schemas.records import SamplingParams

DEFAULT_MODEL = "default"

PAPER_BACKBONE = "Qwen/Qwen3-8B-Base"
PAPER_BACKBONE_1_7B = "Qwen/Qwen3-1.7B-Base"
"""The smaller backbone the authors released configs for (``paper-1.7b`` presets)."""
PAPER_TEACHER = "deepseek-ai/DeepSeek-R1"
PAPER_TEACHER_URL = "http://vllm-deepseek-r1:8000/v1"
"""Where the ``paper`` preset's teacher is served: the Service of the multi-node vLLM server that ``rner k8s
render-server --model deepseek-ai/DeepSeek-R1 --nodes 2`` renders, as pods in its namespace reach it (R1's ~690 GB
of FP8 weights do not fit one node of 8 x 80 GB: ``rner train plan annotate``). A hosted API instead: its
``base_url`` and ``model``, the key in ``TEACHER_KEY_ENV``."""
TEACHER_KEY_ENV = "RNER_TEACHER_API_KEY"
"""The environment variable the ``paper`` preset's teacher endpoint reads its API key from."""
PAPER_JUDGE = "Qwen/Qwen3-32B"
PAPER_COT_EXAMPLES = 45_787
"""The NER-CoT examples the paper trains CT on (its judge kept them at score >= 9). The presets carry no
dataset size for SFT (the CoT dataset is made by CG); the RE size is ``SampleConfig``'s ``total`` (4,703)."""

PromptStyle = Literal["rner", "paper"]
"""Which NER instruction a stage asks a model with (``tasks.prompts``): ``rner``, ours (asks for reasoning in
``<think>`` tags only when the model is to reason), or ``paper``, the authors' released ``NER_PROMPT`` verbatim
(what their checkpoints were trained with)."""


_URL_CREDENTIALS = re.compile(
    r"^[^:]*://[^/?#]*@|[?&;](?:[^=&;#]*(?:key|token|secret|passw|pwd|signature|credential|auth)[^=&;#]*|sig)=[^&;#]",
    re.IGNORECASE,
)
"""Userinfo (``user:password@``, ``token@``) or a secret-named query parameter with a value (``tasks.redact``)."""


class Endpoint(Config):
    """A running OpenAI-compatible server (vLLM, SGLang, a hosted API).

    Its API key is never part of a config: ``api_key_env`` names the environment variable a stage reads it from
    when it connects (a job gets it as the other secrets: Kubernetes pods from the backend's ``env_secret``, docker
    containers through ``forward_env``), so no config file, manifest, config hash, command line or log holds it.
    ``api_key`` is for a program that builds an endpoint and uses it in the same process (``rner extract
    --api-key``): it is masked wherever a config is written, a job's command line included, so a stage started
    from a config never receives it."""

    model_config = ConfigDict(hide_input_in_errors=True)
    VOLATILE = frozenset({"base_url", "api_key", "api_key_env"})
    kind: Literal["endpoint"] = "endpoint"
    """Which kind of server this is: ``endpoint``, one that is already running."""
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    """The server's OpenAI-compatible API, e.g. ``http://host:8000/v1`` (no credentials in it: ``api_key_env``)."""
    model: Name
    """The model name the server knows (vLLM's ``--served-model-name``)."""
    api_key: SecretStr | None = None
    """The API key itself, for a program that builds the endpoint and uses it in the same process; masked
    wherever a config is written."""
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """The environment variable that holds the server's API key, read when a stage connects (unset: the stage
    stops with an error naming it); ``None``: no key (a server without ``--api-key``)."""

    @field_validator("base_url", mode="after")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        # Refused, not stored: a config is written into manifests, job command lines and logs. The message never
        # repeats the URL (nor does pydantic's: the input is hidden, see model_config).
        if _URL_CREDENTIALS.search(url):
            raise ValueError(
                "holds credentials (user:password@ or a key/token/signature in its query): give the key through "
                "api_key_env (the environment variable that holds it) or api_key instead, never in the URL"
            )
        return url

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("api_key, api_key_env: give at most one (api_key_env keeps the key out of the config)")
        return self


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
    """Which kind of server this is: ``vllm``, one the stage starts and stops itself."""
    model: Name = DEFAULT_MODEL
    """The model to serve: ``default`` (the embedded SmolLM2-135M-Instruct), a model directory, a hub id or an
    ``s3://`` prefix."""
    served_name: Name | None = None
    """The name the server knows the model by (``--served-model-name``); ``None``: ``model``."""
    tensor_parallel_size: PositiveInt = 1
    """GPUs each copy of the model is split over (vLLM's ``--tensor-parallel-size``)."""
    data_parallel_size: PositiveInt = 1
    """Copies of the model served side by side (vLLM's ``--data-parallel-size``)."""
    gpu_ids: Seq[NonNegativeInt] = ()
    """The GPUs the server runs on (``CUDA_VISIBLE_DEVICES``); empty: the ones the stage has."""
    max_model_len: PositiveInt = 2048
    """Longest prompt + completion in tokens the server accepts (vLLM's ``--max-model-len``)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    """On a CPU without AVX512-BF16 or AMX, vLLM emulates bfloat16: float32 ran 3.6× faster on the 2-core
    AVX2 development machine (54 vs 15 output tokens/s, SmolLM2-135M, 16 requests in flight)."""
    enforce_eager: bool = False
    """Skip torch.compile (vLLM's ``--enforce-eager``). On a CPU it took 2 of a server's 3 minutes of start
    and gave no throughput for a small model (45 vs 178 s to healthy, 53 vs 54 tokens/s, same machine)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    """0 picks a free port."""
    extra_args: Seq[str] = ()
    """More vLLM command-line arguments, passed as given."""
    python: str | None = None
    """Interpreter of the vLLM environment; ``None`` uses the project's managed vLLM virtualenv."""
    image: str | None = None
    """Container image to run the server in instead of a local interpreter."""
    kv_cache_gib: PositiveFloat = 2.0
    """KV cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPU."""
    startup_timeout_s: PositiveFloat = 900.0
    """Seconds to wait for the server to become healthy before the stage fails."""


class TransformersRunner(Config):
    """Generation in-process with transformers: for small local runs without a server."""

    VOLATILE = frozenset({"batch_size", "device"})
    kind: Literal["transformers"] = "transformers"
    """Which kind of generator this is: ``transformers``, in the stage's own process."""
    model: Name = DEFAULT_MODEL
    """The model to generate with: ``default`` (the embedded SmolLM2-135M-Instruct), a model directory, a hub id
    or an ``s3://`` prefix."""
    batch_size: PositiveInt = 8
    """Prompts generated together in one batch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to generate: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``."""


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
    """Where the stage reads its records from: a store address or prefix (set by the flow when stages are
    chained)."""
    sampling: SamplingParams = SamplingParams()
    """Decoding parameters of every request."""
    shard_size: PositiveInt = 64
    """Records per output shard; a resumed run skips finished shards, so changing it changes the output."""
    concurrency: PositiveInt = 64
    """Requests in flight to the server at once."""
    request_timeout_s: PositiveFloat = 600.0
    """Seconds one request may take before it is retried."""
    max_retries: NonNegativeInt = 5
    """More attempts of a failed request (exponential backoff) before it counts as failed."""


_R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}
DEMO_PASSAGES = "raw/passages/demo"
"""Where ``rner data demo`` puts the demo corpus's passages: the smoke pipeline's CG input."""
CPU_SERVER = {"kind": "vllm", "dtype": "float32", "enforce_eager": True}
"""The embedded default model on a vLLM-cpu server the way a small CPU machine runs it fastest (see ``VLLMLaunch``):
the smoke presets' teacher and judge (one server, shared by both steps)."""
_SMOKE_LLM = {"shard_size": 8, "concurrency": 16}
"""The default timeout (600 s per request) stays: on a loaded 2-core machine 16 requests in flight share a slow
server, and a timeout that expires under load retries work the server had half done, again and again."""


class AnnotateConfig(LLMStage):
    """CG step 1: a teacher LLM writes reasoning and entities for each passage.

    ``input``: a prefix in the store holding raw passage JSONL files (``Passage`` lines), or the address
    of a published ``passages``/``ner`` output.
    """

    VOLATILE = LLMStage.VOLATILE | {"only"}
    ADDED = frozenset({"samples_per_passage"})
    teacher: Server = VLLMLaunch()
    """The teacher LLM: a running ``endpoint`` or a ``vllm`` server the stage starts."""
    max_passage_chars: PositiveInt = 20_000
    """Longer passages are rejected (``text_too_long``), never truncated."""
    only: Seq[Name] = ()
    """Read just these raw files under ``input`` (the scheduled refresh's new shards); all when empty."""
    samples_per_passage: PositiveInt = 1
    """Teacher chains per passage (concise chains). 1 (the paper): one request per passage. N > 1: N requests,
    sample k (0-based) seeded ``sampling.seed + k`` (``k`` when unseeded), so each is a distinct draw, cached and
    drawn again alike on a rerun; each chain is a CoT record of id ``<passage id>#<k>`` (``passage_id`` names the
    passage), validated and judged on its own, and publish keeps per passage the shortest chain that passed both:
    shortest in reasoning tokens of validate's ``tokenizer`` when it has one, else in characters. Needs
    ``sampling.temperature`` > 0."""
    PRESETS: ClassVar = {
        "paper": {
            # DeepSeek-R1 does not fit one 8-GPU node, which is all a stage's own vLLM launch has: an endpoint.
            "teacher": {
                "kind": "endpoint",
                "base_url": PAPER_TEACHER_URL,
                "model": PAPER_TEACHER,
                "api_key_env": TEACHER_KEY_ENV,
            },
            "sampling": _R1_SAMPLING,
        },
        "smoke": {"teacher": CPU_SERVER, "sampling": {"temperature": 0.0, "max_tokens": 256}, **_SMOKE_LLM},
    }

    @model_validator(mode="after")
    def _samples_differ(self) -> Self:
        if self.samples_per_passage > 1 and self.sampling.temperature == 0:
            raise ValueError(
                f"samples_per_passage: {self.samples_per_passage} samples need sampling.temperature > 0 "
                "(greedy decoding draws the same chain every time)"
            )
        return self


class ValidateConfig(Config):
    """CG step 2: structural checks of each CoT record, with reason codes."""

    VOLATILE = frozenset({"input"})
    ADDED = frozenset({"max_reasoning_tokens", "tokenizer"})
    input: Name | None = None
    """Address of the teacher's CoT records (set by the flow when stages are chained)."""
    max_reasoning_chars: PositiveInt = 20_000
    """Longer reasoning is rejected (``reasoning_too_long``)."""
    max_answer_chars: PositiveInt = 8_000
    """Longer answers are rejected (``answer_too_long``)."""
    max_entities: PositiveInt = 256
    """Answers with more entities are rejected (``too_many_entities``)."""
    require_mentions_in_reasoning: bool = True
    """Reject a record whose reasoning does not mention each of its entities' text
    (``entity_not_in_reasoning``)."""
    max_reasoning_tokens: PositiveInt | None = None
    """Reasoning longer than this many tokens of ``tokenizer`` is rejected (``reasoning_too_long``): concise
    chains to train on. ``None`` (the paper): no cap in tokens."""
    tokenizer: Name | None = None
    """Model reference whose tokenizer counts reasoning tokens (the student's: what it will learn to write);
    needed by ``max_reasoning_tokens``, and with it the output's stats and the dataset card show a histogram of
    reasoning lengths before and after validation."""
    PRESETS: ClassVar = {"paper": {}, "smoke": {}}

    @model_validator(mode="after")
    def _tokens_need_a_tokenizer(self) -> Self:
        if self.max_reasoning_tokens is not None and self.tokenizer is None:
            raise ValueError("max_reasoning_tokens: give `tokenizer`, the model whose tokens it counts")
        return self


class JudgeConfig(LLMStage):
    """CG step 3: a judge LLM scores each reasoning chain 0-10."""

    judge: Server = VLLMLaunch()
    """The judge LLM: a running ``endpoint`` or a ``vllm`` server the stage starts."""
    PRESETS: ClassVar = {
        "paper": {
            "judge": {"kind": "vllm", "model": PAPER_JUDGE, "tensor_parallel_size": 4, "max_model_len": 40960},
            "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192},
        },
        "smoke": {"judge": CPU_SERVER, "sampling": {"temperature": 0.0, "max_tokens": 64}, **_SMOKE_LLM},
    }


class PublishConfig(Config):
    """CG step 4: keep records the judge scored at least ``min_score`` as a new NER-CoT version."""

    VOLATILE = frozenset({"cot", "verdicts", "base"})
    cot: Name | None = None
    """Address of the validated CoT records."""
    verdicts: Name | None = None
    """Address of the judge's verdicts on them."""
    min_score: Annotated[float, Field(ge=0, le=10)] = 9.0
    """Keep the records the judge scored at least this (0-10; the paper keeps 9 and 10)."""
    dataset: Name = "ner-cot"
    """Name of the published dataset: versions go to ``datasets/<dataset>/vN``."""
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
    """The raw passages: a prefix in the store holding ``Passage`` JSONL files, or a published output."""
    annotate: AnnotateConfig = AnnotateConfig()
    """Step 1: the teacher writes reasoning and entities."""
    validation: ValidateConfig = ValidateConfig()
    """Step 2: structural checks of the teacher's records."""
    judge: JudgeConfig = JudgeConfig()
    """Step 3: the judge scores each reasoning chain."""
    publish: PublishConfig = PublishConfig()
    """Step 4: the records scored high enough become a new dataset version."""
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


class MixConfig(Config):
    """Several CoT (or NER) datasets as one training set; sources in priority order (see ``tasks.mix``)."""

    VOLATILE = frozenset({"sources"})
    sources: Annotated[Seq[Name], Field(min_length=1)]
    """Addresses of published ``cot``/``ner`` outputs, or ``demo:cot``; pinned by their digests."""
    on_duplicate: Literal["error", "first"] = "error"
    """An example id present in several sources: ``error`` stops, ``first`` keeps the first source's."""
    PRESETS: ClassVar = {
        "paper": {"sources": ["datasets/ner-cot/v1"]},  # the paper trains on its NER-CoT set alone
        "smoke": {"sources": ["demo:cot"]},
    }


class Parallelism(Config):
    """How many training processes on how many nodes (``tasks.launch`` starts them with torchrun).

    Every node runs the same command; the nodes find each other at the c10d rendezvous ``rdzv_endpoint``
    (any reachable ``host:port``, usually node 0's), which multi-node runs need.
    """

    VOLATILE = frozenset({"rdzv_endpoint"})
    num_nodes: PositiveInt = 1
    """Nodes (machines) the training runs on."""
    processes_per_node: PositiveInt = 1
    """Training processes on each node, usually one per GPU."""
    rdzv_endpoint: str | None = None
    """``host:port`` of the c10d rendezvous for multi-node runs."""

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node


LRScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]

TooLong = Literal["drop", "truncate", "truncate_left", "fail"]
"""What to do with an example longer than the configured maximum: leave it out, cut it (``truncate`` keeps its
first tokens, ``truncate_left`` its last ones, as the released SFT code does), or stop with an error. Either way
the count is logged and recorded in the output's manifest."""


class TrainConfig(Config):
    """What the training stages (CT and RE) share: model, data, schedule, batch, precision and kernels,
    checkpoints, processes.

    ``global_batch_size`` is what one optimizer step sees (sequences for SFT, completions for GRPO); the
    gradient accumulation is what makes ``per_device_batch_size`` x processes reach it. The GPU options
    (``bf16`` on CUDA, ``liger_kernel``, ``flash_attention``, ``deepspeed_zero``) are refused with an error
    on hardware that lacks them, never silently dropped. ``resume`` continues from the newest checkpoint
    this output has in the store (``<address>/_checkpoints/``); checkpoints are written every ``save_steps``.

    ``parallel`` is volatile: the same global batch on another number of processes trains the same model, so
    it keeps the output's address. A checkpoint is another matter (ZeRO-3 shards the optimizer state per
    process): it resumes only with the world size that wrote it, and the stage refuses any other.
    """

    VOLATILE = frozenset({"logging_steps", "save_steps", "parallel", "per_device_batch_size", "resume"})
    ADDED = frozenset({"warmup_steps"})
    dataset: Name
    """The training data: the address of a published dataset (set by the flow when stages are chained)."""
    model: Name = DEFAULT_MODEL
    """The model to start from: ``default`` (the embedded SmolLM2-135M-Instruct), a model directory, a hub id,
    an ``s3://`` prefix or ``store:<address>`` of a trained model."""
    epochs: PositiveFloat = 1.0
    """Passes over the dataset (fractions allowed)."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    learning_rate: PositiveFloat = 2e-5
    """Peak learning rate (AdamW)."""
    lr_scheduler: LRScheduler = "linear"
    """The learning-rate schedule after warm-up (transformers' ``lr_scheduler_type``)."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """The share of the optimizer steps over which the learning rate warms up from 0."""
    warmup_steps: NonNegativeInt | None = None
    """The optimizer steps over which the learning rate warms up from 0, instead of ``warmup_ratio`` (then 0);
    ``None``: ``warmup_ratio`` decides."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: PositiveFloat = 1.0
    """Gradients are clipped to this norm (transformers' default)."""
    global_batch_size: PositiveInt = 8
    """Sequences (SFT) or completions (GRPO) per optimizer step, over all processes."""
    per_device_batch_size: PositiveInt = 1
    """Sequences per process per micro-batch; gradient accumulation makes up the rest of ``global_batch_size``."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (refused on a machine without it)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more compute."""
    liger_kernel: bool = False
    """Use the Liger kernels (fused cross-entropy, RMSNorm, ...): CUDA only."""
    flash_attention: bool = False
    """Use FlashAttention-2 (needs ``bf16`` and a CUDA GPU)."""
    deepspeed_zero: Literal[0, 2, 3] = 0
    """DeepSpeed ZeRO stage (0: off; 2: shard optimizer states and gradients; 3: parameters too)."""
    seed: int = 42
    """Seeds data order, initialisation of new weights and sampling."""
    logging_steps: PositiveInt = 10
    """Log the loss (and rewards) every this many optimizer steps."""
    save_steps: PositiveInt | None = 500
    """Store a checkpoint every this many optimizer steps; ``None``: never (runs short enough to redo). A run
    shorter than ``save_steps`` would never checkpoint and lose everything to a failure: the stage warns when
    training starts (by the trainer's own count of steps; ``total_steps`` estimates it beforehand), so pick a
    value that checkpoints a few times per run."""
    resume: bool = True
    """Continue from the newest checkpoint this output has in the store."""
    parallel: Parallelism = Parallelism()
    """How many processes on how many nodes."""
    prompt: PromptStyle = "rner"
    """The instruction the training prompts carry (``tasks.prompts``): ``paper`` is the released ``NER_PROMPT``,
    with the released answer format as SFT target. Ask the trained model with the same one."""

    def batch_units(self) -> list[tuple[int, str]]:
        """What ``global_batch_size`` must be a multiple of, and why."""
        per_step = self.per_device_batch_size * self.parallel.world_size
        why = "gradient accumulation needs a whole number of micro-batches"
        return [(per_step, f"per_device_batch_size x processes ({per_step}): {why}")]

    @model_validator(mode="after")
    def _batch_divides(self) -> Self:
        for unit, what in self.batch_units():
            if self.global_batch_size % unit:
                raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of {what}")
        return self

    @model_validator(mode="after")
    def _one_warmup(self) -> Self:
        if self.warmup_steps is not None and self.warmup_ratio > 0:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio}, perhaps from the preset): "
                "give one; set warmup_ratio: 0 to warm up by steps"
            )
        return self

    @model_validator(mode="after")
    def _flash_attention_needs_half_precision(self) -> Self:
        if self.flash_attention and not self.bf16:
            raise ValueError("flash_attention needs bf16: FlashAttention-2 runs in half precision only")
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.per_device_batch_size * self.parallel.world_size)

    @property
    def sequences_per_example(self) -> int:
        """What one training example adds to ``global_batch_size``: one sequence (SFT, without packing)."""
        return 1

    def total_steps(self, examples: int) -> int:
        """The optimizer steps of a run over ``examples`` training examples: ``max_steps`` if set, else
        ``epochs`` passes of ``global_batch_size`` sequences each step, as the HF trainer counts them (up to the
        rounding of the last micro-batch of each process). Packing makes fewer, longer SFT sequences, hence
        fewer steps; the stage checks ``save_steps`` against the trainer's own count."""
        if self.max_steps:
            return self.max_steps
        per_epoch = math.ceil(examples * self.sequences_per_example / self.global_batch_size)
        return math.ceil(self.epochs * per_epoch)


class SFTConfig(TrainConfig):
    """CT: supervised fine-tuning on the NER-CoT dataset (TRL SFTTrainer).

    ``dataset``: a published ``cot`` dataset (``CoTRecord``), or a ``ner`` dataset (``NERExample``) with
    ``with_cot: false``. Sequences are prompt + target in the model's chat template, at most
    ``max_seq_len`` tokens; longer ones are handled as ``too_long`` says.
    """

    with_cot: bool = True
    """False trains on the answer alone (the paper's ablation "SFT on raw labels"); the instruction then asks
    for the answer alone too (``tasks.prompts``)."""
    add_source: bool = False
    """``prompt: paper`` only: start each prompt with "This sentence is from <source> dataset." (the record's
    ``source``), as the released 8B SFT config does (``add_source: true``; its 1.7B config, GRPO and evaluation
    do not)."""
    lr_scheduler: LRScheduler = "cosine"
    """The learning-rate schedule after warm-up (transformers' ``lr_scheduler_type``)."""
    max_seq_len: PositiveInt = 2048
    """Longest training sequence in tokens (prompt + target); longer ones: ``too_long``."""
    too_long: TooLong = "drop"
    """Over-long examples: dropped by default (a cut reasoning chain, or a prompt without its start, teaches the
    wrong thing); the released code keeps each one's last ``max_seq_len`` tokens (``truncate_left``)."""
    packing: bool = False
    """Pack several examples into each sequence of ``max_seq_len`` tokens (TRL's ``packing``)."""
    padding_free: bool = False
    """Micro-batches as one unpadded sequence with per-example positions (TRL's ``padding_free``): the same loss
    as padding, less memory and compute. Needs ``flash_attention`` (other kernels would attend across examples);
    the stage then tokenizes and cuts the examples itself (TRL cuts nothing in this mode)."""
    PRESETS: ClassVar = {
        "paper": {
            "dataset": "datasets/ner-cot",
            "model": PAPER_BACKBONE,
            "prompt": "paper",
            "add_source": True,  # config/sft/qwen3-8b.yaml: add_source: true
            "epochs": 5,
            "learning_rate": 2e-5,
            "lr_scheduler": "cosine",
            "global_batch_size": 256,
            "per_device_batch_size": 16,  # x 2 accumulation x 8 GPUs = 256, as released
            "max_seq_len": 8192,
            "bf16": True,
            "gradient_checkpointing": True,
            "liger_kernel": True,
            "flash_attention": True,
            "deepspeed_zero": 3,
            "parallel": {"processes_per_node": 8},
            # 45,787 examples x 5 epochs / 256 = 895 steps: a checkpoint every 150 stores five of them.
            "save_steps": 150,
            # The rest of the released config/sft/qwen3-8b.yaml (every value: tests/fixtures/released_config.yaml):
            "warmup_ratio": 0.03,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "padding_free": True,
            "too_long": "truncate_left",
            "seed": 42,
            "logging_steps": 1,
        },
        "smoke": {
            "dataset": "datasets/ner-cot",
            "max_steps": 4,
            "save_steps": None,  # four steps on a CPU: a failed run simply runs again
            "learning_rate": 5e-5,
            "global_batch_size": 4,
            "per_device_batch_size": 2,
            "max_seq_len": 512,
            "logging_steps": 1,
        },
    }
    # The released config/sft/qwen3-1.7b.yaml: the same but for the backbone and 32 x 1 accumulation x 8 GPUs.
    PRESETS["paper-1.7b"] = PRESETS["paper"] | {"model": PAPER_BACKBONE_1_7B, "per_device_batch_size": 32}
    PRESETS["paper-1.7b"]["add_source"] = False  # config/sft/qwen3-1.7b.yaml: add_source: false

    @model_validator(mode="after")
    def _source_line_is_the_papers(self) -> Self:
        if self.add_source and self.prompt != "paper":
            raise ValueError("add_source: the source line belongs to the paper instruction (prompt: paper)")
        return self

    @model_validator(mode="after")
    def _padding_free_needs_flash_attention(self) -> Self:
        if self.padding_free and not self.flash_attention:
            raise ValueError("padding_free needs flash_attention: other attention kernels would attend across examples")
        if self.packing and (self.padding_free or self.too_long == "truncate_left"):
            raise ValueError(
                "packing: TRL packs without padding and cuts what overflows itself; "
                "leave padding_free off and too_long other than truncate_left"
            )
        return self


INSTRUCTUIE_20: tuple[str, ...] = (
    "ACE 2005", "AnatEM", "bc2gm", "bc4chemd", "bc5cdr", "Broad Tweet Corpus", "CoNLL 2003", "FabNER",
    "FindVehicle", "GENIA_NER", "HarveyNER", "mit-movie", "mit-restaurant", "MultiNERD", "ncbi", "Ontonotes",
    "PolyglotNER", "TweetNER7", "WikiANN en", "WikiNeural",
)  # fmt: skip
"""The 20 supervised NER sets of InstructUIE / UniversalNER by their InstructUIE folder names, in the order of
the released ``config/dataset/in_domain.json``: the paper's RE datasets (``SampleConfig``) and an eval suite."""


class SampleConfig(Config):
    """RE data: stratified sampling from labelled NER sets.

    A dataset is a ``source`` value of the examples: a published ``ner`` output may hold several, an
    InstructUIE folder ``<name>/`` is one (named ``name``). ``allocation`` says how ``total`` is split over the
    datasets (``datasets`` picks and orders them); each takes at most ``per_dataset_cap``. ``ids`` take a given
    subset instead of a drawn one.
    """

    VOLATILE = frozenset({"sources"})
    ADDED = frozenset({"ids"})
    sources: Seq[Name]
    """InstructUIE-layout folders (one ``<name>/{train,dev,test}.json`` + ``labels.json``, or a folder of
    them), ``NERExample`` ``.jsonl`` files, ``demo:<split>``, or addresses of published ``ner`` outputs.
    Pinned by the digests of their content, so where they were read from is not part of the config hash."""
    split: Literal["train", "dev", "test"] = "train"
    """Which split of each source to sample from."""
    total: PositiveInt | None = None
    """Examples in the sample, over all datasets. Required unless ``ids`` name the sample (then leave it out, or
    give their number)."""
    per_dataset_cap: PositiveInt | None = None
    """At most this many examples from one dataset; ``None``: no cap. Not with ``ids``."""
    allocation: Literal["even", "proportional"] = "even"
    """``even`` (ours): ``total`` spread as evenly as the sizes allow, smallest dataset first, each taking at most
    ``per_dataset_cap`` and what it has; what a small dataset cannot give goes to the others, so the sample has
    exactly ``total`` examples and small datasets are not drowned by large ones. ``proportional`` (the released
    ``sample_grpo.py``): each dataset gives ``int(total * size / sum of sizes)``, sizes capped at
    ``per_dataset_cap`` first (its ``max_count``); the floors may leave the sample up to one example per dataset
    short of ``total``, and the draw replays the released one (one generator seeded with ``seed``, datasets in
    order, each shuffled whole and its first examples taken)."""
    datasets: Seq[Name] = ()
    """Only these datasets (``source`` names) of the sources, in this order; every one when empty (then in name
    order). The order matters for ``proportional``, whose draw goes dataset by dataset."""
    shuffle: bool = False
    """Shuffle the whole sample (seeded), as the released ``--shuffle``; otherwise it comes dataset by dataset."""
    seed: int = 42
    """Seeds the draw (and the shuffle)."""
    ids: Seq[Name] = ()
    """Take just these examples (by ``NERExample`` id; InstructUIE examples are ``<folder>-<index>``), in the data's
    order (dataset by dataset, as ``datasets`` orders them), instead of drawing ``total``; an id that no example of
    the datasets sampled has, or that several have, is an error. Empty: draw (``total``, ``allocation``)."""
    PRESETS: ClassVar = {
        # The released README's sample_grpo.py run: --max_count 10000 --shuffle, over config/dataset/in_domain.json.
        "paper": {
            "sources": ["datasets/instructuie"],
            "datasets": list(INSTRUCTUIE_20),
            "total": 4703,
            "allocation": "proportional",
            "per_dataset_cap": 10000,
            "shuffle": True,
        },
        "smoke": {"sources": ["demo:train"], "total": 16, "per_dataset_cap": 4},
    }

    @model_validator(mode="after")
    def _datasets_once(self) -> Self:
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets: each dataset once, not {list(self.datasets)}")
        return self

    @model_validator(mode="after")
    def _ids_or_a_draw(self) -> Self:
        _ids_once(self.ids)
        if not self.ids:
            if self.total is None:
                raise ValueError("total: required (the sample's size), unless ids name its examples")
            return self
        # ids name the sample: the options of a draw would be ignored, so setting one is a mistake.
        if self.total is not None and self.total != len(self.ids):
            raise ValueError(f"total {self.total} and {len(self.ids)} ids: ids name the sample; leave total out")
        if self.per_dataset_cap is not None:
            raise ValueError("per_dataset_cap: caps a draw, and ids name the sample; leave it out")
        if self.allocation != "even":
            raise ValueError(f"allocation {self.allocation!r}: splits a draw, and ids name the sample; leave it out")
        return self


def _ids_once(ids: tuple[str, ...]) -> None:
    """``ids`` (``ImportConfig``, ``SampleConfig``) may not repeat an id: the repeats are named."""
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"ids: each id once; repeated: {repeated[:5]}")


_FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("token_column", "tag_column", "separator", "doc_start"), ("conll",)),
    **dict.fromkeys(("tokens_field", "tags_field"), ("hf",)),
    "scheme": ("conll", "hf"),
}
"""The ``ImportConfig`` options that only some formats read: setting one for another format is a mistake."""


class ImportConfig(Config):
    """Labelled NER data into the store: one dataset, its splits as ``NERExample`` files (``tasks.data_import``).

    ``format`` says how ``path`` is laid out: ``jsonl`` (``<split>.jsonl`` files of ``NERExample`` lines, with an
    optional ``labels.json`` beside them for lines that carry no ``labels``; one ``.jsonl`` file for a single
    split, or ``demo:`` for the packaged demo corpus), ``instructuie``
    (``<split>.json`` + ``labels.json``), ``conll`` (``<split>.conll|.txt|.tsv|.bio`` column files, or one
    file for a single split) or ``hf`` (a ``datasets`` hub id or local dataset directory with token and
    tag columns). ``fraction``/``count`` take part of the train split (low-resource settings), ``ids`` a given
    part of it.
    """

    VOLATILE = frozenset({"path"})
    ADDED = frozenset({"ids"})
    dataset: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", max_length=128)]
    """The dataset's name: every example's ``source``, and its store address ``datasets/<dataset>/vN`` (named
    ``dataset`` as in ``PublishConfig``; ``name`` would clash with ``Config.preset(name, ...)``)."""
    format: Literal["jsonl", "instructuie", "conll", "hf"]
    """How ``path`` is laid out: ``jsonl``, ``instructuie``, ``conll`` or ``hf`` (see above)."""
    path: Name
    """Where the data is. Pinned by the digest of its content, so where it was read from is not part of
    the config hash."""
    splits: Annotated[Seq[Literal["train", "dev", "test"]], Field(min_length=1)] = ("train", "dev", "test")
    """Every split named must be there (a hub dataset's ``validation`` serves as ``dev``)."""
    label_map: dict[Name, Name] = Field(default_factory=dict)
    """Entity type renames, e.g. ``{PER: person}``; every key must be a type of the data."""
    token_column: int = 0
    """conll: the column holding the token (Python indexing: ``-1`` is the last)."""
    tag_column: int = -1
    """conll: the column holding the tag."""
    separator: Name | None = None
    """conll: the column separator; ``None`` splits on runs of spaces and tabs (not on other Unicode spaces: a
    no-break space inside a token becomes a plain space, see ``tasks.data_import``)."""
    doc_start: Name | None = "-DOCSTART-"
    """conll: lines starting with this mark a document boundary and are skipped."""
    tokens_field: Name = "tokens"
    """hf: the column holding each sentence's tokens."""
    tags_field: Name = "ner_tags"
    """hf: the column holding the tags (class-label ids or tag strings)."""
    scheme: Literal["BIO", "BIOES"] = "BIO"
    """conll, hf: the tagging scheme; ``I-`` without ``B-`` (and, for BIOES, ``B-`` without ``E-``) is an error."""
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    """Keep this share of the train split (rounded, at least one example)."""
    count: PositiveInt | None = None
    """Keep this many examples of the train split."""
    ids: Seq[Name] = ()
    """Keep just these examples of the train split, by id as imported (a JSONL line's own ``id``; otherwise
    ``<dataset>-train-<index>``), in the data's order; an id the split lacks is an error. Empty: all of it (or
    ``fraction``/``count``)."""
    per_dataset_cap: PositiveInt | None = None
    """At most this many examples in each split (after ``fraction``/``count``)."""
    seed: int = 42
    """Seeds which examples ``fraction``, ``count`` and ``per_dataset_cap`` keep (in their original order)."""
    PRESETS: ClassVar = {
        # The paper imports nothing itself; its RE data and evaluation read the InstructUIE release.
        "paper": {"dataset": "CoNLL2003", "format": "instructuie", "path": "IE_INSTRUCTIONS/NER/CoNLL2003"},
        "smoke": {"dataset": "demo", "format": "jsonl", "path": "demo:", "splits": ["train", "test"], "count": 16},
    }

    @model_validator(mode="after")
    def _options_fit_the_format(self) -> Self:
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits: each split once, not {list(self.splits)}")
        chosen = [name for name in ("fraction", "count", "ids") if getattr(self, name) not in (None, ())]
        if len(chosen) > 1:
            raise ValueError(f"{', '.join(chosen)}: give at most one of fraction, count and ids")
        if chosen and "train" not in self.splits:
            raise ValueError(f"{chosen[0]}: they sample the train split, which `splits` leaves out")
        _ids_once(self.ids)
        unused = [
            field
            for field, formats in _FORMAT_OPTIONS.items()
            if self.format not in formats and getattr(self, field) != type(self).model_fields[field].default
        ]
        if unused:
            raise ValueError(f"{', '.join(unused)}: not used by format {self.format!r}")
        return self


Rollout = Literal["server", "colocate", "transformers"]


class TargetLength(Config):
    """L1/LCPO's length control (Aggarwal & Welleck 2025): each prompt states a budget of N tokens ("Think for at
    most N tokens."), N drawn per example from [``min_tokens``, ``max_tokens``], and the reward pays for keeping to
    it (``tasks.rewards.target_length_reward``)."""

    min_tokens: PositiveInt
    """Smallest budget stated in a prompt."""
    max_tokens: PositiveInt
    """Largest budget stated in a prompt; equal to ``min_tokens``: one fixed budget for every example."""
    mode: Literal["exact", "max"] = "exact"
    """``exact`` (L1-Exact): the penalty is the distance |N - tokens| either way; ``max`` (after L1-Max): only
    the tokens over N count, a shorter completion is not penalised."""
    weight: PositiveFloat = 0.003
    """Reward per token of the penalty. L1's 0.0003 against a correctness reward of 1 is 0.003 against F1's
    weight of 10: 100 tokens off the budget cost as much as 0.03 F1."""

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens {self.max_tokens} is below min_tokens {self.min_tokens}")
        return self


class GRPOConfig(TrainConfig):
    """RE: reinforcement learning with GRPO, reward = 10 * F1 + 1 * schema (TRL GRPOTrainer).

    ``dataset``: a published ``ner`` dataset (``NERExample``, e.g. from ``tasks.sample``); ``model``
    usually the CT model, ``store:<address>``. Rollouts: ``server`` runs ``trl vllm-serve`` on the node's
    last ``rollout_gpus`` GPUs (the stage starts and stops it; training uses the others), ``colocate``
    runs vLLM inside the training processes, ``transformers`` generates with the training model itself
    (CPU). Prompts longer than ``max_prompt_length`` tokens are dropped or refused (``too_long``);
    a cut prompt would lose entities its gold still lists.
    """

    ADDED = TrainConfig.ADDED | {"length_reward_weight", "target_length", "with_cot"}

    num_generations: Annotated[int, Field(ge=2)] = 4
    """Completions per prompt: the group whose rewards are compared (G)."""
    beta: Annotated[float, Field(ge=0)] = 0.04
    """Weight of the KL penalty against the reference model (0 drops the reference model)."""
    epsilon: PositiveFloat = 0.2
    """Clipping range of the probability ratio (the lower bound, and the upper one unless ``epsilon_high``)."""
    learning_rate: PositiveFloat = 1e-6
    """Peak learning rate (AdamW). Not stated in the paper; TRL's GRPO default, and the released config's."""
    per_device_batch_size: PositiveInt = 4
    """Completions per process per micro-batch."""
    max_prompt_length: PositiveInt = 1024
    """Longest prompt in tokens; longer ones: ``too_long``."""
    max_completion_length: PositiveInt = 256
    """Most tokens one completion may have."""
    with_cot: bool = True
    """False asks for the answer alone (``tasks.prompts``), as a CT model trained with ``with_cot: false`` was
    taught; the rewards score the answer either way."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature of the rollouts."""
    loss_type: Literal["dapo", "dr_grpo", "grpo", "bnpo"] = "dapo"
    """How the token losses are aggregated (TRL's ``loss_type``; ``dapo``, TRL 1.16's default: over the active
    tokens of the accumulated batch; ``dr_grpo``, the released config's: over a constant, ``max_completion_length``)."""
    epsilon_high: PositiveFloat | None = None
    """Upper clipping bound of the probability ratio (DAPO's clip-higher); ``None``: ``epsilon``."""
    num_iterations: PositiveInt = 1
    """Optimizer passes over each generated batch (μ of the GRPO paper): each multiplies the optimizer steps."""
    importance_sampling_correction: bool = True
    """Reweight the loss by the ratio of the trainer's to vLLM's token probabilities (TRL's
    ``vllm_importance_sampling_correction``, on by default; added to TRL in August 2025, after the released code
    was written). vLLM rollouts only."""
    kl_bias_correction: bool = True
    """Multiply the KL term by the probability ratio (TRL's ``use_bias_correction_kl``, DeepSeek-V3.2's unbiased
    KL estimate; on by default in TRL 1.16, absent from the released code's TRL)."""
    f1_reward_weight: Annotated[float, Field(ge=0)] = 10.0
    """Weight of the entity F1 in the reward (the paper's 10)."""
    schema_reward_weight: Annotated[float, Field(ge=0)] = 1.0
    """Weight of the answer-format reward (the paper's 1)."""
    length_reward_weight: Annotated[float, Field(ge=0)] = 0.0
    """Weight of the length penalty (``tasks.rewards.length_reward``, after Kimi k1.5: in [-1, 0], only on
    completions whose F1 is at least their group's median, by how far they exceed the shortest of those).
    0 (the default, and the paper) leaves it out. Keep it below ``f1_reward_weight`` times the smallest F1
    difference worth more than any length: 1 against F1's 10 trades at most 0.1 F1 for length."""
    target_length: TargetLength | None = None
    """L1/LCPO target-length mode: a token budget stated in each prompt (drawn per example with ``seed``) and a
    reward for keeping to it; ``None`` (the default, and the paper): off. Not together with
    ``length_reward_weight`` (one length reward at a time). Evaluate such a model with the budget stated too
    (``EvalConfig.state_budget``)."""
    empty_match_f1: Annotated[float, Field(ge=0, le=1)] = 1.0
    """F1 when gold and prediction are both empty. The released code uses 0.0; 1.0 (nothing to find,
    nothing found) is our default."""
    too_long: Literal["drop", "fail"] = "drop"
    """Prompts longer than ``max_prompt_length``: ``drop`` them (counted) or ``fail``."""
    rollout: Rollout = "transformers"
    """Where completions are generated: ``server``, ``colocate`` or ``transformers`` (see above)."""
    rollout_gpus: NonNegativeInt = 0
    """GPUs of the node given to the ``trl vllm-serve`` rollout server (``rollout: server``)."""
    released_split: bool = False
    """The released code's GPU split: one rollout GPU, and each other rollout GPU trains instead, with the same
    per-device batch and gradient accumulation, so ``global_batch_size`` grows with the processes. On the
    ``paper`` preset's 8 GPUs: 7 training + 1 rollout and a global batch of 448 (4 x 16 x 7), where the paper's
    text (and the preset) has 6 + 2 and 384 (4 x 16 x 6). Setting it rewrites ``rollout_gpus``,
    ``parallel.processes_per_node`` and ``global_batch_size`` (shown by ``rner config show``)."""
    PRESETS: ClassVar = {
        "paper": {
            "model": PAPER_BACKBONE,
            "dataset": "datasets/re",
            "prompt": "paper",
            "num_generations": 16,
            "beta": 0.04,
            "epsilon": 0.2,
            "epochs": 1,
            "global_batch_size": 384,  # 4 x 16 accumulation x 6 GPUs (released: x 7 = 448, see released_split)
            "per_device_batch_size": 4,
            "max_completion_length": 4096,
            "max_prompt_length": 2048,
            "rollout": "server",
            "rollout_gpus": 2,
            "bf16": True,
            "gradient_checkpointing": True,
            "deepspeed_zero": 3,
            "parallel": {"processes_per_node": 6},
            # 4,703 prompts x 16 completions / 384 = 196 generation batches, each trained on num_iterations (4)
            # times: 784 optimizer steps. A checkpoint every 160 stores four of them (the released code saves
            # once, at the end of its one epoch: nothing to resume from).
            "save_steps": 160,
            # The rest of the released config/grpo/qwen3-8b.yaml (every value: tests/fixtures/released_config.yaml):
            "loss_type": "dr_grpo",
            "epsilon_high": 0.28,
            "num_iterations": 4,
            "temperature": 0.9,
            "learning_rate": 1e-6,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.1,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "flash_attention": True,
            "f1_reward_weight": 10.0,
            "schema_reward_weight": 1.0,
            "empty_match_f1": 0.0,  # the released F1 of an empty answer to an empty gold
            "importance_sampling_correction": False,  # not in the released code's TRL
            "kl_bias_correction": False,  # not in the released code's TRL
            "seed": 42,
            "logging_steps": 1,
        },
        "smoke": {
            "dataset": "datasets/re",
            "num_generations": 4,
            "max_steps": 2,
            "save_steps": None,  # two steps on a CPU: a failed run simply runs again
            "global_batch_size": 4,
            "per_device_batch_size": 4,
            "max_completion_length": 48,
            "logging_steps": 1,
        },
    }
    # The released config/grpo/qwen3-1.7b.yaml: the same but for the backbone and 16 x 4 accumulation (x 6 = 384).
    PRESETS["paper-1.7b"] = PRESETS["paper"] | {"model": PAPER_BACKBONE_1_7B, "per_device_batch_size": 16}

    @property
    def sequences_per_example(self) -> int:
        """Each prompt makes ``num_generations`` completions; ``global_batch_size`` counts completions."""
        return self.num_generations

    def total_steps(self, examples: int) -> int:
        """Each generated batch is trained on ``num_iterations`` times, an optimizer step each."""
        return super().total_steps(examples) * (1 if self.max_steps else self.num_iterations)

    def batch_units(self) -> list[tuple[int, str]]:
        group = f"num_generations ({self.num_generations}): each prompt's completions form one group"
        return [*super().batch_units(), (self.num_generations, group)]

    @model_validator(mode="before")
    @classmethod
    def _apply_released_split(cls, data: Any) -> Any:
        """``released_split: true`` on the GPUs the rest of the config gives (its preset's included): every rollout
        GPU but one trains, with the same per-device batch and accumulation. Idempotent (a dumped config, read back,
        is the same config); values that are not numbers are left for the fields' own validation to report."""
        data = cls._expand_preset(data)  # the subclass's validator runs first: the preset's GPUs, then the split
        if not isinstance(data, dict):
            return data
        try:
            split = TypeAdapter(bool).validate_python(data.get("released_split", False))
            parallel = data.get("parallel") or {}
            parallel = parallel.model_dump() if isinstance(parallel, BaseModel) else dict(parallel)
            fields = cls.model_fields
            rollout = int(data.get("rollout_gpus", fields["rollout_gpus"].default))
            processes = int(parallel.get("processes_per_node", Parallelism.model_fields["processes_per_node"].default))
            batch = int(data.get("global_batch_size", fields["global_batch_size"].default))
        except (ValidationError, TypeError, ValueError):
            return data
        if not split or rollout <= 1 or batch % processes:
            return data
        trainers = processes + rollout - 1
        parallel["processes_per_node"] = trainers
        return {**data, "rollout_gpus": 1, "parallel": parallel, "global_batch_size": batch // processes * trainers}

    @model_validator(mode="after")
    def _one_length_reward(self) -> Self:
        if self.target_length is not None and self.length_reward_weight > 0:
            raise ValueError("target_length: one length reward at a time; set length_reward_weight to 0 with it")
        if self.target_length is not None and not self.with_cot:
            raise ValueError("target_length: with_cot is false (a model that answers alone has no thinking to budget)")
        return self

    @model_validator(mode="after")
    def _server_has_gpus(self) -> Self:
        if (self.rollout == "server") != (self.rollout_gpus > 0):
            raise ValueError("rollout_gpus > 0 goes with rollout: server (the GPUs its vLLM server runs on), only")
        if self.released_split and self.rollout != "server":
            raise ValueError("released_split: the released GPU split is for rollout: server (one rollout GPU)")
        return self


EVAL_SUITES: dict[str, tuple[str, ...]] = {
    # The paper's Table 1: zero-shot on CrossNER's five domains and the two MIT sets.
    "crossner_mit": (
        "CrossNER_AI", "CrossNER_literature", "CrossNER_music", "CrossNER_politics", "CrossNER_science",
        "mit-movie", "mit-restaurant",
    ),
    "instructuie_20": INSTRUCTUIE_20,
}  # fmt: skip
"""Named eval suites: InstructUIE folder names, resolved under ``EvalConfig.suite_root``."""


class EvalConfig(Config):
    """Zero-shot evaluation: generate on eval sets, score with the paper's metric (and strict spans).

    Eval sets are pinned by the digests of their content (part of the output's address), so where they are
    (``datasets`` paths, ``suite_root``) is not part of the config hash; their names are, through the digests.
    """

    VOLATILE = frozenset({"datasets", "suite_root", "concurrency", "request_timeout_s", "max_retries"})
    ADDED = frozenset({"reasoning_budget", "state_budget"})
    model: Generator = TransformersRunner()
    """The model to evaluate: a running ``endpoint``, a ``vllm`` server the stage starts, or ``transformers`` in
    process."""
    datasets: Seq[Name] = ()
    """Eval sets: addresses of published ``ner`` outputs in the store, ``NERExample`` ``.jsonl`` files,
    InstructUIE-layout folders (``<name>/test.json`` + ``<name>/labels.json``), or ``demo:test``."""
    suite: Name | None = None
    """A named suite (``EVAL_SUITES``: ``crossner_mit``, ``instructuie_20``), resolved under ``suite_root``."""
    suite_root: str | None = None
    """A directory holding the suite's InstructUIE folders, or the id of a hub dataset laid out the same way."""
    max_examples: PositiveInt | None = None
    """At most this many examples per dataset: a sample drawn with ``seed``, kept in the data's order."""
    seed: int = 42
    """Seeds which examples ``max_examples`` keeps of each dataset (with the dataset's name: each set gets its own
    draw, and the same config the same examples)."""
    sampling: SamplingParams = SamplingParams(temperature=0.0, max_tokens=1024)
    """Decoding parameters of every request: greedy by default, as the paper evaluates."""
    stop_at_answer: bool = True
    """End each completion where its answer object closes (``tasks.prompts.ANSWER_STOPS``, added to
    ``sampling.stop``), instead of letting a model that keeps writing after its answer run to ``max_tokens``."""
    tokenizer: Name | None = None
    """Model reference whose tokenizer counts reasoning tokens; default: the evaluated model's own (an
    endpoint has none at hand, so without this its report counts completion tokens only)."""
    per_label_dataset: Name | None = None
    """The dataset whose per-label F1 is charted; default: the one with the most gold entities."""
    prompt: PromptStyle = "rner"
    """The instruction to ask with: the one the model was trained with (``paper`` for the authors' checkpoints)."""
    with_cot: bool = True
    """Whether the model reasons before it answers; ``false`` asks a model trained on answers alone (SFT with
    ``with_cot: false``) for the answer alone (the ``paper`` instruction is the same either way)."""
    reasoning_budget: NonNegativeInt | None = None
    """Most tokens the model may think before it answers (budget forcing, ``tasks.budget``): where it has not
    closed ``</think>`` by then, its reasoning is cut there and the answer generated after it, in up to
    ``sampling.max_tokens`` more. 0 answers with an empty think block; ``None``, no budget. Needs
    ``with_cot``."""
    state_budget: bool = False
    """Also state ``reasoning_budget`` at the end of the prompt ("Think for at most N tokens.",
    ``tasks.prompts.BUDGET_STATEMENT``): how a model trained with GRPO ``target_length`` was asked."""
    shard_size: PositiveInt = 64
    """Examples per output shard; a resumed run skips finished shards."""
    concurrency: PositiveInt = 256
    """Requests in flight to the server. vLLM batches up to 256 sequences by default (128 on a CPU, 1024 on
    H100-class GPUs); a lower bound here would leave the server's batch part empty (at 64 in flight, as the LLM
    stages send, the eval benchmark ran at 0.877 of a client sending all at once; at 256, 1.014: BENCHMARKS.md).
    Requests beyond the server's batch wait in its queue, and that wait counts against ``request_timeout_s``."""
    request_timeout_s: PositiveFloat = 600.0
    """Seconds one request may take (queueing at the server included) before it is retried."""
    max_retries: NonNegativeInt = 5
    """More attempts of a failed request (exponential backoff) before it counts as failed."""
    PRESETS: ClassVar = {
        "paper": {
            "model": {"kind": "vllm", "model": PAPER_BACKBONE, "max_model_len": 8192},
            "prompt": "paper",
            "suite": "crossner_mit",
            "sampling": {"max_tokens": 4096},
        },
        "smoke": {"datasets": ["demo:test"], "max_examples": 2, "sampling": {"max_tokens": 256}, "shard_size": 8},
    }

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> Self:
        if not self.datasets and self.suite is None:
            raise ValueError("give 'datasets' or a 'suite'")
        return self

    @model_validator(mode="after")
    def _known_suite(self) -> Self:
        if self.suite is not None and self.suite not in EVAL_SUITES:
            raise ValueError(f"unknown suite {self.suite!r} (known: {', '.join(EVAL_SUITES)})")
        return self

    @model_validator(mode="after")
    def _budget_applies(self) -> Self:
        if self.reasoning_budget is not None and not self.with_cot:
            raise ValueError("reasoning_budget: with_cot is false (the model answers without reasoning)")
        if self.state_budget and self.reasoning_budget is None:
            raise ValueError("state_budget: give reasoning_budget, the budget to state in the prompt")
        return self


def check_loads_trained_models(evaluate: EvalConfig) -> None:
    """Refuse an evaluation that cannot load the models a flow trains: a running endpoint serves its own."""
    if evaluate.model.kind == "endpoint":
        raise ValueError("evaluate.model: a running endpoint cannot serve the models this flow trains; "
                         "use kind vllm or transformers")  # fmt: skip


class PipelineConfig(Config):
    """The whole method on one config: CG → CT → RE → zero-shot evaluation (the ``pipeline`` flow).

    The flow chains the stages: it sets ``sft.dataset`` (the CG output, mixed with ``extra_cot``),
    ``grpo.dataset`` (the sample output), ``grpo.model`` (the CT model) and the model of ``evaluate``
    (the CT model, then the RE model, each with ``evaluate.model``'s kind), replacing the values
    given there.
    """

    VOLATILE = frozenset({"extra_cot"})
    ADDED = frozenset({"evaluate_base"})
    cg: CGConfig
    """CG: the NER-CoT data from the raw passages."""
    extra_cot: Seq[Name] = ()
    """More CoT datasets mixed into CT's training data after the CG output (``demo:cot``: the hand-written
    reasoning of the demo corpus, which the smoke preset uses because the 135M teacher writes almost none)."""
    sft: SFTConfig
    """CT: supervised fine-tuning on the CoT data (``dataset`` is set by the flow)."""
    sample: SampleConfig
    """The RE data, sampled from labelled sets."""
    grpo: GRPOConfig
    """RE: GRPO from the CT model on the sample (``dataset`` and ``model`` are set by the flow)."""
    evaluate: EvalConfig
    """Zero-shot evaluation of the CT and RE models (``model``'s kind is kept, its model set by the flow)."""
    evaluate_base: bool = True
    """Evaluate the model CT starts from (``sft.model``) the same way, as the first row of the report: what the
    training added is the difference to it."""
    PRESETS: ClassVar = {
        # The demo (`make demo`, <= 15 min on 2 cores): on answers alone, since a 135M model's reasoning chains
        # take ~4x the tokens to train on and to generate at each of the three evaluations. 32 steps of 4 (3.6
        # epochs of the 36 demo passages) at 1e-4 teach the answer format and most entities (the base model
        # answers in prose: F1 0); BENCHMARKS.md has the measured run.
        "smoke": {
            "cg": CGConfig.PRESETS["smoke"] | {"input": DEMO_PASSAGES},
            "extra_cot": ["demo:cot"],
            "sft": SFTConfig.PRESETS["smoke"]
            | {"with_cot": False, "max_steps": 32, "learning_rate": 1e-4, "warmup_steps": 2, "logging_steps": 4},
            "sample": SampleConfig.PRESETS["smoke"],
            # Answers are ~50 tokens (longest ~90): room for them, so that a cut answer is not what RE learns from.
            "grpo": GRPOConfig.PRESETS["smoke"] | {"with_cot": False, "max_completion_length": 128},
            # The whole demo test set (18 passages, 3 per domain) in one batch; an answer fits in 128 tokens.
            "evaluate": EvalConfig.PRESETS["smoke"]
            | {
                "with_cot": False,
                "max_examples": None,
                "sampling": {"max_tokens": 128},
                "model": {"kind": "transformers", "batch_size": 18},
            },
        },
        "paper": {
            "cg": CGConfig.PRESETS["paper"],
            "sft": SFTConfig.PRESETS["paper"],
            "sample": SampleConfig.PRESETS["paper"],
            "grpo": GRPOConfig.PRESETS["paper"],
            "evaluate": EvalConfig.PRESETS["paper"],
        },
    }
    # The paper's method on the 1.7B backbone, as the authors released its training configs.
    PRESETS["paper-1.7b"] = PRESETS["paper"] | {
        "sft": SFTConfig.PRESETS["paper-1.7b"],
        "grpo": GRPOConfig.PRESETS["paper-1.7b"],
    }

    @model_validator(mode="after")
    def _evaluate_can_load_trained_models(self) -> Self:
        check_loads_trained_models(self.evaluate)
        return self

    @model_validator(mode="after")
    def _one_answer_form(self) -> Self:
        forms = {"sft": self.sft.with_cot, "grpo": self.grpo.with_cot, "evaluate": self.evaluate.with_cot}
        if len(set(forms.values())) > 1:
            given = ", ".join(f"{stage}.with_cot {value}".lower() for stage, value in forms.items())
            raise ValueError(f"with_cot: {given}; RE and the evaluations ask the CT model as it was trained")
        return self


STAGE_CONFIGS: dict[str, type[Config]] = {
    "annotate": AnnotateConfig,
    "validate": ValidateConfig,
    "judge": JudgeConfig,
    "publish": PublishConfig,
    "cg": CGConfig,
    "mix": MixConfig,
    "sft": SFTConfig,
    "sample": SampleConfig,
    "import": ImportConfig,
    "grpo": GRPOConfig,
    "evaluate": EvalConfig,
}
