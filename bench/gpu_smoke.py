"""GPU smoke test and benchmark of the training stages: tokens/s and MFU of SFT with Liger kernels and gradient
checkpointing, of the same SFT under DeepSpeed ZeRO-3 on one GPU, and of GRPO with transformers rollouts.

On the GPU machine (one H100 or H200, no internet, no registry; its image lacks TRL, Liger, DeepSpeed, datasets
and pydantic), from the repository root:

    python bench/gpu_wheelhouse.py .gpu-wheels          # here, with the registry: ~13 MiB of wheels
    python3 bench/gpu_smoke.py --wheelhouse .gpu-wheels --out $OUT/gpu_smoke.json   # there: ~5 min, at most 7.5

``.gpu-wheels`` must be ignored by git and carried with the run (the device tool: ``carry=[".gpu-wheels"]``,
``timeout_s`` 540). ``--wheelhouse`` installs the wheels the image lacks with ``pip install --no-index --no-deps
--target`` into a folder (``--site``, in the temp dir) put first on ``sys.path`` and ``PYTHONPATH``: not a venv and
not ``--user``, so the image's torch 2.11 and everything else it has stay as they are and nothing outside that
folder changes; a wheel is skipped where the image has its distribution at that version or newer
(``gpu_wheelhouse.install``). TRL 1.16 is installed without its declared requirements: the image's transformers
5.17 and accelerate 1.15 meet them, but nothing checks that there.

On a CPU (the same code path with a tiny model, fp32, no Liger, 1-2 steps; ZeRO-3 only where deepspeed imports):

    python bench/gpu_smoke.py --device cpu [--parts sft,grpo] [--out gpu_smoke.json]

What runs (``--parts sft,zero3,grpo``, default all), each part in a process of its own, so that a crash, the CUDA
state or DeepSpeed's process group of one part never reaches the next, and with a time limit so that the whole
command ends within ``--budget-s`` (450 s):

- prepare: a byte-level tokenizer (one token per byte, so the demo corpus's CoT examples are 1,100-1,700 tokens
  long and its GRPO prompts 610-750) with a ChatML template (``<|im_end|>`` as EOS), padded with reserved tokens
  to the model's vocabulary; a randomly initialised Qwen3 (the paper's backbone family; on a GPU 28 layers, hidden
  1024, vocabulary 32768: 474M parameters, bf16); the demo corpus's hand-written CoT records, repeated to fill the
  SFT steps, as a ``cot`` dataset, and its training passages as a ``ner`` dataset, published in a store in a
  temporary work folder. On a GPU it also times an 8192³ bf16 matrix product: the ceiling reached in practice.
- sft: the project's CT stage (``tasks.sft.run``) on it: bf16, Liger, gradient checkpointing, ``max_seq_len``
  2048, 16 sequences per step (~22k tokens), 30 steps, no packing (the paper's setting: with packing, SDPA would
  attend over the whole flattened batch under a block mask; the image has no flash-attn).
- zero3: the same config with ``deepspeed_zero: 3`` (the project's ``deepspeed_config``), in one process whose
  torch.distributed world has size 1 (``RANK``/``WORLD_SIZE``/``MASTER_*`` set for it).
- grpo: the project's RE stage (``tasks.grpo.run``) with ``rollout: transformers``: 4 steps of 32 completions
  (4 prompts x 8 generations) of 256 tokens, bf16, gradient checkpointing, beta 0.04 (a reference model).

A part whose package is missing (trl; liger_kernel on a GPU unless ``--no-liger``; deepspeed for zero3) reports
``skipped: <package> not importable`` and the others run.

Figures. The training parts time every optimizer step (the stage's ``progress`` callback, after the device has
finished the step) and read the tokens the trainer counted (TRL's ``num_tokens``: prompt and completion tokens,
no padding); tokens/s is measured from the end of step ``warmup`` (5 on a GPU: Triton compiles Liger's kernels in
the first; GRPO: 1) to the last step. GRPO also times each ``generate`` call of its rollouts: generation tokens/s
counts the generated positions (a random model rarely stops early), leaving out the first call when there are
several.

MFU (model FLOPs utilisation) = achieved model FLOP/s over the GPU's dense bf16 peak from its datasheet, picked by
``torch.cuda.get_device_name``: 989 TFLOP/s for H100 SXM and H200, 835 for their NVL and 756 for the H100 PCIe
variants, 312 for A100; ``unknown`` (MFU null) for anything else and on a CPU, unless ``--peak-tflops`` says.
Model FLOPs per trained token are 6·N, N the parameters that enter a matrix product (all but the input
embedding; tied, it counts once as the LM head); the recomputation of gradient checkpointing is not counted, as
MFU leaves it out. ``mfu_with_attention`` adds PaLM's 12·L·d_attn·T with T the mean example length in tokens.
For GRPO, the step's FLOPs are 6·N per trained token, 2·N more for the
reference model's forward, and 2·N per generated or prefilled position; ``generation_mfu`` is the rollouts' own.

Output: one JSON line per part on stdout as it finishes, a summary at ``--out`` (default ``$OUT/gpu_smoke.json``
when ``OUT`` is set, else ``./gpu_smoke.json``; rewritten after each part) with the environment (Python, torch,
CUDA, GPU, package versions, what the wheelhouse installed), the model and each part's figures, and every worker's
log beside it (``gpu_smoke.log``). The exit status is 1 when a part failed (not when one was skipped).

Written without a GPU at hand: the GPU paths (Liger, ZeRO-3 on CUDA, bf16) have not run yet; on a CPU the sft and
grpo parts run end to end (tests/test_gpu_smoke.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the project is not installed on the GPU machine: import it from the checkout
    sys.path.insert(0, str(REPO))

PARTS = ("sft", "zero3", "grpo")
NEEDS = {"sft": ("trl",), "zero3": ("trl", "deepspeed"), "grpo": ("trl",)}
"""The packages each part imports beyond the project's own, checked before its process starts."""
LIGER_PARTS = ("sft", "zero3")

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
"""Dense bf16 peaks from NVIDIA's datasheets, by a part of the device name (first match wins)."""

