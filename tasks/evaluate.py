"""Zero-shot evaluation: any model on eval sets, scored with the paper's metric, stored with a report.

Usage::

    rner eval --config eval.yaml                   # a progress bar, then the report
    python -m tasks.evaluate --config eval.yaml    # the job form: progress lines, last line {"address", "digest"}
    published = run(EvalConfig.preset("smoke"), Store.from_settings())

    # eval.yaml
    model: {kind: vllm, model: "store:models/re/grpo/0f3a…", max_model_len: 8192}   # or kind: endpoint | transformers
    suite: crossner_mit
    suite_root: /data/IE_INSTRUCTIONS/NER
    datasets: [datasets/my-ner/v2, demo:test]

The model is any ``Generator``: an ``Endpoint`` (a running OpenAI-compatible server), a ``VLLMLaunch`` (a
vLLM server started for the run and always stopped) or a ``TransformersRunner`` (in-process, for small
runs); a caller that already runs a server for it passes ``endpoint``. Eval sets are described in
``tasks.eval_sets``. Every example is asked with the NER instruction the config names (``prompt``: ours, or
``paper``, the released one, to score the authors' checkpoints as their evaluate.py does; ``with_cot``),
carrying its dataset's entity types without the paper's catch-all labels (``metrics.paper_labels``),
decoded greedily unless ``sampling`` says otherwise, and ended where the answer object closes
(``stop_at_answer``: a model that writes on after its answer does not run to ``max_tokens``). Server
generation runs on the shared LLM stage machinery (``tasks.llm_stage``): shards commit as they finish and
finished requests are cached under the output, so a rerun resumes; in-process generation commits the same
shards. ``rner eval`` shows progress as a bar on a terminal and as plain lines in a log (``tasks.progress``).

Each completion is parsed and grounded into a ``Prediction``; empty mentions (``"person": [""]``) are kept, as
the released metric counts them. One that does not parse is an empty prediction with ``parse_error`` set and
counts in the parse-failure rate. Metrics are paper mode (the released
UniversalNER/SQuAD evaluation) and strict spans, per dataset and the unweighted average over datasets,
computed as ``rner score`` computes them on the stored gold and predictions.

The output is ``evals/evaluate/<hash>``, the hash over the config (without where things live), the prompt,
the model's identity (``model_identity``) and the eval sets' digests: evaluating the same model on the same
data again finds it. Kind ``predictions`` (its data files are Prediction records). Files by role:

- ``data``: Prediction shards (raw completion, reasoning, grounded entities, parse error, generation metadata);
- ``gold``: the examples as evaluated (NERExample JSONL, ``source`` = dataset), so that
  ``rner score --gold <gold> --pred <data>`` reproduces the metrics;
- ``metrics``: ``{"paper": Report, "strict": Report, "generation": {dataset: stats}}`` as JSON;
- ``chart``: PNG bar charts of F1 per dataset and per label of one dataset (``per_label_dataset``);
- ``report``: markdown: the table (F1, strict F1, parse failures, reasoning, answer and completion tokens per
  example) and the charts.

With ``reasoning_budget`` (tokens) every example is budget-forced (``tasks.budget``): the model thinks up to
the budget, its reasoning is closed there if it has not closed it, and the answer is generated after it.
Each prediction's ``generation.reasoning_tokens`` is then the count of its thinking tokens (the server's, or
the in-process generator's), and the report's reasoning column those counts. With ``state_budget`` the prompt
says so too ("Think for at most N tokens."), as GRPO's ``target_length`` trains a model to be asked.

``stats`` in the manifest repeat the headline numbers (average F1 in both modes, parse-failure rate, mean
reasoning tokens) for flows and UIs that do not read files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from schemas import (
    Endpoint,
    EvalConfig,
    FileEntry,
    Generation,
    NERExample,
    Prediction,
    SamplingParams,
    TransformersRunner,
    canonical_json,
    config_hash,
    output_address,
    sha256_hex,
)
from schemas.configs import Generator, LLMStage, PromptStyle
from tasks.budget import budget_complete
from tasks.errors import RnerError
from tasks.eval_report import ALL, bar_chart, generation_stats, report_markdown
from tasks.eval_sets import EvalSet, load_eval_sets, select_examples
from tasks.extract import load_tokenizer, token_counter
from tasks.llm import request_key
from tasks.llm_stage import Progress, map_requests, pending_shards, serving
from tasks.metrics import Report, paper_labels, score
from tasks.models import resolve_model
from tasks.parse import ground, parse_completion
from tasks.progress import progress_bar
from tasks.prompts import (
    ANSWER_STOPS,
    BUDGET_STATEMENT,
    INSTRUCTION,
    Message,
    instruction_template,
    ner_messages,
    prompt_digest,
)
from tasks.score import pair, report_table
from tasks.settings import Settings
from tasks.stage_cli import stage_main
from tasks.store import Output, Published, Store

if TYPE_CHECKING:
    from tasks.generate import Completion

PROMPT = prompt_digest(INSTRUCTION)
"""The digest of the default instruction (ours, with reasoning); ``prompt_id`` gives any config's."""


