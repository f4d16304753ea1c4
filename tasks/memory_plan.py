"""Per-GPU memory of a training run or an LLM server, planned from the model's config before anything loads.

    rner train plan grpo --config grpo.yaml --gpu h100-80gb     # a table; --json for the same as JSON
    rner train plan cg --preset paper                           # the teacher's and the judge's vLLM servers

    shape = model_shape("Qwen/Qwen3-8B-Base")                   # parameters counted on the meta device
    parts = plan_training(GRPOConfig.preset("paper"), shape, GPUS["h100-80gb"])
    check_memory(config, model_path, settings)                  # what every train stage runs first

**Model shape** comes from the model's ``config.json`` alone, never its weights: a local model directory
(``transformers.AutoConfig``), ``store:<address>`` and ``s3://`` (the one file, read from the store), the embedded
``default``, or a hub id: the ids the presets use are in ``KNOWN_CONFIGS`` (their published config.json values, for
planning without a network); other ids are read from the Hugging Face cache or the hub. The parameters are counted
exactly on a model built from that config under accelerate's ``init_empty_weights`` (meta tensors, no memory):
the total (tied weights once) and DeepSpeed's "largest layer" (the most parameters one module holds itself, which
ZeRO-3 gathers whole). Checkpoints stored in FP8 (DeepSeek-R1: ``quantization_config.quant_method: fp8``) keep their
decoder layers' weight matrices in one byte each (plus one fp32 scale per 128 x 128 block); the rest in 16 bits.

**Training** (per training process, i.e. per GPU; P parameters, N = ``parallel.world_size`` processes):

- *Weights, gradients, optimizer states* (AdamW). ZeRO-2/3 are DeepSpeed's own estimators,
  ``estimate_zero2_model_states_mem_needs`` (``deepspeed.runtime.zero.stage_1_and_2``) and
  ``estimate_zero3_model_states_mem_needs`` (``deepspeed.runtime.zero.stage3``) without offload: ``2P + 18P/N``
  and ``18P/N + 4 x largest layer`` bytes (18 = 16-bit gradients 2 + fp32 gradients 4 + fp32 weights 4 + Adam's two
  moments 8). DeepSpeed is called when it imports (the GPU images, where ``deepspeed_zero`` runs); elsewhere (it is a
  GPU extra, an sdist) the same formulas, transcribed from DeepSpeed 0.19.8 and tested against it
  (tests/test_memory_plan.py). ZeRO-1 (no estimator ships) follows the same accounting with the 16-bit weights and
  gradients whole: ``4P + 16P/N`` (Rajbhandari et al. 2020, "ZeRO", Fig. 1). ZeRO-0 is the HF trainer with torch's
  AdamW on a model loaded in the training dtype (``bf16``: bfloat16, else float32): weights, gradients and both
  moments in that dtype, ``4 x P x dtype bytes`` (the float32 case is accelerate's ``estimate_training_usage``).
- *Reference model* (GRPO with ``beta > 0``): TRL keeps a frozen copy in the training dtype, partitioned like the
  weights under ZeRO-3 (``2P/N``), whole otherwise.
- *Activations* of one micro-batch of ``per_device_batch_size`` sequences of the configured maximum length s
  (SFT: ``max_seq_len``; GRPO: ``max_prompt_length + max_completion_length``), t = b x s tokens: Korthikanti et al.
  2022, "Reducing Activation Recomputation in Large Transformer Models", §4.1: a layer keeps ``34·s·b·h + 5·a·s²·b``
  bytes of 16-bit activations. The ``5·a·s²·b`` attention scores are not kept by FlashAttention-2 or PyTorch's SDPA
  kernels (the only attentions the stages use), and these models have no dropout (the paper's two ``s·b·h`` masks),
  leaving ``32·s·b·h`` for a GPT block. The same accounting for this block (grouped-query attention with q = heads x
  head_dim and kv = kv_heads x head_dim channels, a gated MLP of width f, RMSNorm) keeps, per token and layer:
  attention ``2h + 4q + 4kv`` (its input, Q, K, V, its output), MLP ``2h + 8f`` (input, gate, act(gate), up, their
  product), and per norm ``6h`` as transformers writes RMSNorm (its input's float32 copy and the normalized tensor) or
  ``2h`` with Liger's fused RMSNorm (``liger_kernel``): with q = kv = h, f = 4h (ungated: ``2h + 4f``) and fused
  norms this is Korthikanti's 32. Without gradient checkpointing all L layers keep theirs; with it (Korthikanti's
  "full recomputation") each layer keeps its input, ``2·t·h``, and the backward recomputes one layer at a time. The
  logits are never materialized: TRL 1.16's trainers score tokens through a fused LM head, in tiles
  (``trl.trainer.utils.add_fused_lm_head``). Float32 training doubles every activation.
- *Generation on the training GPUs* (GRPO): ``server`` rollouts need none (the trainers only score); ``colocate``
  gives vLLM TRL's ``vllm_gpu_memory_utilization`` (0.3) of each GPU; ``transformers`` rollouts keep a KV cache for
  the per-process generation batch (``per_device_batch_size x gradient_accumulation_steps`` sequences, TRL's default
  ``steps_per_generation``).
- *CUDA context and communication buffers*: an allowance of ``RUNTIME_GIB`` per process.

A training plan fits when its total stays within ``1 - TRAINING_HEADROOM`` of the GPU's memory: the estimate counts
tensors, and PyTorch's caching allocator needs room beyond them (fragmentation across micro-batches of different
lengths, the backward's transient gradients), as vLLM leaves 10% by default.

**vLLM servers** (the GRPO rollout server, a ``VLLMLaunch`` teacher/judge/evaluation server, a multi-node server):
vLLM takes ``gpu_memory_utilization`` (0.9 unless ``--gpu-memory-utilization`` is given) of every GPU; the weights
are split over tensor x pipeline parallel GPUs (each data-parallel replica holds its own), ``VLLM_RESERVE_GIB`` per GPU
goes to its working memory (the profiling run's activations, CUDA graphs), and the rest is KV cache: ``2 x layers x
kv_heads x head_dim x dtype bytes`` per token (K and V of every layer; multi-head latent attention, DeepSeek's, caches
``layers x (kv_lora_rank + qk_rope_head_dim)`` instead), ``max_model_len`` tokens per full-length sequence. A server
fits when its KV cache holds at least one full-length sequence (vLLM refuses to start otherwise); the plan says how
many run at once against how many the stage sends (vLLM queues the rest).

``check_memory`` refuses (``PlanError``) a training config that does not fit the GPU it runs on: the CUDA device, or
``RNER_GPU`` (a name of ``GPUS``; on a CPU machine the check runs only when it is set). ``RNER_MEMORY_CHECK=warn``
logs instead of refusing, ``off`` skips the check.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas import Config, GRPOConfig, SFTConfig, TrainConfig
from schemas.configs import DEFAULT_MODEL, Endpoint, TransformersRunner, VLLMLaunch
from tasks.errors import RnerError
from tasks.settings import Settings

GIB = 2**30
_log = logging.getLogger("rner.plan")

TRAINING_HEADROOM = 0.10
"""The share of a GPU's memory a training plan leaves free (see the module docstring)."""
RUNTIME_GIB = 2.0
"""CUDA context, NCCL and cuBLAS workspaces of one training process: an allowance, not an estimate."""
VLLM_UTILIZATION = 0.9
"""vLLM's default ``gpu_memory_utilization`` (also ``trl vllm-serve``'s)."""
VLLM_RESERVE_GIB = 2.0
"""vLLM's working memory per GPU besides weights and KV cache (its profiling run's activations, CUDA graphs): an
allowance."""
TRL_COLOCATE_UTILIZATION = 0.3
"""TRL's ``vllm_gpu_memory_utilization`` default: vLLM's share of each training GPU with ``rollout: colocate``."""