PACKAGES = ("torch", "transformers", "accelerate", "trl", "liger-kernel", "deepspeed", "datasets", "peft", "triton",
            "tokenizers", "pydantic", "pyarrow", "pandas", "fsspec", "numpy", "typing-extensions")  # fmt: skip
"""Versions recorded in the summary."""

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Size:
    """The model and the work of each part."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    """The model's vocabulary: the 259 byte and special tokens, then reserved ones up to this (0: none)."""
    seq_len: int
    batch: int
    """Sequences per optimizer step of sft and zero3: one micro-batch, no gradient accumulation."""
    steps: int
    warmup: int
    """SFT steps left out of the steady-state figures (GRPO leaves out its first: ``GRPO_WARMUP``)."""
    grpo_steps: int
    grpo_batch: int
    """Completions per GRPO step (one generation batch)."""
    generations: int
    completion_len: int


GRPO_WARMUP = 1
"""GRPO steps left out of the steady-state figures: the first warms the GPU up (its generation call is left out too)."""

SIZES = {
    # Qwen3-0.6B's shape with a 32k vocabulary: 474M parameters, 440M of them in the layers.
    "gpu": Size(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=32768,
                seq_len=2048, batch=16, steps=30, warmup=5, grpo_steps=4, grpo_batch=32, generations=8,
                completion_len=256),
    "cpu": Size(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=0, seq_len=2048,
                batch=2, steps=2, warmup=1, grpo_steps=1, grpo_batch=2, generations=2, completion_len=8),
}  # fmt: skip


# --- arithmetic --------------------------------------------------------------------------------------------


def peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name`` (``torch.cuda.get_device_name``); None if unknown."""
    if not device_name:
        return None
    name = device_name.upper()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def flop_parameters(total: int, embedding: int, *, tied: bool) -> int:
    """Parameters that enter a matrix product for each token: all but the input embedding (a lookup); tied to
    the LM head, the embedding's weights count once, as the head."""
    return total if tied else total - embedding


