"""CG step 4: keep the records the judge scored ≥ ``min_score`` as a new version of the NER-CoT dataset.

Versions live at ``datasets/<dataset>/v<N>``. With ``base`` (a previous version) the new version is the
base's records plus the newly kept ones — the scheduled refresh's increment; ``stats.raw_files`` lists
every raw passage file a version's records came from, so a refresh can tell which files are new.

The next N is taken with the manifest's create-if-absent write, so two publishers racing for the same
N cannot both get it: the loser takes N+1 — unless the version it lost to is the same content (the same
inputs with the same config), which it then returns (``publish_version``): overlapping runs of the same
publish give one version. Publishing the same inputs with the same config again returns the version
published before instead of a new one.

Each version carries a dataset card (markdown) built from the lineage, with counts after every step
that add up: passages → annotated (+ rejected at annotate) → valid (+ rejected at validate) → judged
(+ no score) → kept (+ below threshold); teacher and judge models, sampling, prompt hashes, reject
reasons and the score histogram.

When annotate sampled the teacher several times per passage (``samples_per_passage``), the chains that passed
validation and reached ``min_score`` are candidates, and each passage keeps the shortest of its candidates
(``shortest_chains``), under the passage's own id; the card and the stats count the candidates per passage and
the longer duplicates dropped.

Usage::

    python -m tasks.publish --config publish.yaml     # cot: validate output, verdicts: judge output
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from schemas import CoTRecord, JudgeVerdict, Manifest, PublishConfig, config_hash
from tasks.errors import RnerError
from tasks.extract import load_tokenizer, token_counter
from tasks.llm_stage import Progress
from tasks.stage_cli import stage_main
from tasks.store import AlreadyPublished, Output, Published, Store


class PublishError(RnerError):
    """The inputs do not belong together."""


def versions(store: Store, dataset: str) -> list[int]:
    """Published version numbers of ``dataset``, ascending."""
    pattern = re.compile(rf"^datasets/{re.escape(dataset)}/v(\d+)/manifest\.json$")
    return sorted(int(m.group(1)) for p in store.list(f"datasets/{dataset}") if (m := pattern.match(p)))


def latest(store: Store, dataset: str) -> Published | None:
    found = versions(store, dataset)
    return store.load(f"datasets/{dataset}/v{found[-1]}") if found else None


def find_version(
    store: Store, dataset: str, same: Callable[[Published], bool], *, above: int = 0
) -> tuple[Published | None, int]:
    """The newest version of ``dataset`` above ``above`` that is the ``same`` content (or None), and the
    highest version number there is (``above`` if none is higher)."""
    found = [n for n in versions(store, dataset) if n > above]
    for n in reversed(found):
        done = store.load(f"datasets/{dataset}/v{n}")
        if same(done):
            return done, max(found)
    return None, max(found, default=above)


def publish_version(
    store: Store,
    dataset: str,
    same: Callable[[Published], bool],
    attempt: Callable[[Output, int], Published],
    *,
    seen: int = 0,
) -> Published:
    """Publish ``dataset``'s next version with ``attempt(output, n)`` (files, then ``Output.publish``), unless a
    version of the ``same`` content exists: then that one. Versions up to ``seen`` were looked at already.

    Exactly one version per content, however many writers overlap: a writer that loses the race for N
    (``AlreadyPublished``) looks at the version it lost to and returns it when it is the same content, else
    tries N+1. Every version above the last one looked at is looked at before a new one is tried, and a
    version another writer publishes later has a higher N, which this writer either takes after it (and so
    looks at it first) or loses to (and so looks at it)."""
    found, top = find_version(store, dataset, same, above=seen)
    if found is not None:
        return found
    n = top + 1
    while True:
        try:
            return attempt(store.output(f"datasets/{dataset}/v{n}"), n)
        except AlreadyPublished as lost:
            winner = lost.existing or store.load(f"datasets/{dataset}/v{n}")
            if same(winner):
                return winner
            n += 1


def run(config: PublishConfig, store: Store, *, progress: Progress | None = None) -> Published:
    if config.cot is None or config.verdicts is None:
        raise PublishError("publish needs `cot` (a validate output) and `verdicts` (a judge output on it)")
    cot, judged = store.load(config.cot), store.load(config.verdicts)
    if cot.digest not in {ref.digest for ref in judged.manifest.inputs}:
        raise PublishError(f"{config.verdicts} judged another output than {config.cot}")
    base = store.load(config.base) if config.base else None
    inputs = [cot.ref, judged.ref, *([base.ref] if base else [])]
    digests = {ref.digest for ref in inputs}

    def same(done: Published) -> bool:
        return done.manifest.config_hash == config_hash(config) and {r.digest for r in done.manifest.inputs} == digests

    found, seen = find_version(store, config.dataset, same)
    if found is not None:
        return found

    records: list[CoTRecord] = list(store.records(cot.manifest))  # type: ignore[arg-type]
    verdicts: dict[str, JudgeVerdict] = {v.id: v for v in store.records(judged.manifest)}  # type: ignore[misc]
    missing = [r.id for r in records if r.id not in verdicts]
    if missing:
        raise PublishError(f"{len(missing)} record(s) have no verdict in {config.verdicts}, e.g. {missing[:3]}")
    passing = [r for r in records if _score(verdicts[r.id]) >= config.min_score]
    funnel = _funnel(store, cot.manifest, judged.manifest, len(passing))
    sampled = funnel["samples_per_passage"] > 1  # else each passage has one chain: no length to measure
    lengths = _chain_lengths(store, cot.manifest, passing) if sampled else [0] * len(passing)
    kept, candidates = shortest_chains(passing, lengths)
    funnel |= {"kept": len(kept), "longer_duplicates": len(passing) - len(kept), "candidates": candidates}
    carried: list[CoTRecord] = list(store.records(base.manifest)) if base else []  # type: ignore[arg-type]
    clash = sorted({r.id for r in carried} & {r.id for r in kept})
    if clash:
        raise PublishError(f"new records reuse ids of {config.base}: {clash[:5]}; passage ids must stay unique")
    raw_files = {**(base.manifest.stats.get("raw_files", {}) if base else {}), **funnel.pop("raw_files")}
    if progress:
        progress(len(records), len(records))

    def attempt(out: Output, n: int) -> Published:
        card = dataset_card(config, n, kept, funnel, len(carried))
        data = out.write("data", [*carried, *kept], CoTRecord)
        files = [data, out.put_file("card", card.encode(), role="card", suffix=".md")]
        return out.publish(
            kind="cot",
            stage="publish",
            config=config,
            files=files,
            inputs=inputs,
            stats={
                "version": n,
                **funnel,
                "carried_over": len(carried),
                "records": data.rows,
                "raw_files": raw_files,
            },
        )

    return publish_version(store, config.dataset, same, attempt, seen=seen)


def _score(verdict: JudgeVerdict) -> float:
    return -1.0 if verdict.score is None else verdict.score


def shortest_chains(records: Sequence[CoTRecord], lengths: Sequence[int]) -> tuple[list[CoTRecord], dict[str, int]]:
    """Per passage (``passage_id``; a record without one is its own passage), the record of the least length (the
    first on a tie), as the passage's record (its id, ``passage_id`` cleared); in the order the passages come.
    Also how many passages had how many candidates (``{"2": 5}``: five passages had two)."""
    best: dict[str, tuple[int, CoTRecord]] = {}
    count: Counter[str] = Counter()
    for record, length in zip(records, lengths, strict=True):
        passage = record.passage_id or record.id
        count[passage] += 1
        if passage not in best or length < best[passage][0]:
            best[passage] = (length, record)
    kept = [r.model_copy(update={"id": p, "passage_id": None}) for p, (_, r) in best.items()]
    return kept, {str(n): m for n, m in sorted(Counter(count.values()).items())}


def _chain_lengths(store: Store, valid: Manifest, records: Sequence[CoTRecord]) -> list[int]:
    """The reasoning's length of each record, in tokens of validate's ``tokenizer`` when it has one (the student's,
    which counted ``max_reasoning_tokens``), else in characters."""
    texts = [r.reasoning for r in records]
    tokenizer = valid.config.get("tokenizer")
    return token_counter(load_tokenizer(tokenizer, store.settings))(texts) if tokenizer else [len(t) for t in texts]


def _funnel(store: Store, valid: Manifest, judged: Manifest, passing: int) -> dict[str, Any]:
    """Counts after every step, read from the lineage's manifests (``passing``: the records scored high enough;
    the caller adds how many of them it kept)."""
    annotated = store.load_ref(valid.inputs[0]).manifest
    return {
        "raw_files": {ref.address: ref.digest for ref in annotated.inputs},
        "passages": annotated.stats["passages"],
        "annotated": annotated.stats["annotated"],
        "rejected_at_annotate": annotated.stats["rejected"],
        "valid": valid.stats["valid"],
        "rejected_at_validate": valid.stats["reasons"],
        "rejected_records_at_validate": valid.stats["rejected"],
        "judged": judged.stats["judged"],
        "no_score": judged.stats["no_score"],
        "passing": passing,
        "below_threshold": judged.stats["judged"] - judged.stats["no_score"] - passing,
        "samples_per_passage": annotated.config.get("samples_per_passage", 1),
        "shortest_by": "tokens" if valid.config.get("tokenizer") else "characters",
        "histogram": judged.stats["histogram"],
        "reasoning_tokens": valid.stats.get("reasoning_tokens"),  # with validate's tokenizer only
        "prompts": {"teacher": annotated.stats["prompt"], "judge": judged.stats["prompt"]},
        "models": {"teacher": _model(annotated.config, "teacher"), "judge": _model(judged.config, "judge")},
        "tokens": {
            "teacher_prompt": annotated.stats["prompt_tokens"],
            "teacher_completion": annotated.stats["completion_tokens"],
            "judge_prompt": judged.stats["prompt_tokens"],
            "judge_completion": judged.stats["completion_tokens"],
        },
        "lineage": {"annotate": annotated.address, "validate": valid.address, "judge": judged.address},
    }


def dataset_card(
    config: PublishConfig,
    version: int,
    kept: list[CoTRecord],
    funnel: dict[str, Any],
    carried: int,
) -> str:
    models = funnel["models"]
    rejected_annotate = sum(funnel["rejected_at_annotate"].values())
    hist = funnel["histogram"]
    width = max(hist.values() or [1]) or 1
    lines = [
        f"# {config.dataset} v{version}",
        "",
        f"{carried + len(kept)} CoT records (passage, entity types, reasoning, grounded entities): "
        f"{len(kept)} new, kept where the judge scored the reasoning ≥ {config.min_score:g} of 10"
        + (f", and {carried} carried over from `{config.base}`." if config.base else ".")
        + " Record schema: `CoTRecord`. The counts below are for the new records.",
        "",
        "## Models",
        "",
        "| role | model | sampling | prompt hash |",
        "|---|---|---|---|",
        *[
            f"| {role} | {m['model']} | {_sampling(m['sampling'])} | {funnel['prompts'][role]} |"
            for role, m in models.items()
        ],
        "",
        "## Counts",
        "",
        "| step | in | out | dropped |",
        "|---|---:|---:|---|",
        f"| annotate | {funnel['passages']} | {funnel['annotated']} | {rejected_annotate}"
        f"{_reasons(funnel['rejected_at_annotate'])} |",
        f"| validate | {funnel['annotated']} | {funnel['valid']} | {funnel['rejected_records_at_validate']}"
        f"{_reasons(funnel['rejected_at_validate'])} |",
        f"| judge | {funnel['valid']} | {funnel['judged'] - funnel['no_score']} | {funnel['no_score']} (no_score) |",
        f"| publish (score ≥ {config.min_score:g}) | {funnel['judged'] - funnel['no_score']} | {funnel['passing']} "
        f"| {funnel['below_threshold']} (below threshold) |",
        *_shortest_rows(funnel),
        "",
        "A record rejected at validate can have several reasons; the reason counts are per reason.",
        "",
        "## Judge scores",
        "",
        "| score | records | |",
        "|---:|---:|---|",
        *[f"| {s} | {n} | {'█' * round(20 * n / width)} |" for s, n in hist.items()],
        "",
        *_length_table(funnel["reasoning_tokens"]),
        "## Tokens",
        "",
        "| | prompt | completion |",
        "|---|---:|---:|",
        f"| teacher | {funnel['tokens']['teacher_prompt']} | {funnel['tokens']['teacher_completion']} |",
        f"| judge | {funnel['tokens']['judge_prompt']} | {funnel['tokens']['judge_completion']} |",
        "",
        "## Lineage",
        "",
        *[f"- {step}: `{address}`" for step, address in funnel["lineage"].items()],
        "",
    ]
    return "\n".join(lines)


def _shortest_rows(funnel: dict[str, Any]) -> list[str]:
    """The shortest-of-N step's row and what it chose from, when the teacher was sampled several times."""
    n = funnel["samples_per_passage"]
    if n == 1:
        return []
    per_passage = ", ".join(f"{k}: {v}" for k, v in funnel["candidates"].items())
    return [
        f"| shortest of {n} per passage (reasoning {funnel['shortest_by']}) | {funnel['passing']} | {funnel['kept']} "
        f"| {funnel['longer_duplicates']} (longer duplicates) |",
        "",
        f"The teacher wrote {n} chains per passage; the shortest that passed validation and the judge is kept. "
        f"Passages by number of passing chains: {per_passage or 'none'}.",
    ]


def _length_table(histograms: dict[str, dict[str, int]] | None) -> list[str]:
    """The reasoning-length histogram before and after validation (its length cap), when validate counted it."""
    if histograms is None:
        return []
    checked, valid = histograms["checked"], histograms["valid"]
    return [
        "## Reasoning length",
        "",
        "Tokens of the reasoning, of the records validation checked and of those it kept (`max_reasoning_tokens`).",
        "",
        "| tokens | checked | valid |",
        "|---|---:|---:|",
        *[f"| {bin} | {n} | {valid[bin]} |" for bin, n in checked.items()],
        "",
    ]


def _model(config: dict[str, Any], role: str) -> dict[str, Any]:
    """Which model served ``role``, as its stage config names it, and the sampling it used."""
    return {"model": config[role]["model"], "sampling": config["sampling"]}


def _sampling(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def _reasons(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if counts else ""


main = stage_main(PublishConfig, run)

if __name__ == "__main__":
    main()