class PlanError(RnerError, ValueError):
    """A config that cannot fit its GPUs, or a model whose shape cannot be found."""


# --- GPUs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float


GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        # Total memory as nvidia-smi reports it (MiB / 1024).
        GPU("h100-80gb", 81_559 / 1024),
        GPU("h200-141gb", 143_771 / 1024),
        GPU("a800-80gb", 81_920 / 1024),
        GPU("a100-80gb", 81_920 / 1024),
        GPU("a100-40gb", 40_960 / 1024),
        GPU("l40s-48gb", 46_068 / 1024),
    )
}


def gpu_named(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise PlanError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})") from None


def gpu_in_use(settings: Settings) -> GPU | None:
    """The GPU a run on this machine trains on: ``RNER_GPU`` if set, else the first CUDA device, else None."""
    if settings.gpu:
        return gpu_named(settings.gpu)
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GPU(props.name, props.total_memory / GIB)


# --- model shape ---------------------------------------------------------------------------------------------

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    # The models' config.json on the Hugging Face Hub, the fields that shape them: planning needs no network.
    "Qwen/Qwen3-8B-Base": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": False, "hidden_act": "silu",
        "rms_norm_eps": 1e-06, "rope_theta": 1000000, "attention_bias": False, "torch_dtype": "bfloat16",
    },
    "Qwen/Qwen3-1.7B-Base": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True, "hidden_act": "silu",
        "rms_norm_eps": 1e-06, "rope_theta": 1000000, "attention_bias": False, "torch_dtype": "bfloat16",
    },
    "Qwen/Qwen3-32B": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 25600,
        "num_hidden_layers": 64, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": False, "hidden_act": "silu",
        "rms_norm_eps": 1e-06, "rope_theta": 1000000, "attention_bias": False, "torch_dtype": "bfloat16",
    },
    "deepseek-ai/DeepSeek-R1": {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4,
        "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "vocab_size": 129280, "max_position_embeddings": 163840, "tie_word_embeddings": False, "hidden_act": "silu",
        "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-06, "rope_theta": 10000, "torch_dtype": "bfloat16",
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]},
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {  # the embedded `default`, before it is converted on this machine
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True, "hidden_act": "silu",
        "rms_norm_eps": 1e-05, "rope_theta": 100000, "torch_dtype": "bfloat16",
    },
}  # fmt: skip
_KNOWN = {name.lower(): name for name in KNOWN_CONFIGS}
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelShape:
    """What memory planning needs to know of a model."""

    name: str
    source: str
    """Where its config came from."""
    model_type: str
    params: int
    largest_layer_params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    kv_elements_per_token: int
    """K and V elements a KV cache keeps per token over all layers."""
    quantized_params: int = 0
    """Parameters a FP8 checkpoint stores in one byte each."""
    quant_block: int = 0
    """Elements per FP8 scale (a 128 x 128 block: 16384); 0 when not quantized."""

    def weight_bytes(self, dtype_bytes: int) -> float:
        """The weights as a server loads them: FP8 matrices in one byte (+ their scales), the rest in
        ``dtype_bytes``."""
        scales = 4 * self.quantized_params / self.quant_block if self.quant_block else 0.0
        return (self.params - self.quantized_params) * dtype_bytes + self.quantized_params + scales