def train_flops_per_token(params: int, layers: int, attention_width: int, context: float) -> tuple[float, float]:
    """Model FLOPs per trained token: 6·N, and 6·N + 12·L·d_attn·T (PaLM's count with attention, T the context)."""
    dense = 6.0 * params
    return dense, dense + 12.0 * layers * attention_width * context


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (TFLOP/s); None without a peak."""
    if tokens_per_s is None or peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * 1e12)


def steady(ends: dict[int, float], tokens: dict[int, float], warmup: int) -> tuple[float, float, int] | None:
    """(tokens, seconds, steps) from the end of step ``warmup`` to the end of the last step, given each step's end
    time and the cumulative token count after it. Fewer steps than that: from the first one; None for one step."""
    steps = sorted(s for s in ends if s in tokens)
    if len(steps) < 2:
        return None
    base = max((s for s in steps[:-1] if s <= warmup), default=steps[0])
    last = steps[-1]
    return tokens[last] - tokens[base], ends[last] - ends[base], last - base


# --- the parent: install, plan, run each part in its own process ---------------------------------------------


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_smoke.json" if os.environ.get("OUT") else Path("gpu_smoke.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS))
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    parser.add_argument("--size", choices=sorted(SIZES), help="default: gpu on cuda, cpu on a CPU")
    parser.add_argument("--steps", type=int, help="optimizer steps of sft and zero3 (default: the size's)")
    parser.add_argument("--grpo-steps", type=int, help="GRPO steps (default: the size's)")
    parser.add_argument("--no-liger", action="store_true", help="SFT without Liger kernels")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a GPU not in the table")
    parser.add_argument("--wheelhouse", type=Path, help="install the wheels the image lacks from here first")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "rner-gpu-smoke-site",
                        help="where --wheelhouse installs them")  # fmt: skip
    parser.add_argument("--out", type=Path, default=default_out(), help="the JSON summary")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time limit of the whole command")
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    return args


def add_site(site: Path) -> None:
    """``site`` first on this process's import path and on its children's ``PYTHONPATH``."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class Log:
    """Every worker's output, to stderr as it comes and into one log file; the last lines of each for errors."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w")

    def run(self, command: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
        """Run ``command`` in a process group of its own; (exit status, or None when killed at ``timeout``; the
        end of its output)."""
        self.file.write(f"$ {' '.join(command)}\n")
        tail: collections.deque[str] = collections.deque(maxlen=40)
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", start_new_session=True)  # fmt: skip
        assert process.stdout is not None

        def pump() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                sys.stderr.write(line)
                self.file.write(line)
                tail.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            status: int | None = process.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the worker and whatever it started (compilers, ...)
            process.wait()
            status = None
        reader.join(timeout=10)
        self.file.flush()
        return status, "".join(tail)

    def close(self) -> None:
        self.file.close()


def run_worker(name: str, work: Path, log: Log, timeout: float) -> dict[str, Any]:
    """One worker process: its result file, or why there is none."""
    result_file = work / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(work)]
    started = time.perf_counter()
    status, tail = log.run(command, worker_env(work), timeout)
    seconds = round(time.perf_counter() - started, 1)
    if result_file.exists():
        return {**json.loads(result_file.read_text()), "seconds": seconds}
    why = f"timed out after {timeout:.0f} s" if status is None else f"exited with status {status}"
    return {"status": "failed", "reason": f"{why} without a result; last output:\n{tail[-2000:]}", "seconds": seconds}


def worker_env(work: Path) -> dict[str, str]:
    plan = json.loads((work / "plan.json").read_text())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RNER_HOME": str(work / "home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if plan["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def missing_packages(part: str, liger: bool) -> list[str]:
    needs = (*NEEDS[part], *(("liger_kernel",) if liger and part in LIGER_PARTS else ()))
    return [name for name in needs if importlib.util.find_spec(name) is None]


def line(part: str, result: dict[str, Any]) -> str:
    """A short human line for the closing table."""
    if result["status"] != "ok":
        reason = (result.get("reason") or "").strip().splitlines()
        return f"{part:6} {result['status']}: {reason[0] if reason else ''}"
    rate, share = result.get("tokens_per_s"), result.get("mfu")
    text = f"{part:6} ok  {rate:,.0f} tokens/s" if rate else f"{part:6} ok"
    text += f", MFU {share:.1%}" if share is not None else ", MFU n/a"
    if "generation_tokens_per_s" in result:
        text += f", generation {result['generation_tokens_per_s']:,.0f} tokens/s"
    return text + f" ({result['seconds']:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.work)
        return 0
    started = time.monotonic()
    summary: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
    }
    if args.wheelhouse is not None:
        from bench.gpu_wheelhouse import install

        try:
            summary["wheelhouse"] = install(args.wheelhouse, args.site)
        except (SystemExit, Exception) as e:  # the parts then report what they miss
            summary["wheelhouse"] = {"error": str(e)}
        add_site(args.site)
    device = args.device or ("cuda" if cuda_available() else "cpu")
    size = SIZES[args.size or ("gpu" if device == "cuda" else "cpu")]
    size = replace(size, steps=args.steps or size.steps, grpo_steps=args.grpo_steps or size.grpo_steps)
    liger = device == "cuda" and not args.no_liger
    parts = [p for p in PARTS if p in args.parts.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="rner-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    plan = {"device": device, "size": asdict(size), "liger": liger, "peak_tflops": args.peak_tflops}
    (work / "plan.json").write_text(json.dumps(plan))
    summary |= {"plan": plan, "parts": {}}
    log = Log(args.out.with_suffix(".log"))

    def save() -> None:
        summary["seconds"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")

    deadline = started + args.budget_s
    prepared = run_worker("prepare", work, log, min(180.0, deadline - time.monotonic()))
    summary |= {"device": prepared.pop("device", None), "model": prepared.pop("model", None)}
    summary["prepare"] = prepared
    save()
    for i, part in enumerate(parts):
        left = deadline - time.monotonic()
        if prepared["status"] != "ok":
            result = {"status": prepared["status"], "reason": f"prepare: {prepared.get('reason')}"}
        elif missing := missing_packages(part, liger):
            result = {"status": "skipped", "reason": f"{missing[0]} not importable"}
        elif left < 20:
            result = {"status": "skipped", "reason": f"no time left of --budget-s {args.budget_s:.0f}"}
        else:
            result = run_worker(part, work, log, left / (len(parts) - i))
        result = {"part": part, **result}
        summary["parts"][part] = result
        print(json.dumps(result), flush=True)
        save()
    log.close()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line(part, result) for part, result in summary["parts"].items()]
    print("\n".join(["", f"gpu_smoke ({device}, {summary['seconds']:.0f} s) -> {args.out}", *lines]), file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in summary["parts"].values()) else 0


# --- the workers ---------------------------------------------------------------------------------------------


def worker(name: str, work: Path) -> None:
    """Run one part; its result (status ok, skipped or failed, and figures) goes to ``<work>/<name>.json``."""
    plan = json.loads((work / "plan.json").read_text())
    result: dict[str, Any]
    try:
        result = {"status": "ok", **WORKERS[name](work, plan)}
    except ModuleNotFoundError as e:
        traceback.print_exc()
        result = {"status": "skipped", "reason": f"{e.name or e} not importable"}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:3000]}
    if name == "prepare" and (work / "device.json").exists():
        result["device"] = json.loads((work / "device.json").read_text())
    (work / f"{name}.json").write_text(json.dumps(result))


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else lambda: None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """bf16 TFLOP/s of a ``size``³ matrix product on random data: the ceiling the GPU reaches in practice."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in "ab")
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def probe(plan: dict[str, Any]) -> dict[str, Any]:
    """The machine: Python, torch, CUDA, the GPU and its peak, package versions."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "kind": plan["device"], "cpus": os.cpu_count()}  # fmt: skip
    if plan["device"] == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"name": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                 "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                 "bf16": torch.cuda.is_bf16_supported()}  # fmt: skip
        info["matmul_tflops"] = round(matmul_tflops(), 1)
    else:
        info["name"] = platform.processor() or platform.machine()
    peak = plan["peak_tflops"] or (peak_tflops(info["name"]) if plan["device"] == "cuda" else None)
    source = "--peak-tflops" if plan["peak_tflops"] else "datasheet" if peak else "unknown"
    return info | {"peak_tflops": peak, "peak_source": source, "packages": versions()}


def build_tokenizer(vocab: int) -> Any:
    """A byte-level tokenizer (one token per UTF-8 byte, GPT-2's byte alphabet, no merges) with a ChatML template,
    ``<|im_end|>`` as EOS and ``<|endoftext|>`` as padding; reserved special tokens fill it up to ``vocab``
    (0: none). One token per byte makes the demo corpus's CoT examples 1,100-1,700 tokens long."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(token, special=True) for token in (PAD, IM_START, IM_END)])
    reserved = vocab - core.get_vocab_size()
    if reserved > 0:
        core.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(reserved)])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=PAD, chat_template=CHATML)