class EvalError(RnerError, ValueError):
    """An evaluation that cannot run as configured."""


def prompt_id(config: EvalConfig) -> str:
    """The digest of the instruction ``config`` asks with: part of the output's address and its report."""
    template = instruction_template(config.prompt, with_cot=config.with_cot)
    return prompt_digest(template, BUDGET_STATEMENT) if config.state_budget else prompt_digest(template)


def messages(
    example: NERExample, *, prompt: PromptStyle = "rner", with_cot: bool = True, budget: int | None = None
) -> list[Message]:
    """The prompt of one example: its schema without catch-all labels, as the paper's evaluation asks (``budget``:
    the reasoning budget stated at its end)."""
    return ner_messages(example.text, paper_labels(example.labels), prompt=prompt, with_cot=with_cot, budget=budget)


def config_messages(config: EvalConfig) -> Callable[[NERExample], list[Message]]:
    budget = config.reasoning_budget if config.state_budget else None
    return partial(messages, prompt=config.prompt, with_cot=config.with_cot, budget=budget)


def prediction(example: NERExample, completion: str, generation: Generation | None = None) -> Prediction:
    """A completion parsed and grounded; an unreadable one is an empty prediction that says why."""
    parsed = parse_completion(completion, keep_blank=True)
    grounded = ground(example.text, parsed.mentions)
    return Prediction(
        id=example.id,
        completion=completion,
        reasoning=parsed.reasoning,
        entities=(*grounded.entities, *grounded.ungrounded),
        parse_error=None if parsed.ok else f"{parsed.reason}: {parsed.detail}",
        generation=generation,
    )