def model_config(ref: str, *, settings: Settings | None = None, store: Any = None) -> tuple[Any, str]:
    """The transformers config of a model reference, and where it came from; never the weights."""
    from transformers import AutoConfig

    from tasks.models import MODEL_PREFIX, STORE_SCHEME, default_model_dir

    settings = settings or Settings()
    if ref == DEFAULT_MODEL:
        local = default_model_dir(settings)
        if (local / "config.json").is_file():
            return AutoConfig.from_pretrained(local), f"{local}/config.json"
        return _known(DEFAULT_HUB_ID)
    if ref.startswith((STORE_SCHEME, "s3://")):
        from tasks.store import Store

        if ref.startswith(STORE_SCHEME):
            where = store or Store.from_settings(settings)
            path = f"{ref.removeprefix(STORE_SCHEME)}/{MODEL_PREFIX}/config.json"
        else:
            where, path = Store(ref, settings), "config.json"
        try:
            data = json.loads(where.get(path))
        except (FileNotFoundError, RnerError, ValueError) as e:
            raise PlanError(f"model {ref}: cannot read its config.json ({e})") from None
        return AutoConfig.for_model(**data), where.uri(path)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlanError(f"model {ref}: the directory has no config.json")
        return AutoConfig.from_pretrained(path), f"{path}/config.json"
    if ref.lower() in _KNOWN:
        return _known(_KNOWN[ref.lower()])
    try:
        return AutoConfig.from_pretrained(ref), f"{ref} on the Hugging Face Hub"
    except (OSError, ValueError) as e:
        known = ", ".join(KNOWN_CONFIGS)
        raise PlanError(
            f"model {ref}: no config.json at hand ({str(e).splitlines()[0]}); give a local model directory, "
            f"or one of the hub ids planned offline: {known}"
        ) from None


def _known(name: str) -> tuple[Any, str]:
    from transformers import AutoConfig

    return AutoConfig.for_model(**KNOWN_CONFIGS[name]), f"{name} (config.json values in tasks/memory_plan.py)"


def model_shape(ref: str, *, settings: Settings | None = None, store: Any = None) -> ModelShape:
    """The shape of ``ref``'s model, from its config alone (see the module docstring)."""
    config, source = model_config(ref, settings=settings, store=store)
    return shape_of(config, name=ref, source=source)


def shape_of(config: Any, *, name: str, source: str) -> ModelShape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params, largest, quantized = _count_parameters(config.to_json_string(use_diff=False))
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if getattr(text, "kv_lora_rank", None):  # multi-head latent attention caches one latent per token and layer
        kv_per_token = text.num_hidden_layers * (text.kv_lora_rank + text.qk_rope_head_dim)
    else:
        kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim
    quant = getattr(config, "quantization_config", None) or {}
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    block = quant.get("weight_block_size") or (0, 0)
    return ModelShape(
        name=name,
        source=source,
        model_type=config.model_type,
        params=params,
        largest_layer_params=largest,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        kv_elements_per_token=kv_per_token,
        quantized_params=quantized,
        quant_block=block[0] * block[1] if quantized else 0,
    )