def build_model(size: Size, tokenizer: Any, path: Path, device: str) -> dict[str, Any]:
    """A randomly initialised Qwen3 of ``size`` with ``tokenizer``, saved at ``path``; its shape and counts."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        head_dim=size.head_dim, max_position_embeddings=max(4096, 2 * size.seq_len), tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "architecture": f"{type(model).__name__}, randomly initialised",
        "path": str(path),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": total,
        "flop_parameters": flop_parameters(total, embedding, tied=config.tie_word_embeddings),
        "layers": size.layers,
        "hidden": size.hidden,
        "attention_width": size.heads * size.head_dim,
        "vocab": len(tokenizer),
    }


def publish_data(size: Size, store_root: Path) -> dict[str, Any]:
    """The demo corpus's CoT records, repeated to fill the SFT steps, as a ``cot`` dataset, and its training
    passages, repeated to fill the GRPO steps, as a ``ner`` dataset; their addresses and sizes."""
    from schemas import CoTRecord, NERExample, PublishConfig, SampleConfig
    from tasks.demo import demo_cot_path, load_demo
    from tasks.jsonl import read_jsonl
    from tasks.store import Store

    store = Store(store_root)
    records = read_jsonl(demo_cot_path(), CoTRecord)
    copies = math.ceil(size.steps * size.batch / len(records))
    cot = [r.model_copy(update={"id": f"{r.id}-{k}"}) for k in range(copies) for r in records]
    passages = load_demo("train")
    prompts = size.grpo_steps * size.grpo_batch // size.generations
    ner = [passages[i % len(passages)].model_copy(update={"id": f"{passages[i % len(passages)].id}-{i}"})
           for i in range(prompts)]  # fmt: skip
    cot_out, ner_out = store.output("datasets/ner-cot/v1"), store.output("datasets/re/v1")
    cot_file, ner_file = cot_out.write("data", cot, CoTRecord), ner_out.write("data", ner, NERExample)
    cot_out.publish(kind="cot", stage="publish", config=PublishConfig(), files=[cot_file])
    config = SampleConfig(sources=["demo:train"], total=len(ner))
    ner_out.publish(kind="ner", stage="sample", config=config, files=[ner_file])
    return {"cot": cot_out.address, "cot_examples": len(cot), "ner": ner_out.address, "ner_examples": len(ner)}


def prepare(work: Path, plan: dict[str, Any]) -> dict[str, Any]:
    (work / "device.json").write_text(json.dumps(probe(plan)))  # first: reported even if the rest fails
    size = Size(**plan["size"])
    tokenizer = build_tokenizer(size.vocab)
    model = build_model(size, tokenizer, work / "model", plan["device"])
    return {"model": model, "data": publish_data(size, work / "store")}


class StepClock:
    """A training stage's ``progress`` callback: when each optimizer step ended, once the device finished it."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.ends: dict[int, float] = {}

    def __call__(self, done: int, total: int) -> None:
        self.sync()
        self.ends[done] = time.perf_counter()


