"""CG step 3: a judge LLM scores each validated reasoning chain from 0 to 10.

The judge sees the passage, the entity types, the reasoning and the extracted entities, and is asked
for a short justification ending in ``Score: N`` (``tasks.prompts.judge_messages``). ``parse_score``
reads the reply as data: the last ``Score: N`` (also ``score = N``, ``N/10``, ``N out of 10``, ``{"score": N}``, or
a reply that is only a number), within 0-10. A reply without one becomes a verdict with
``parse_error`` set (reason ``no_score`` in the card), never a crash. A reasoning model's separate
reasoning is not searched for the score: only the final answer counts.

Output (``cot/judged/judge/<hash>``): one JudgeVerdict per input record, in shards.

Usage::

    python -m tasks.judge --config judge.yaml      # input: the validate output's address
"""

from __future__ import annotations

import json
import re

from schemas import CoTRecord, Endpoint, JudgeConfig, JudgeVerdict, config_hash, output_address, sha256_hex
from tasks.errors import RnerError
from tasks.llm import ChatResult
from tasks.llm_stage import Progress, collect_shards, map_requests, pending_shards, serving
from tasks.prompts import JUDGE_INSTRUCTION, judge_messages, prompt_digest
from tasks.stage_cli import stage_main
from tasks.store import Published, Store

PROMPT = prompt_digest(JUDGE_INSTRUCTION)

_NUMBER = r"(\d{1,3}(?:\.\d+)?)(?!\d)"
_PATTERNS = (
    re.compile(rf"\bscore\b\W{{0,3}}(?:(?:is|of)\s+)?[:=]?\s*\**\s*{_NUMBER}", re.IGNORECASE),
    re.compile(rf"\b{_NUMBER}\s*(?:/|out of)\s*10\b", re.IGNORECASE),
)


def parse_score(reply: str) -> tuple[float | None, str, str | None]:
    """(score, rationale, error): the judge's score in [0, 10] and the reply without the score's line."""
    text = reply.strip()
    found: list[tuple[int, int, float]] = []
    for pattern in _PATTERNS:
        found += [(m.start(), m.end(), float(m.group(1))) for m in pattern.finditer(text)]
    found += _json_scores(text)
    if re.fullmatch(_NUMBER, text):
        found.append((0, len(text), float(text)))
    if not found:
        return None, text, "no_score: the reply has no 'Score: N'"
    start, end, score = max(found)  # the last one the judge wrote
    if not 0 <= score <= 10:
        return None, text, f"no_score: score {score:g} is outside 0-10"
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    rationale = (text[:line_start] + (text[line_end:] if line_end != -1 else "")).strip()
    return score, rationale, None


def _json_scores(text: str) -> list[tuple[int, int, float]]:
    found = []
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            value = json.loads(m.group(0)).get("score")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append((m.start(), m.end(), float(value)))
    return found


def verdict(record: CoTRecord, result: ChatResult, model: str, config: JudgeConfig) -> JudgeVerdict:
    score, rationale, error = parse_score(result.content)
    return JudgeVerdict(
        id=record.id,
        score=score,
        rationale=rationale,
        completion=result.text,
        parse_error=error,
        judge=result.generation(model, config.sampling),
    )


def run(
    config: JudgeConfig,
    store: Store,
    *,
    endpoint: Endpoint | None = None,
    progress: Progress | None = None,
) -> Published:
    if config.input is None:
        raise RnerError("judge needs `input`: the address of a validate output")
    source = store.load(config.input)
    digest = sha256_hex(config_hash(config) + PROMPT)
    out = store.output(output_address("judge", digest, [source.digest], prefix="cot/judged"))
    if (published := out.published()) is not None:
        return published
    records: list[CoTRecord] = list(store.records(source.manifest))  # type: ignore[arg-type]
    if pending_shards(out, records, config.shard_size):
        with serving(config.judge, endpoint, settings=store.settings) as ep:
            map_requests(
                out,
                records,
                config=config,
                endpoint=ep,
                messages=lambda r: judge_messages(r.text, r.labels, r.reasoning, r.entities),
                build=lambda r, result: verdict(r, result, ep.model, config),
                record_type=JudgeVerdict,
                progress=progress,
            )
    shards, verdicts, usage = collect_shards(out, lambda v: v.judge)
    scores = [v.score for v in verdicts if v.score is not None]
    stats = {
        "judged": len(verdicts),
        "no_score": len(verdicts) - len(scores),
        "histogram": {str(s): sum(1 for x in scores if int(x) == s) for s in range(11)},
        "mean_score": sum(scores) / len(scores) if scores else None,
        **usage,
        "prompt": PROMPT,
    }
    return out.publish(kind="verdicts", stage="judge", config=config, files=shards, inputs=[source.ref], stats=stats)


main = stage_main(JudgeConfig, run)

if __name__ == "__main__":
    main()