@functools.lru_cache(maxsize=16)
def _count_parameters(config_json: str) -> tuple[int, int, int]:
    """(total, largest layer, FP8-stored) parameters of the model ``config_json`` describes, counted on the meta
    device (accelerate's ``init_empty_weights``): nothing is allocated, an 8B model builds in about a second."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    quant = data.pop("quantization_config", None) or {}
    config = AutoConfig.for_model(**data)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # as loading does (on the meta device from_config leaves them apart)
    total = sum(p.numel() for p in model.parameters())  # tied parameters once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    quantized = 0
    if quant.get("quant_method") == "fp8":
        # DeepSeek's FP8 checkpoints: the decoder layers' weight matrices (experts included), not the router's
        # gate, the norms, the embeddings or the LM head.
        skip = tuple(quant.get("modules_to_not_convert") or ())
        quantized = sum(
            p.numel()
            for n, p in model.named_parameters()
            if ".layers." in n and p.dim() >= 2 and not n.endswith("mlp.gate.weight") and not any(m in n for m in skip)
        )
    return total, largest, quantized


# --- plans ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    what: str
    bytes: float
    formula: str
    counted: bool = True
    """False: shown for comparison, not part of the total (activations without checkpointing, when it is on)."""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class Part:
    """One kind of process on ``gpus`` GPUs of one type, and what each of those GPUs holds."""

    title: str
    gpu: GPU
    gpus: int
    items: tuple[Item, ...]
    limit_gib: float
    """What the part may plan per GPU: the training headroom's share of memory, or vLLM's budget."""
    fits: bool
    summary: str
    """One line: the verdict, or what to change."""
    notes: tuple[str, ...] = ()

    @property
    def total_gib(self) -> float:
        return sum(i.bytes for i in self.items if i.counted) / GIB

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["items"] = [{**asdict(i), "gib": round(i.gib, 2)} for i in self.items]
        return {**data, "total_gib": round(self.total_gib, 2), "verdict": self.verdict}

    @property
    def verdict(self) -> str:
        return "fits" if self.fits else "does not fit"


def _dtype_bytes(config: TrainConfig) -> int:
    return 2 if config.bf16 else 4


def sequence_length(config: TrainConfig) -> int:
    """The longest sequence a micro-batch holds: SFT's ``max_seq_len``, GRPO's prompt + completion."""
    if isinstance(config, GRPOConfig):
        return config.max_prompt_length + config.max_completion_length
    if isinstance(config, SFTConfig):
        return config.max_seq_len
    raise PlanError(f"no sequence length for {type(config).__name__}")


def model_state_items(config: TrainConfig, shape: ModelShape) -> list[Item]:
    """Weights, gradients and AdamW states per process under ``deepspeed_zero`` (see the module docstring)."""
    p, n, stage = shape.params, config.parallel.world_size, config.deepspeed_zero
    largest = shape.largest_layer_params
    if stage == 0:
        w = _dtype_bytes(config)
        dtype = "bf16" if w == 2 else "fp32"
        moments = f"AdamW's two moments, P x 2 x {w} ({dtype}: torch keeps the weights' dtype)"
        return [
            Item("weights", w * p, f"P x {w} ({dtype}), whole on every process (no ZeRO)"),
            Item("gradients", w * p, f"P x {w} ({dtype})"),
            Item("optimizer states", 2 * w * p, moments),
        ]
    if stage == 1:
        rows = [
            Item("weights", 2 * p + 4 * p / n, "P x 2 (16-bit, whole) + P x 4 / N (fp32 master, partitioned)"),
            Item("gradients", 2 * p + 4 * p / n, "P x 2 (16-bit, whole) + P x 4 / N (fp32, partitioned)"),
            Item("optimizer states", 8 * p / n, "P x 8 / N (Adam's moments in fp32, partitioned)"),
        ]
        return rows
    if stage == 2:
        rows = [
            Item("weights", 2 * p + 4 * p / n, "P x 2 (16-bit, whole) + P x 4 / N (fp32 master)"),
            Item("gradients", 6 * p / n, "P x (2 + 4) / N (16-bit and fp32, partitioned)"),
            Item("optimizer states", 8 * p / n, "P x 8 / N (Adam's moments in fp32)"),
        ]
        estimate, source = zero2_gpu_bytes(p, config.parallel.processes_per_node, config.parallel.num_nodes)
    else:
        rows = [
            Item("weights", 4 * p / n + 2 * largest, "P x 4 / N (fp32 master) + 2 x largest layer (gathered, 16-bit)"),
            Item("gradients", 6 * p / n + 2 * largest, "P x (2 + 4) / N + 2 x largest layer (16-bit, gathered)"),
            Item("optimizer states", 8 * p / n, "P x 8 / N (Adam's moments in fp32)"),
        ]
        estimate, source = zero3_gpu_bytes(p, largest, config.parallel.processes_per_node, config.parallel.num_nodes)
    if abs(sum(r.bytes for r in rows) - estimate) > 8:  # a DeepSpeed whose accounting changed: its word counts
        return [Item(f"weights + gradients + optimizer (ZeRO-{stage})", estimate, source)]
    return [*rows, Item(f"  = model states (ZeRO-{stage})", estimate, source, counted=False)]


@functools.cache
def _deepspeed() -> Any:
    """DeepSpeed's ZeRO estimators, when DeepSpeed imports here (the GPU images); None elsewhere."""
    try:
        from deepspeed.runtime.zero import stage3, stage_1_and_2
    except Exception:  # not installed, or it cannot set itself up on this machine
        return None
    return stage_1_and_2, stage3


def zero2_gpu_bytes(params: int, gpus_per_node: int, nodes: int) -> tuple[int, str]:
    """GPU bytes of ZeRO-2 model states per process, without offload, and which estimator said so."""
    ds = _deepspeed()
    if ds is not None:
        _, gpu = ds[0].estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=False)
        return int(gpu), "DeepSpeed's estimate_zero2_model_states_mem_needs"
    return zero2_transcribed(params, gpus_per_node, nodes), "DeepSpeed 0.19.8's ZeRO-2 estimate (transcribed)"


def zero3_gpu_bytes(params: int, largest_layer: int, gpus_per_node: int, nodes: int) -> tuple[int, str]:
    """GPU bytes of ZeRO-3 model states per process, without offload, and which estimator said so."""
    ds = _deepspeed()
    if ds is not None:
        _, gpu, _ = ds[1].estimate_zero3_model_states_mem_needs(
            params, largest_layer, gpus_per_node, nodes, cpu_offload=False, cpu_offload_params=False
        )
        return int(gpu), "DeepSpeed's estimate_zero3_model_states_mem_needs"
    transcribed = zero3_transcribed(params, largest_layer, gpus_per_node, nodes)
    return transcribed, "DeepSpeed 0.19.8's ZeRO-3 estimate (transcribed)"


def zero2_transcribed(params: int, gpus_per_node: int, nodes: int) -> int:
    """``deepspeed/runtime/zero/stage_1_and_2.py`` (0.19.8), ``estimate_zero2_model_states_mem_needs`` with
    ``cpu_offload=False``: its GPU bytes."""
    return 2 * params + int(18 * params / (nodes * gpus_per_node))


def zero3_transcribed(params: int, largest_layer: int, gpus_per_node: int, nodes: int) -> int:
    """``deepspeed/runtime/zero/stage3.py`` (0.19.8), ``estimate_zero3_model_states_mem_needs`` with
    ``cpu_offload=False``: its GPU bytes (``zero_init`` changes only the CPU side)."""
    return 4 * largest_layer + int(18 * params / (nodes * gpus_per_node))