@contextlib.contextmanager
def timed_generate(sync: Callable[[], None]) -> Iterator[list[dict[str, float]]]:
    """Every transformers ``generate`` call in the block (GRPO's rollouts), timed: seconds, rows, prompt and
    generated positions per row."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate
    calls: list[dict[str, float]] = []

    @functools.wraps(original)
    def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
        prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        sync()
        start = time.perf_counter()
        output = original(model, *args, **kwargs)
        sync()
        seconds = time.perf_counter() - start
        sequences = getattr(output, "sequences", output)
        new = sequences.shape[1] - prompt.shape[1]
        calls.append({"seconds": seconds, "rows": sequences.shape[0], "prompt": prompt.shape[1], "new": new})
        return output

    GenerationMixin.generate = generate  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        GenerationMixin.generate = original  # type: ignore[method-assign]


def history_of(store: Any, published: Any) -> list[dict[str, Any]]:
    """The trainer's log history that the stage published with the model."""
    [entry] = [f for f in published.manifest.files_with("report") if f.path.endswith(".json")]
    return json.loads(store.read_file(published.manifest.address, entry))


def cumulative_tokens(history: list[dict[str, Any]]) -> dict[int, float]:
    return {h["step"]: h["num_tokens"] for h in history if "num_tokens" in h and "step" in h}


