"""CG end to end: on the real vLLM server (mechanics), and on a scripted server (faults, resume, SIGKILL).

The real SmolLM2-135M rarely produces a usable annotation, so the real-server test checks that every
passage is accounted for, not quality. The scripted server (tests/fault_server.py) plays a competent
teacher and judge from the demo corpus's gold entities: it is what lets the tests see records kept, and
inject the faults a real server will not produce on demand.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fault_server import FaultServer, ok, sequence, status

from schemas import AnnotateConfig, CGConfig, Endpoint, Passage
from schemas.base import deep_merge
from tasks import annotate, cg
from tasks.demo import load_demo
from tasks.jsonl import dump_jsonl
from tasks.llm_stage import StageFailed
from tasks.prompts import answer_json
from tasks.store import Store

GOLD = {ex.text: ex for ex in load_demo("train")}


def teacher_or_judge(prompt: str) -> str:
    """A competent scripted model: gold entities with reasoning that quotes them; judge scores by length."""
    if prompt.startswith("You are reviewing"):
        reasoning = prompt.split("Annotator's reasoning:\n", 1)[1]
        return f"The steps follow from the text.\nScore: {9 if len(reasoning) % 3 else 7}"
    text = re.search(r"^Text: (.*)$", prompt, re.MULTILINE).group(1)  # type: ignore[union-attr]
    ex = GOLD[text]
    thoughts = " ".join(f'"{e.text}" is a {e.label}.' for e in ex.entities) or "There are no entities."
    return f"<think>\n{thoughts}\n</think>\n\n{answer_json(ex.entities, ex.labels)}"


def seed(store: Store, n: int, prefix: str = "raw/passages", start: int = 0) -> list[Passage]:
    """Demo training passages ``start`` to ``start + n`` as a raw passage file under ``prefix``."""
    examples = load_demo("train")[start : start + n]
    passages = [Passage(id=ex.id, text=ex.text, labels=ex.labels, source=ex.source) for ex in examples]
    store.put(f"{prefix}/part-0.jsonl", dump_jsonl(passages, Passage))
    return passages


def smoke(endpoint: Endpoint, **overrides: dict) -> CGConfig:
    server = endpoint.model_dump()
    values = {"input": "raw/passages", "annotate": {"teacher": server}, "judge": {"judge": server}}
    return CGConfig.preset("smoke", **deep_merge(values, overrides))


def test_cg_with_a_scripted_teacher_keeps_records_and_accounts_for_every_passage(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 12)
    huge = b'{"id": "huge", "text": "' + b"x" * 1200 + b'"}\n'
    store.put("raw/passages/part-1.jsonl", b'{"id": "blank", "text": "   "}\n' + huge)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as server:
        config = smoke(server.endpoint, publish={"min_score": 9}, annotate={"max_passage_chars": 1000})
        published = cg.run(config, store)
    stats = published.manifest.stats
    assert stats["passages"] == len(passages) + 2
    assert stats["rejected_at_annotate"] == {"empty_text": 1, "text_too_long": 1}
    assert stats["annotated"] == len(passages) == stats["valid"] == stats["judged"]
    assert stats["kept"] + stats["below_threshold"] + stats["no_score"] == stats["judged"]
    assert 0 < stats["kept"] < len(passages)
    kept = list(store.records(published.manifest))
    assert len(kept) == stats["kept"]
    for record in kept:
        gold = GOLD[record.text]
        assert sorted((e.start, e.end, e.label) for e in record.entities) == sorted(
            (e.start, e.end, e.label) for e in gold.entities
        )
    # Every request was sent once: the teacher once per passage, the judge once per valid record.
    assert server.requests == 2 * len(passages)


def test_transient_faults_are_retried_and_nothing_is_lost_or_duplicated(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 10)
    flaky = sequence(status(500), status(429), ok(answer=teacher_or_judge))
    with FaultServer(flaky) as server:
        config = AnnotateConfig.preset(
            "smoke", input="raw/passages", teacher=server.endpoint.model_dump(), max_retries=3, shard_size=4
        )
        published = annotate.run(config, store)
    ids = [r.id for r in store.records(published.manifest)]
    assert sorted(ids) == sorted(p.id for p in passages)
    assert set(server.attempts.values()) == {3}
    usage = published.manifest.stats["usage_per_shard"]
    assert {name: u["requests"] for name, u in usage.items()} == {"00000": 4, "00001": 4, "00002": 2}
    assert sum(u["completion_tokens"] for u in usage.values()) == published.manifest.stats["completion_tokens"] > 0


def test_a_permanent_failure_fails_its_shard_and_the_rerun_resumes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    passages = seed(store, 10)
    doomed = passages[5].text  # in shard 00001 (shard size 4)

    def script(prompt: str, attempt: int):
        return status(500) if doomed in prompt else ok(answer=teacher_or_judge)

    config = AnnotateConfig.preset("smoke", input="raw/passages", shard_size=4, max_retries=1)
    with FaultServer(script) as server:
        with pytest.raises(StageFailed, match=r"1 of 3 pending shards failed \(00001\).*HTTP 500") as failure:
            annotate.run(config.model_copy(update={"teacher": server.endpoint}), store)
        assert "rerun to resume" in str(failure.value)
        assert server.attempts[next(p for p in server.attempts if doomed in p)] == 2  # max_retries=1: two tries
        first_round = dict(server.attempts)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as fixed:
        published = annotate.run(config.model_copy(update={"teacher": fixed.endpoint}), store)
        # Shards 00000 and 00002 were committed; of shard 00001 only the failed request is sent again.
        assert fixed.requests == 1
    assert sorted(r.id for r in store.records(published.manifest)) == sorted(p.id for p in passages)
    assert len(first_round) == len(passages)


def test_sigkill_mid_shard_then_resume_is_exactly_once(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    passages = seed(store, 12)
    with FaultServer(sequence(ok(delay=0.4, answer=teacher_or_judge))) as server:
        config = AnnotateConfig.preset(
            "smoke", input="raw/passages", teacher=server.endpoint.model_dump(), shard_size=4, concurrency=2
        )
        path = tmp_path / "annotate.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        cmd = [sys.executable, "-m", "tasks.annotate", "--config", str(path), "--store", str(store_dir)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        markers = list(store_dir.glob("cot/raw/annotate/*/_shards/*.json"))
        deadline = time.monotonic() + 60
        while len(markers) < 1 and time.monotonic() < deadline:  # wait until the first shard is committed
            time.sleep(0.05)
            markers = list(store_dir.glob("cot/raw/annotate/*/_shards/*.json"))
        time.sleep(0.5)  # ... and the next one is half done
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert markers, "the stage never committed a shard"
        sent_before = server.requests
        assert sent_before < len(passages)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    address = json.loads(result.stdout.strip().splitlines()[-1])["address"]
    records = list(store.records(store.load(address).manifest))
    assert sorted(r.id for r in records) == sorted(p.id for p in passages)  # each exactly once
    # Only requests in flight at the kill are paid twice.
    assert server.requests - len(passages) <= config.concurrency


@pytest.mark.slow
def test_cg_on_the_real_vllm_server_accounts_for_every_passage(vllm_endpoint: Endpoint, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    seed(store, 6)
    store.put("raw/passages/part-1.jsonl", b'{"id": "blank", "text": ""}\n')
    server = vllm_endpoint.model_dump(mode="json")
    config = {"preset": "smoke", "input": "raw/passages", "annotate": {"teacher": server}, "judge": {"judge": server}}
    path = tmp_path / "cg.yaml"
    path.write_text(yaml.safe_dump(config))
    run = [sys.executable, "-m", "tasks.cli", "cg", "run", "--config", str(path), "--store", str(store_dir)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "annotate progress 6/6" in result.stderr
    published = store.load(json.loads(result.stdout.strip().splitlines()[-1])["address"])
    stats = published.manifest.stats
    assert stats["passages"] == 7 and stats["rejected_at_annotate"] == {"empty_text": 1}
    assert stats["annotated"] == 6
    assert stats["valid"] + stats["rejected_records_at_validate"] == stats["annotated"]
    assert stats["judged"] == stats["valid"]
    assert stats["kept"] + stats["below_threshold"] + stats["no_score"] == stats["judged"]
    assert stats["tokens"]["teacher_completion"] > 0
    [card] = published.manifest.files_with("card")
    text = store.read_file(published.manifest.address, card).decode()
    assert "| annotate | 7 | 6 | 1 (empty_text: 1) |" in text
    assert vllm_endpoint.model in text
    # A second run finds everything done and sends nothing: it is fast and publishes no new version.
    again = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