def layer_activation_bytes(shape: ModelShape, tokens: int, *, fused_norms: bool, dtype_bytes: int = 2) -> float:
    """What one decoder layer keeps for its backward over ``tokens`` tokens (see the module docstring)."""
    h, f = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = (2 * h + 4 * q + 4 * kv) + (2 * h + 8 * f) + 2 * (2 * h if fused_norms else 6 * h)
    return per_token * tokens * dtype_bytes / 2


def micro_batch_tokens(config: TrainConfig) -> int:
    """The most tokens one micro-batch holds: ``per_device_batch_size`` sequences of the longest length."""
    return config.per_device_batch_size * sequence_length(config)


def padding_free(config: TrainConfig) -> bool:
    """Whether a micro-batch holds its examples' own lengths (SFT's ``padding_free`` without packing), so that the
    data, not the config, decides its size."""
    return isinstance(config, SFTConfig) and config.padding_free and not config.packing


def activation_items(config: TrainConfig, shape: ModelShape, tokens: int | None = None) -> list[Item]:
    """The activations of one micro-batch of ``tokens`` tokens (default ``micro_batch_tokens``), with and without
    gradient checkpointing; the configured one counts."""
    t = tokens or micro_batch_tokens(config)
    w = _dtype_bytes(config)
    layer = layer_activation_bytes(shape, t, fused_norms=config.liger_kernel, dtype_bytes=w)
    norms = "2h per norm (Liger)" if config.liger_kernel else "6h per norm"
    per_layer = f"t·(2h + 4q + 4kv + 2h + 8f + {norms})"
    b, s = config.per_device_batch_size, sequence_length(config)
    size = f"t = {t} tokens" if tokens else f"t = {b} x {s} tokens"
    where = f"{size}, L = {shape.layers}, Korthikanti et al. 2022 §4.1 (tasks/memory_plan.py)"
    kept = w * t * shape.hidden * shape.layers + layer
    ckpt = Item(
        "activations, gradient checkpointing", kept,
        f"2·t·h·L (each layer's input) + one layer recomputed, {per_layer}; {where}",
        counted=config.gradient_checkpointing,
    )  # fmt: skip
    full = Item(
        "activations, no checkpointing", shape.layers * layer, f"L x {per_layer}; {where}",
        counted=not config.gradient_checkpointing,
    )  # fmt: skip
    return [ckpt, full] if config.gradient_checkpointing else [full, ckpt]


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int = 2) -> int:
    return shape.kv_elements_per_token * dtype_bytes


def _kv_formula(shape: ModelShape, dtype_bytes: int) -> str:
    if shape.kv_elements_per_token != 2 * shape.layers * shape.kv_heads * shape.head_dim:
        return f"layers x (kv_lora_rank + qk_rope_head_dim) x {dtype_bytes} (latent attention)"
    return f"2 x {shape.layers} layers x {shape.kv_heads} kv heads x {shape.head_dim} x {dtype_bytes}"


def training_items(config: TrainConfig, shape: ModelShape, gpu: GPU, tokens: int | None = None) -> list[Item]:
    """Everything one training process holds on its GPU, with micro-batches of ``tokens`` tokens (default: as
    configured, ``micro_batch_tokens``)."""
    items = model_state_items(config, shape)
    if isinstance(config, GRPOConfig) and config.beta > 0:
        w, n = _dtype_bytes(config), config.parallel.world_size
        if config.deepspeed_zero == 3:
            items.append(
                Item("reference model", w * shape.params / n, f"P x {w} / N (frozen copy, ZeRO-3 partitioned)")
            )
        else:
            items.append(Item("reference model", w * shape.params, f"P x {w} (frozen copy, whole)"))
    items += activation_items(config, shape, tokens)
    if isinstance(config, GRPOConfig):
        items += _generation_items(config, shape, gpu)
    items.append(Item("CUDA context, NCCL, cuBLAS", RUNTIME_GIB * GIB, "an allowance per process"))
    return items


def _generation_items(config: GRPOConfig, shape: ModelShape, gpu: GPU) -> list[Item]:
    if config.rollout == "colocate":
        share = TRL_COLOCATE_UTILIZATION * gpu.memory_gib * GIB
        how = f"TRL's vllm_gpu_memory_utilization {TRL_COLOCATE_UTILIZATION} of the GPU"
        return [Item("vLLM in the process (colocate)", share, how)]
    if config.rollout == "transformers":
        w = _dtype_bytes(config)
        sequences = config.per_device_batch_size * config.gradient_accumulation_steps
        s = sequence_length(config)
        kv = kv_bytes_per_token(shape, w) * s * sequences
        how = f"{sequences} sequences x {s} tokens x {_kv_formula(shape, w)}"
        return [Item("generation KV cache (transformers)", kv, how)]
    return []


def _total(items: Sequence[Item]) -> float:
    return sum(i.bytes for i in items if i.counted) / GIB


def token_budget(config: TrainConfig, shape: ModelShape, gpu: GPU) -> int:
    """The most tokens a micro-batch may hold on ``gpu`` with everything else as configured (0: not even one)."""
    limit = (1 - TRAINING_HEADROOM) * gpu.memory_gib
    fixed = _total(training_items(config, shape, gpu, tokens=1)) - _total(activation_items(config, shape, tokens=1))
    per_token = _total(activation_items(config, shape, tokens=1))  # activations are linear in the tokens
    return max(0, math.floor((limit - fixed) / per_token))


