"""SFT throughput of the CT stage vs a plain TRL SFTTrainer script, side by side: same model, data and batch.

    python bench/bench_sft.py [--examples 16] [--steps 4] [--batch 2] [--rounds 1] [--packing both|off|on]

Data: the demo corpus's training passages as CoT records (reasoning written from the gold, quoting each
entity), published in a temporary store. For packing off, then on, each round runs both, alternating which
goes first:

- plain: what ``trl/scripts/sft.py`` does with the same conversations in memory: ``SFTTrainer(model=path,
  args=SFTConfig(...), train_dataset=...)``, ``train()``, ``save_model()``;
- ours: ``tasks.sft.run`` on the published dataset into a fresh store: reading and verifying the dataset,
  counting every sequence's tokens, checkpoint callback, training, saving, uploading the model directory,
  the curve and the manifest.

Both are timed from the start (model not yet loaded) to the saved model, after one untimed warm-up run.
Tokens are the ones the trainer reports (``num_tokens``, the same for both); tokens/s = tokens / wall
seconds. Printed: tokens/s of each, ours/plain of the medians end to end (goal ≥ 0.95) and for the training loop
alone (``train_runtime``), and the seconds outside the loop (loading, data, saving; ours also uploads the
model and draws the curve). The trainers' own log lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import trl
from datasets import Dataset

from schemas import CoTRecord, PublishConfig, SFTConfig
from tasks import sft
from tasks.demo import load_demo
from tasks.models import resolve_model
from tasks.prompts import assistant_target
from tasks.settings import Settings
from tasks.store import Store


def cot_records(n: int) -> list[CoTRecord]:
    records = []
    for ex in load_demo("train")[:n]:
        reasoning = " ".join(f'"{e.text}" is a {e.label}.' for e in ex.entities) or "No entity is named."
        teacher = {"model": "written", "sampling": {}, "request_key": ex.id}
        completion = assistant_target(reasoning, ex.entities, ex.labels)
        records.append(CoTRecord(**ex.model_dump(), reasoning=reasoning, completion=completion, teacher=teacher))
    return records


def plain(config: SFTConfig, records: list[CoTRecord], out: Path) -> tuple[float, float, float]:
    """(seconds, tokens, train-loop seconds) of the TRL script way."""
    start = time.perf_counter()
    args = trl.SFTConfig(
        output_dir=str(out), max_steps=config.max_steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_batch_size, gradient_accumulation_steps=1,
        max_length=config.max_seq_len, packing=config.packing, bf16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no", logging_steps=1,
        lr_scheduler_type=config.lr_scheduler, seed=config.seed, model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    dataset = Dataset.from_list([sft.sft_example(r, with_cot=True) for r in records])
    trainer = trl.SFTTrainer(model=config.model, args=args, train_dataset=dataset)
    result = trainer.train()
    trainer.save_model(str(out / "final"))
    seconds = time.perf_counter() - start
    tokens = max(entry.get("num_tokens", 0) for entry in trainer.state.log_history)
    return seconds, tokens, result.metrics["train_runtime"]


def ours(config: SFTConfig, source: Store, home: Path) -> tuple[float, float, float]:
    store = Store(home / "store")
    published = source.load(config.dataset)
    out = store.output(config.dataset)
    records = list(source.records(published.manifest))
    out.publish(kind="cot", stage="publish", config=PublishConfig(), files=[out.write("data", records, CoTRecord)])
    start = time.perf_counter()
    final = sft.run(config, store, settings=Settings(RNER_HOME=str(home))).manifest.stats["final"]  # type: ignore[call-arg]
    return time.perf_counter() - start, final["num_tokens"], final["train_runtime"]


def compare(config: SFTConfig, records: list[CoTRecord], source: Store, rounds: int, tmp: str) -> None:
    """Both runs ``rounds`` times, alternating which goes first; one line per run, then the ratios of the
    medians (other jobs on a shared machine slow single runs down several-fold)."""
    rates: dict[str, list[tuple[float, float, float]]] = {"plain": [], "ours": []}
    for round_ in range(rounds):
        for name in ("plain", "ours") if round_ % 2 == 0 else ("ours", "plain"):
            work = Path(tempfile.mkdtemp(dir=tmp))
            with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs; the table stays clean
                seconds, tokens, loop = plain(config, records, work) if name == "plain" else ours(config, source, work)
            rates[name].append((tokens / seconds, tokens / loop, seconds - loop))
            row = f"{config.packing!s:>8} {name:>6} {seconds:8.1f} {tokens:7.0f}"
            print(f"{row} {tokens / seconds:9.1f} {tokens / loop:11.1f} {seconds - loop:10.1f}", flush=True)
    (ours_total, ours_loop, ours_outside), (plain_total, plain_loop, plain_outside) = (
        [median(column) for column in zip(*rates[name], strict=True)] for name in ("ours", "plain")
    )
    print(
        f"packing {config.packing}: median tokens/s ours {ours_total:.1f} vs plain {plain_total:.1f}, "
        f"ours/plain end to end {ours_total / plain_total:.3f}, training loop {ours_loop / plain_loop:.3f}; "
        f"outside the loop ours {ours_outside:.1f} s vs plain {plain_outside:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--packing", choices=["both", "off", "on"], default="both")
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    records = cot_records(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        source = Store(Path(tmp) / "source")
        out = source.output("datasets/ner-cot/v1")
        out.publish(kind="cot", stage="publish", config=PublishConfig(), files=[out.write("data", records, CoTRecord)])
        print(
            f"model: SmolLM2-135M-Instruct (fp32), {len(records)} CoT records, batch {args.batch}, {args.steps} steps"
        )
        with contextlib.redirect_stdout(sys.stderr):  # warm-up, untimed: first imports, page cache
            plain(
                SFTConfig.preset("smoke", dataset="-", model=resolve_model("default"), max_steps=1), records, Path(tmp)
            )
        header = f"{'packing':>8} {'run':>6} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'loop tok/s':>11}"
        print(f"{header} {'outside s':>10}")
        for packing in {"both": (False, True), "off": (False,), "on": (True,)}[args.packing]:
            config = SFTConfig.preset(
                "smoke", dataset="datasets/ner-cot/v1", model=resolve_model("default"), max_steps=args.steps,
                packing=packing, global_batch_size=args.batch, per_device_batch_size=args.batch, learning_rate=5e-5,
            )  # fmt: skip
            compare(config, records, source, args.rounds, tmp)


if __name__ == "__main__":
    main()