def run_stage(
    run: Callable[..., Any], config: Any, store: Any, clock: StepClock, prefix: str
) -> tuple[Any, str | None]:
    """``run(config, store, progress=clock)``: what it published, and None. If it fails after publishing its model
    (under ``prefix``), that output and the error, so that the figures of a run that trained are not lost."""
    from schemas import MANIFEST_FILE

    def outputs() -> set[str]:
        return {p.removesuffix(f"/{MANIFEST_FILE}") for p in store.list(prefix) if p.endswith(f"/{MANIFEST_FILE}")}

    before = outputs()
    try:
        return run(config, store, progress=clock), None
    except Exception as e:
        new = outputs() - before
        if not new:
            raise
        traceback.print_exc()
        return store.load(new.pop()), f"the stage failed after publishing its model: {type(e).__name__}: {e}"


def unfit(config: Any, *extra: Callable[[Any], list[str]]) -> dict[str, Any] | None:
    """A skipped result when this machine cannot run ``config`` (the stage's own hardware checks), else None."""
    from tasks.train_stage import Device, hardware_problems

    device = Device.detect()
    problems = [*hardware_problems(config, device), *(p for check in extra for p in check(device))]
    return {"status": "skipped", "reason": "; ".join(problems)} if problems else None


def memory_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def single_process_group() -> None:
    """The environment of rank 0 in a torch.distributed world of one process, as torchrun would set it: DeepSpeed
    initialises its process group from it."""
    from tasks.serving import free_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))  # fmt: skip


def sft(work: Path, plan: dict[str, Any], *, zero3: bool = False) -> dict[str, Any]:
    """The CT stage on the prepared data: steady-state tokens/s and MFU."""
    if zero3:
        import deepspeed  # noqa: F401  (missing: the part is skipped)

        single_process_group()
    if plan["liger"]:
        import liger_kernel  # noqa: F401
    from schemas import SFTConfig
    from tasks import sft as stage
    from tasks.store import Store

    prepared = json.loads((work / "prepare.json").read_text())
    device_info = json.loads((work / "device.json").read_text())
    size, cuda = Size(**plan["size"]), plan["device"] == "cuda"
    config = SFTConfig(
        dataset=prepared["data"]["cot"], model=prepared["model"]["path"], max_steps=size.steps, learning_rate=1e-5,
        lr_scheduler="constant", global_batch_size=size.batch, per_device_batch_size=size.batch,
        max_seq_len=size.seq_len, packing=False, too_long="truncate", bf16=cuda, gradient_checkpointing=True,
        liger_kernel=plan["liger"], deepspeed_zero=3 if zero3 else 0, logging_steps=1, save_steps=None, resume=False,
        seed=0,
    )  # fmt: skip
    if skipped := unfit(config):
        return skipped
    store, clock = Store(work / "store"), StepClock(synchronizer(plan["device"]))
    start = time.perf_counter()
    published, error = run_stage(stage.run, config, store, clock, "models/ct/sft")
    stage_seconds = time.perf_counter() - start
    stats = published.manifest.stats
    final = stats["final"]
    window = steady(clock.ends, cumulative_tokens(history_of(store, published)), size.warmup)
    rate = window[0] / window[1] if window else final["num_tokens"] / final["train_runtime"]
    model, peak = prepared["model"], device_info["peak_tflops"]
    context = stats["tokens"] / stats["trained"]  # the mean example (cut to max_seq_len): one sequence each
    settings = {"bf16": cuda, "liger_kernel": plan["liger"], "gradient_checkpointing": True,
                "deepspeed_zero": config.deepspeed_zero, "packing": False, "max_seq_len": size.seq_len,
                "sequences_per_step": size.batch, "attention": "sdpa"}  # fmt: skip
    dense, with_attention = train_flops_per_token(model["flop_parameters"], model["layers"],
                                                  model["attention_width"], context)  # fmt: skip
    return {
        "tokens_per_s": round(rate, 1),
        "mfu": mfu(rate, dense, peak),
        "mfu_with_attention": mfu(rate, with_attention, peak),
        "measured": {"steps": window[2], "tokens": window[0], "seconds": round(window[1], 3)} if window else None,
        "steps": stats["global_step"],
        "tokens": final["num_tokens"],
        "train_runtime_s": final["train_runtime"],
        "stage_s": round(stage_seconds, 1),
        "loss": final.get("train_loss"),
        "flops_per_token": dense,
        "mean_example_tokens": round(context, 1),
        "peak_tflops": peak,
        "max_memory_gib": memory_gib(plan["device"]),
        "config": settings,
        "output": published.manifest.address,
        **({"status": "failed", "reason": error} if error else {}),
    }