def _training_part(config: TrainConfig, shape: ModelShape, gpu: GPU, title: str) -> Part:
    limit = (1 - TRAINING_HEADROOM) * gpu.memory_gib
    most = micro_batch_tokens(config)
    budget = token_budget(config, shape, gpu)
    notes = [f"a training GPU may plan {limit:.1f} GiB ({1 - TRAINING_HEADROOM:.0%} of {gpu.memory_gib:.1f} GiB)"]
    b, s = config.per_device_batch_size, sequence_length(config)
    if padding_free(config) and most > budget >= s:
        # The data decides: plan the micro-batches this GPU holds, and say what that asks of the data.
        items = training_items(config, shape, gpu, tokens=budget)
        items.append(
            replace(activation_items(config, shape)[0], what=f"activations at {b} x {s} tokens", counted=False)
        )
        summary = (
            f"fits padding-free micro-batches of up to {budget} tokens (~{_total(items):.0f} GiB per GPU on "
            f"{gpu.name}): {b} examples averaging under {budget // b} tokens; {b} full-length ones ({most} tokens) "
            "would not fit"
        )
        notes.append(f"padding_free: a micro-batch holds its {b} examples' own lengths, at most {b} x {s} tokens")
        return Part(title, gpu, config.parallel.processes_per_node, tuple(items), limit, True, summary, tuple(notes))
    items = training_items(config, shape, gpu)
    total = _total(items)
    fits = total <= limit
    summary = (
        f"fits: ~{total:.1f} GiB of {gpu.memory_gib:.1f} GiB per GPU on {gpu.name}"
        if fits
        else _training_advice(config, shape, gpu, total, limit)
    )
    notes.append(f"every micro-batch planned at full length ({b} x {s} tokens): shorter ones use less")
    return Part(title, gpu, config.parallel.processes_per_node, tuple(items), limit, fits, summary, tuple(notes))


def _fits(config: TrainConfig, shape: ModelShape, gpu: GPU, **update: Any) -> float | None:
    """The total with ``update`` applied to the config, when it fits; None when it does not."""
    changed = config.model_copy(update=update)
    total = _total(training_items(changed, shape, gpu))
    return total if total <= (1 - TRAINING_HEADROOM) * gpu.memory_gib else None


def _training_advice(config: TrainConfig, shape: ModelShape, gpu: GPU, total: float, limit: float) -> str:
    """Which field to change, and to what: each single change that makes the plan fit."""
    activations = _total(activation_items(config, shape))
    options: list[str] = []
    if not config.gradient_checkpointing and (t := _fits(config, shape, gpu, gradient_checkpointing=True)):
        options.append(f"set gradient_checkpointing: true (~{t:.0f} GiB)")
    world = config.parallel.world_size
    for b in range(config.per_device_batch_size - 1, 0, -1):
        if config.global_batch_size % (b * world):  # not a whole number of micro-batches
            continue
        if t := _fits(config, shape, gpu, per_device_batch_size=b):
            options.append(f"lower per_device_batch_size to {b} (~{t:.0f} GiB)")
            break
    if not config.liger_kernel and (t := _fits(config, shape, gpu, liger_kernel=True)):
        options.append(f"set liger_kernel: true (~{t:.0f} GiB)")
    if config.deepspeed_zero < 3 and (t := _fits(config, shape, gpu, deepspeed_zero=3)):
        options.append(f"set deepspeed_zero: 3 (~{t:.0f} GiB)")
    if activations >= total - activations:
        lead = f"per_device_batch_size {config.per_device_batch_size}"
    else:
        lead = f"deepspeed_zero {config.deepspeed_zero} on {config.parallel.world_size} process(es)"
    if not options:
        options.append(
            "no single change of per_device_batch_size, gradient_checkpointing, liger_kernel or deepspeed_zero is "
            "enough: spread the model over more processes (parallel), or use a GPU with more memory"
        )
    return (
        f"{lead} needs ~{total:.0f} GiB per GPU on {gpu.name} ({gpu.memory_gib:.0f} GiB, of which a run may plan "
        f"{limit:.0f}): {'; or '.join(options)}"
    )