def model_identity(model: Generator, settings: Settings | None = None) -> str:
    """What is evaluated, for the output's address: a digest of a model directory's files (a fetched or
    converted model included), a hub id as given (pin a revision by downloading it), an endpoint's served name."""
    if isinstance(model, Endpoint):
        return f"endpoint:{model.model}"
    path = Path(resolve_model(model.model, settings))
    if not path.is_dir():
        return f"hub:{model.model}"
    digests = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb") as f:
            digests[file.relative_to(path).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return f"sha256:{sha256_hex(canonical_json(digests))}"


def run(
    config: EvalConfig, store: Store, *, endpoint: Endpoint | None = None, progress: Progress | None = None
) -> Published:
    sets = load_eval_sets(config, store)
    examples = select_examples(sets, config.max_examples, config.seed)
    if not examples:
        raise EvalError("the eval sets hold no examples")
    datasets = {ex.source for ex in examples}
    if config.per_label_dataset is not None and config.per_label_dataset not in datasets:
        known = ", ".join(sorted(datasets))
        raise EvalError(f"per_label_dataset {config.per_label_dataset!r} is not among the datasets: {known}")
    identity = model_identity(config.model, store.settings)
    digest = sha256_hex(canonical_json({"config": config_hash(config), "prompt": prompt_id(config), "model": identity}))
    out = store.output(output_address("evaluate", digest, [s.ref.digest for s in sets], prefix="evals"))
    if (published := out.published()) is not None:
        return published
    if pending := pending_shards(out, examples, config.shard_size):
        if isinstance(config.model, TransformersRunner) and endpoint is None:
            _generate_locally(config, config.model, out, pending, len(examples), progress)
        else:
            _generate_on_server(config, out, examples, endpoint, progress)
    shards = [entry for _, entry in sorted(out.committed_shards().items())]
    by_id = {p.id: p for p in store.read_records(out.address, shards)}
    predictions: list[Prediction] = [by_id[ex.id] for ex in examples]  # type: ignore[misc]
    return _publish(config, out, sets, examples, predictions, shards, identity)


def eval_sampling(config: EvalConfig) -> SamplingParams:
    """The decoding of every request: ``sampling``, with ``stop_at_answer`` also ending at the answer's closing."""
    if not config.stop_at_answer:
        return config.sampling
    return config.sampling.model_copy(update={"stop": tuple(dict.fromkeys((*config.sampling.stop, *ANSWER_STOPS)))})


def _generate_on_server(
    config: EvalConfig, out: Output, examples: list[NERExample], endpoint: Endpoint | None, progress: Progress | None
) -> None:
    # map_requests reads the request settings of an LLM stage; evaluation has the same fields.
    sampling = eval_sampling(config)
    requests = LLMStage.model_validate(
        config.model_dump(include={"shard_size", "concurrency", "request_timeout_s", "max_retries"})
        | {"sampling": sampling}
    )
    with serving(config.model, endpoint, settings=out.store.settings) as ep:  # type: ignore[arg-type]  # a TransformersRunner only with endpoint
        map_requests(
            out,
            examples,
            config=requests,
            endpoint=ep,
            messages=config_messages(config),
            build=lambda ex, r: prediction(ex, r.text, r.generation(ep.model, sampling)),
            record_type=Prediction,
            progress=progress,
            reasoning_budget=config.reasoning_budget,
        )


def _generate_locally(
    config: EvalConfig,
    runner: TransformersRunner,
    out: Output,
    pending: list[tuple[str, Sequence[NERExample]]],
    total: int,
    progress: Progress | None,
) -> None:
    """The pending shards generated in-process, each committed as it finishes (as map_requests does)."""
    from tasks.generate import LocalGenerator

    generator = LocalGenerator(
        runner.model, batch_size=runner.batch_size, device=runner.device, settings=out.store.settings
    )
    done = total - sum(len(shard) for _, shard in pending)
    if progress:
        progress(done, total)
    for name, shard in pending:
        conversations = [config_messages(config)(ex) for ex in shard]
        if config.reasoning_budget is None:
            completions = generator.complete(conversations, eval_sampling(config))
        else:
            completions = budget_complete(generator, conversations, eval_sampling(config), config.reasoning_budget)
        records = [
            prediction(ex, c.text, _local_generation(runner.model, conversation, config, c))
            for ex, conversation, c in zip(shard, conversations, completions, strict=True)
        ]
        out.commit_shard(name, records, Prediction)
        done += len(shard)
        if progress:
            progress(done, total)


def _local_generation(
    model: str, conversation: list[Message], config: EvalConfig, completion: Completion
) -> Generation:
    return Generation(
        model=model,
        sampling=eval_sampling(config),
        request_key=request_key(model, conversation, eval_sampling(config)),
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        finish_reason=completion.finish_reason,
        reasoning_tokens=completion.reasoning_tokens,
    )


def _publish(
    config: EvalConfig,
    out: Output,
    sets: list[EvalSet],
    examples: list[NERExample],
    predictions: list[Prediction],
    shards: list[FileEntry],
    identity: str,
) -> Published:
    pairs = pair(examples, predictions)
    paper, strict = score(pairs, "paper"), score(pairs, "strict")
    stats = generation_stats(examples, predictions, _reasoning_tokens(config, predictions, out.store.settings))
    metrics = {"paper": paper.to_dict(), "strict": strict.to_dict(), "generation": stats}
    label_dataset = config.per_label_dataset or max(paper.per_dataset, key=lambda n: paper.per_dataset[n].micro.n_gold)
    per_label = paper.per_dataset[label_dataset].per_label
    charts = {
        "F1 per dataset": out.put_file("f1-per-dataset", _dataset_chart(paper), role="chart", suffix=".png"),
        f"F1 per label: {label_dataset}": out.put_file(
            "f1-per-label",
            bar_chart(list(per_label), [prf.f1 for prf in per_label.values()], f"F1 per label: {label_dataset}"),
            role="chart",
            suffix=".png",
        ),
    }
    header = _header(config, sets, identity, len(examples))
    links = {title: f"../{entry.path}" for title, entry in charts.items()}
    report = report_markdown(header, paper, strict, stats, links)
    files = [
        *shards,
        out.write("gold", examples, NERExample, role="gold"),
        out.put_file("metrics", json.dumps(metrics, indent=2).encode(), role="metrics", suffix=".json"),
        *charts.values(),
        out.put_file("report", report.encode(), role="report", suffix=".md"),
    ]
    summary = {
        "examples": len(examples),
        "datasets": {s.origin: sorted({ex.source for ex in s.examples}) for s in sets},
        "average_f1": paper.average_f1,
        "average_f1_strict": strict.average_f1,
        "micro_f1": paper.micro.f1,
        **{key: stats[ALL][key] for key in ("parse_failures", "parse_failure_rate", "hit_max_tokens")},
        **{key: stats[ALL][key] for key in ("reasoning_tokens_mean", "answer_tokens_mean", "completion_tokens_mean")},
        "reasoning_budget": config.reasoning_budget,
        "prompt_tokens": sum(p.generation.prompt_tokens for p in predictions if p.generation),
        "completion_tokens": sum(p.generation.completion_tokens for p in predictions if p.generation),
        "dropped_gold": sum(s.dropped_gold for s in sets),
        "model_identity": identity,
        "prompt": prompt_id(config),
    }
    inputs = [s.ref for s in sets]
    return out.publish(kind="predictions", stage="evaluate", config=config, files=files, inputs=inputs, stats=summary)


def _reasoning_tokens(config: EvalConfig, predictions: Sequence[Prediction], settings: Settings) -> list[int] | None:
    """Thinking tokens per prediction: the server's counts under a reasoning budget, else the reasoning's
    tokens counted with the model's tokenizer (``None`` without one)."""
    counted = [p.generation.reasoning_tokens if p.generation else None for p in predictions]
    if all(n is not None for n in counted):
        return counted  # type: ignore[return-value]
    ref = config.tokenizer or (None if isinstance(config.model, Endpoint) else config.model.model)
    if ref is None:
        return None
    return token_counter(load_tokenizer(ref, settings))([p.reasoning or "" for p in predictions])


def _dataset_chart(paper: Report) -> bytes:
    names = list(paper.per_dataset)
    f1s = [paper.per_dataset[n].micro.f1 for n in names]
    return bar_chart(names, f1s, "F1 per dataset (paper mode)", average=paper.average_f1)


def _header(config: EvalConfig, sets: list[EvalSet], identity: str, examples: int) -> list[str]:
    s = eval_sampling(config)
    lines = [
        f"- model: `{config.model.model}` ({config.model.kind}), identity `{identity[:23]}`",
        f"- decoding: temperature {s.temperature:g}, top_p {s.top_p:g}, max_tokens {s.max_tokens}"
        f"{f', stop at {list(s.stop)}' if s.stop else ''}; "
        f"prompt {config.prompt} `{prompt_id(config)}`",
        f"- {examples} examples from: {', '.join(f'`{e.origin}`' for e in sets)}",
    ]
    if config.reasoning_budget is not None:
        lines.append(f"- reasoning budget: {config.reasoning_budget} tokens (budget forcing), then the answer")
    dropped = sum(e.dropped_gold for e in sets)
    if dropped:
        lines.append(f"- {dropped} gold entities were left out: their text is not in their sentence")
    return lines


main = stage_main(EvalConfig, run)


def cli_eval(
    config: Annotated[Path, typer.Option("--config", help="YAML with EvalConfig fields (may start with `preset:`).")],
    preset: Annotated[str | None, typer.Option(help="Preset to start from when the file names none.")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL (default: RNER_STORE).")] = None,
) -> None:
    """Evaluate a model on eval sets: a progress bar, the F1 table, where the report is, then the output's
    address and digest (the last line)."""
    from rich.console import Console

    from tasks.config import load_config
    from tasks.serving import raise_on_sigterm

    raise_on_sigterm()
    target = Store(store) if store else Store.from_settings()
    with progress_bar("generating") as bar:
        published = run(load_config(EvalConfig, config, preset=preset), target, progress=bar)
    manifest, console = published.manifest, Console()
    gold: list[NERExample] = list(target.records(manifest, role="gold"))  # type: ignore[arg-type]
    console.print(report_table(score(pair(gold, list(target.records(manifest))))))  # type: ignore[arg-type]
    stats = manifest.stats
    reasoning = "n/a" if stats["reasoning_tokens_mean"] is None else f"{stats['reasoning_tokens_mean']:.1f}"
    console.print(
        f"parse failures: {stats['parse_failures']} of {stats['examples']}; tokens per example: reasoning "
        f"{reasoning}, completion {stats['completion_tokens_mean']:.1f}"
    )
    [report] = manifest.files_with("report")
    console.print(f"report: {target.uri(f'{manifest.address}/{report.path}')}", soft_wrap=True)
    print(json.dumps({"address": manifest.address, "digest": published.digest}))


if __name__ == "__main__":
    main()