def zero3(work: Path, plan: dict[str, Any]) -> dict[str, Any]:
    return sft(work, plan, zero3=True)


def grpo(work: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """The RE stage with transformers rollouts: generation tokens/s, step tokens/s and MFU."""
    from schemas import GRPOConfig
    from tasks import grpo as stage
    from tasks.store import Store

    prepared = json.loads((work / "prepare.json").read_text())
    device_info = json.loads((work / "device.json").read_text())
    size, cuda = Size(**plan["size"]), plan["device"] == "cuda"
    config = GRPOConfig(
        dataset=prepared["data"]["ner"], model=prepared["model"]["path"], max_steps=size.grpo_steps,
        global_batch_size=size.grpo_batch, per_device_batch_size=size.grpo_batch, num_generations=size.generations,
        max_completion_length=size.completion_len, max_prompt_length=1024, bf16=cuda, gradient_checkpointing=True,
        rollout="transformers", logging_steps=1, save_steps=None, resume=False, seed=0,
    )  # fmt: skip
    if skipped := unfit(config, functools.partial(stage.rollout_problems, config)):
        return skipped
    sync = synchronizer(plan["device"])
    store, clock = Store(work / "store"), StepClock(sync)
    start = time.perf_counter()
    with timed_generate(sync) as calls:
        published, error = run_stage(stage.run, config, store, clock, "models/re/grpo")
    stage_seconds = time.perf_counter() - start
    stats = published.manifest.stats
    final = stats["final"]
    n, peak = prepared["model"]["flop_parameters"], device_info["peak_tflops"]
    timed = calls[1:] if len(calls) > 1 else calls  # the first call warms the GPU up
    generated = sum(c["rows"] * c["new"] for c in timed)
    generation_seconds = sum(c["seconds"] for c in timed)
    processed = sum(c["rows"] * (c["prompt"] + c["new"]) for c in timed)
    window = steady(clock.ends, cumulative_tokens(history_of(store, published)), GRPO_WARMUP)
    rate = window[0] / window[1] if window else final["num_tokens"] / final["train_runtime"]
    settings = {"bf16": cuda, "gradient_checkpointing": True, "rollout": "transformers",
                "completions_per_step": size.grpo_batch, "num_generations": size.generations,
                "max_completion_length": size.completion_len, "beta": config.beta}  # fmt: skip
    step_mfu = None
    if window and len(calls) == stats["global_step"]:  # one generation batch per step
        flops = (6 + 2 * (config.beta > 0)) * n * window[0]
        flops += 2 * n * sum(c["rows"] * (c["prompt"] + c["new"]) for c in calls[-window[2] :])
        step_mfu = mfu(flops / window[1], 1.0, peak)
    return {
        "generation_tokens_per_s": round(generated / generation_seconds, 1),
        "generation_mfu": mfu(processed / generation_seconds, 2.0 * n, peak),
        "generate_calls": [{k: round(v, 3) for k, v in c.items()} for c in calls],
        "tokens_per_s": round(rate, 1),
        "mfu": step_mfu,
        "measured": {"steps": window[2], "tokens": window[0], "seconds": round(window[1], 3)} if window else None,
        "steps": stats["global_step"],
        "tokens": final.get("num_tokens"),
        "train_runtime_s": final["train_runtime"],
        "stage_s": round(stage_seconds, 1),
        "completion_mean_length": final.get("completions/mean_length"),
        "reward": final.get("reward"),
        "peak_tflops": peak,
        "max_memory_gib": memory_gib(plan["device"]),
        "config": settings,
        "output": published.manifest.address,
        **({"status": "failed", "reason": error} if error else {}),
    }


WORKERS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "prepare": prepare,
    "sft": sft,
    "zero3": zero3,
    "grpo": grpo,
}


if __name__ == "__main__":
    sys.exit(main())