def server_part(
    title: str,
    shape: ModelShape,
    gpu: GPU,
    *,
    tensor_parallel: int,
    pipeline_parallel: int = 1,
    data_parallel: int = 1,
    max_model_len: int,
    dtype_bytes: int = 2,
    utilization: float = VLLM_UTILIZATION,
    concurrency: int | None = None,
    knob: str = "tensor_parallel_size",
    spread: str = "more GPUs than one node has: a multi-node server (`rner k8s render-server`), or an endpoint",
) -> Part:
    """A vLLM server's weights and KV cache per GPU (see the module docstring)."""
    split = tensor_parallel * pipeline_parallel
    whole = shape.weight_bytes(dtype_bytes)
    weights = whole / split
    budget = utilization * gpu.memory_gib * GIB
    room = budget - weights - VLLM_RESERVE_GIB * GIB  # KV cache per GPU
    per_token = kv_bytes_per_token(shape, dtype_bytes)
    # Tensor parallelism splits the KV heads (each GPU keeps at least one); a latent cache (MLA) is one "head",
    # whole on every tensor-parallel GPU. Pipeline parallelism splits the layers.
    latent = shape.kv_elements_per_token != 2 * shape.layers * shape.kv_heads * shape.head_dim
    kv_split = (1 if latent else min(tensor_parallel, shape.kv_heads)) * pipeline_parallel
    per_sequence = per_token * max_model_len / kv_split  # on one GPU
    at_once = max(0, math.floor(room / per_sequence)) if room > 0 else 0
    kv_seqs = max(1, min(at_once, concurrency or at_once or 1))
    fp8 = " (FP8 matrices in 1 byte)" if shape.quantized_params else ""
    items = (
        Item("weights", weights, f"{whole / GIB:.1f} GiB{fp8} / ({tensor_parallel} TP x {pipeline_parallel} PP)"),
        Item("vLLM working memory", VLLM_RESERVE_GIB * GIB, "an allowance (profiling activations, CUDA graphs)"),
        Item(
            f"KV cache, {kv_seqs} sequence(s)", kv_seqs * per_sequence,
            f"{per_token / 1024:.0f} KiB/token ({_kv_formula(shape, dtype_bytes)}) x {max_model_len} tokens x "
            f"{kv_seqs} / {kv_split} (KV split over the GPUs)",
        ),
    )  # fmt: skip
    gpus = split * data_parallel
    where = f"{gpus} x {gpu.name}"
    fits = at_once >= 1
    if fits:
        asked = f" of the {concurrency} the stage sends (vLLM queues the rest)" if concurrency else ""
        summary = (
            f"fits: weights {weights / GIB:.1f} GiB per GPU on {where}, KV cache for {at_once} full-length "
            f"({max_model_len}-token) sequences at once{asked}"
        )
    elif weights + VLLM_RESERVE_GIB * GIB > budget:
        summary = (
            f"{knob} {tensor_parallel}: {shape.name} needs {weights / GIB:.0f} GiB of weights per GPU on {where}, "
            f"above vLLM's {budget / GIB:.0f} GiB ({utilization} of {gpu.memory_gib:.0f} GiB): spread it over {spread}"
        )
    else:
        summary = (
            f"max_model_len {max_model_len}: one full-length sequence needs {per_sequence / GIB:.1f} GiB of KV cache "
            f"per GPU; {where} leave {max(room, 0) / GIB:.1f} GiB per GPU after the weights: lower max_model_len or "
            f"raise {knob}"
        )
    return Part(title, gpu, gpus, items, utilization * gpu.memory_gib, fits, summary)


def plan_training(config: TrainConfig, shape: ModelShape, gpu: GPU) -> list[Part]:
    """The training processes and, for GRPO with ``rollout: server``, the rollout server on its own GPUs."""
    stage = "grpo" if isinstance(config, GRPOConfig) else "sft"
    world = config.parallel
    parts = [_training_part(config, shape, gpu, f"{stage}: {world.world_size} training process(es), {shape.name}")]
    if isinstance(config, GRPOConfig) and config.rollout == "server":
        parts.append(
            server_part(
                f"grpo: rollout server (trl vllm-serve), {shape.name}",
                shape,
                gpu,
                tensor_parallel=config.rollout_gpus,
                max_model_len=sequence_length(config),
                dtype_bytes=_dtype_bytes(config),
                concurrency=config.global_batch_size,  # one generation batch: TRL's default steps_per_generation
                knob="rollout_gpus",
                spread="more rollout_gpus",
            )
        )
    return parts


def _utilization(spec: VLLMLaunch) -> float:
    args = list(spec.extra_args)
    for i, arg in enumerate(args):
        if arg.startswith("--gpu-memory-utilization="):
            return float(arg.split("=", 1)[1])
        if arg == "--gpu-memory-utilization" and i + 1 < len(args):
            return float(args[i + 1])
    return VLLM_UTILIZATION


def plan_server(
    role: str, spec: Endpoint | VLLMLaunch | TransformersRunner, gpu: GPU, *, concurrency: int | None = None,
    settings: Settings | None = None, store: Any = None,
) -> Part | None:  # fmt: skip
    """The plan of a stage's server ``spec`` (a ``VLLMLaunch``); None for a running endpoint or in-process
    generation."""
    if not isinstance(spec, VLLMLaunch):
        return None
    shape = model_shape(spec.model, settings=settings, store=store)
    dtype = {"float32": 4}.get(spec.dtype, 2)
    return server_part(
        f"{role}: vLLM server, {spec.model}",
        shape,
        gpu,
        tensor_parallel=spec.tensor_parallel_size,
        data_parallel=spec.data_parallel_size,
        max_model_len=spec.max_model_len,
        dtype_bytes=dtype,
        utilization=_utilization(spec),
        concurrency=concurrency,
    )


def plan_config(
    config: Config, gpu: GPU, *, settings: Settings | None = None, store: Any = None
) -> tuple[list[Part], list[str]]:
    """Every part of a stage (or pipeline) config: training processes and the servers it starts; and a line for
    each server it does not start (an endpoint: served elsewhere)."""
    from schemas import AnnotateConfig, CGConfig, EvalConfig, JudgeConfig, PipelineConfig

    parts: list[Part] = []
    elsewhere: list[str] = []

    def server(role: str, spec: Any, concurrency: int | None) -> None:
        if isinstance(spec, Endpoint):
            elsewhere.append(f"{role}: an endpoint ({spec.base_url}, {spec.model}): served elsewhere, not planned here")
        elif isinstance(spec, TransformersRunner):
            elsewhere.append(f"{role}: in-process generation ({spec.model}): not planned")
        elif (
            part := plan_server(role, spec, gpu, concurrency=concurrency, settings=settings, store=store)
        ) is not None:
            parts.append(part)

    def visit(c: Config) -> None:
        if isinstance(c, TrainConfig):
            parts.extend(plan_training(c, model_shape(c.model, settings=settings, store=store), gpu))
        elif isinstance(c, AnnotateConfig):
            server("annotate: teacher", c.teacher, c.concurrency)
        elif isinstance(c, JudgeConfig):
            server("judge: judge", c.judge, c.concurrency)
        elif isinstance(c, CGConfig):
            visit(c.annotate)
            if c.judge.judge != c.annotate.teacher:  # the same launch spec: one server for both
                visit(c.judge)
        elif isinstance(c, EvalConfig):
            server("evaluate: model", c.model, c.concurrency)
        elif isinstance(c, PipelineConfig):
            for sub in (c.cg, c.sft, c.grpo, c.evaluate):
                visit(sub)

    visit(config)
    return parts, elsewhere


# --- the stages' check ---------------------------------------------------------------------------------------


def check_memory(config: TrainConfig, model: str, settings: Settings, *, store: Any = None) -> list[Part]:
    """Refuse (``PlanError``) a training config that does not fit the GPU this run trains on; what it planned.

    ``model``: the resolved model reference (a local directory, or a hub id). Nothing happens on a machine without
    a CUDA device unless ``RNER_GPU`` names one, nor with ``RNER_MEMORY_CHECK=off``; with ``warn`` a config that does
    not fit is logged instead. A model whose config cannot be found is logged and not planned: the check never stops
    a run for want of a config."""
    if settings.memory_check == "off":
        return []
    gpu = gpu_in_use(settings)
    if gpu is None:
        return []
    try:
        shape = model_shape(model, settings=settings, store=store)
    except PlanError as e:
        _log.warning("memory plan skipped: %s", e)
        return []
    parts = plan_training(config, shape, gpu)
    for part in parts:
        _log.info("memory plan, %s: %s", part.title, part.summary)
    bad = [p.summary for p in parts if not p.fits]
    if bad:
        message = "; ".join(bad)
        if settings.memory_check == "warn":
            _log.warning("this config does not fit its GPUs (RNER_MEMORY_CHECK=warn: training anyway): %s", message)
        else:
            raise PlanError(
                f"this config does not fit its GPUs: {message} (`rner train plan` shows the whole plan; "
                "RNER_MEMORY_CHECK=warn trains anyway)"
            )
    return parts


# --- output --------------------------------------------------------------------------------------------------


def plan_json(parts: Sequence[Part], elsewhere: Sequence[str] = ()) -> dict[str, Any]:
    return {"parts": [p.to_dict() for p in parts], "not_planned": list(elsewhere), "fits": all(p.fits for p in parts)}


def plan_tables(parts: Sequence[Part]) -> list[Any]:
    """One rich table per part."""
    from rich.table import Table

    tables = []
    for part in parts:
        table = Table(
            title=f"{part.title} — per GPU, {part.gpus} x {part.gpu.name} ({part.gpu.memory_gib:.1f} GiB)",
            title_justify="left",
            caption=f"[{'green' if part.fits else 'bold red'}]{part.summary}[/]",
            caption_justify="left",
        )
        table.add_column("", no_wrap=True)
        table.add_column("GiB", justify="right")
        table.add_column("how", overflow="fold")
        for item in part.items:
            style = None if item.counted else "dim"
            hidden = "" if item.counted or item.what.startswith("  =") else " (not counted)"
            table.add_row(item.what, f"{item.gib:.2f}", item.formula + hidden, style=style)
        table.add_section()
        table.add_row("total", f"{part.total_gib:.2f}", f"planned per GPU: at most {part.limit_gib:.1f}", style="bold")
        for note in part.notes:
            table.add_row("", "", note, style="dim")
        tables.append(table)
    return tables


# --- command line --------------------------------------------------------------------------------------------


_STAGE_HELP = "sft or grpo; or a stage that starts servers (annotate, judge, cg, evaluate); or pipeline."
_GPU_HELP = f"{' | '.join(GPUS)} (default: RNER_GPU, else this machine's CUDA device, else h100-80gb)."


def cli_plan(
    stage: Annotated[str, typer.Argument(help=_STAGE_HELP)],
    config: Annotated[Path | None, typer.Option(help="The stage's YAML config (may start with `preset:`).")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset to start from when the config names none.")] = None,
    gpu: Annotated[str | None, typer.Option(help=_GPU_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Plan the per-GPU memory of a stage's training processes and vLLM servers from the model's config alone (no
    weights, no GPU needed); exit status 1 when a part does not fit."""
    from rich.console import Console

    from schemas import STAGE_CONFIGS, PipelineConfig
    from tasks.config import build_config, load_config

    classes: dict[str, type[Config]] = {**STAGE_CONFIGS, "pipeline": PipelineConfig}
    if stage not in classes:
        raise typer.BadParameter(f"must be one of {', '.join(classes)}", param_hint="STAGE")
    cls = classes[stage]
    if config is not None:
        loaded = load_config(cls, config, preset=preset)
    else:
        loaded = build_config(cls, {"preset": preset} if preset else {}, source=f"{stage} defaults")
    settings = Settings()
    chosen = gpu_named(gpu) if gpu else gpu_in_use(settings) or GPUS["h100-80gb"]
    parts, elsewhere = plan_config(loaded, chosen, settings=settings)
    if as_json:
        print(json.dumps(plan_json(parts, elsewhere), indent=2))
    else:
        out = Console(width=max(Console().width, 140))
        for table in plan_tables(parts):
            out.print(table)
            out.print()
        for line in elsewhere:
            out.print(line, highlight=False)
        if not parts and not elsewhere:
            out.print(f"{stage}: nothing to plan (no training, no server)")
    if not all(p.fits for p in parts):
        raise typer.Exit(1)
