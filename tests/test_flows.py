"""Prefect flows on a real (temporary) Prefect server: jobs, cache hits on retry, artifacts, events.

Stages run as real subprocess jobs against the scripted teacher/judge of tests/fault_server.py, which
lets a test take the judge down and bring it back (a real vLLM server is exercised by test_cg_run.py).
"""

from __future__ import annotations

from pathlib import Path

from fault_server import FaultServer, ok, sequence, status
from prefect_runs import artifacts, retry, task_runs
from test_cg_run import seed, teacher_or_judge

from flows.cg import cg
from flows.stage_flows import sample
from schemas import CGConfig, Endpoint, SampleConfig
from schemas.base import deep_merge
from tasks.store import Store


def cg_config(teacher: Endpoint, judge: Endpoint, **overrides: dict) -> CGConfig:
    values = {
        "input": "raw/passages",
        "annotate": {"teacher": teacher.model_dump()},
        "judge": {"judge": judge.model_dump(), "max_retries": 0},
    }
    values = deep_merge(values, overrides)
    return CGConfig.preset("smoke", **values)


def test_cg_flow_publishes_with_artifacts(prefect_server: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    seed(store, 8)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as server:
        state = cg(cg_config(server.endpoint, server.endpoint), store=store.url, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["address"] == "datasets/ner-cot/v1"
    assert store.load(result["address"]).digest == result["digest"]
    shown = artifacts(state.state_details.flow_run_id)
    for step in ("annotate", "validate", "judge", "publish"):
        assert shown[f"{step}-stats"] == "table"
        assert f"{step}-output" in shown  # a link (Prefect stores links as markdown)
    assert shown["annotate-progress"] == "progress"
    assert shown["judge-scores"] == "table"
    assert shown["publish-card"] == "markdown"


def test_retrying_a_failed_run_skips_finished_steps_as_cache_hits(prefect_server: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    seed(store, 8)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as teacher, FaultServer(sequence(status(503))) as judge:
        config = cg_config(teacher.endpoint, judge.endpoint)
        failed = cg(config, store=store.url, return_state=True)
        assert failed.is_failed()
        assert "judge exited with status 1" in str(failed.message) or "judge" in str(failed.message)
        flow_run_id = failed.state_details.flow_run_id
        assert task_runs(flow_run_id) == {
            "annotate": ["Completed"],
            "validate": ["Completed"],
            "judge": ["Failed"],
        }
        annotated = next(iter(store.list("cot/raw/annotate")))
        before = (store.get(annotated), teacher.requests)
        # Fix the cause and retry the same flow run, as the UI's Retry (or a worker) does.
        judge.script = sequence(ok(answer=teacher_or_judge))

        retried = retry(cg, flow_run_id)
        assert retried.is_completed(), retried
        assert teacher.requests == before[1]  # the teacher was not asked again
    assert store.get(annotated) == before[0]
    states = task_runs(flow_run_id)
    assert states["annotate"] == ["Completed", "Cached"]
    assert states["validate"] == ["Completed", "Cached"]
    assert states["judge"] == ["Failed", "Completed"]
    assert states["publish"] == ["Completed"]


def test_new_raw_files_make_a_new_annotation(prefect_server: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    seed(store, 4)
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as server:
        config = cg_config(server.endpoint, server.endpoint)
        first = cg(config, store=store.url)
        again = cg(config, store=store.url)  # same inputs: every step a cache hit, the same version
        assert again == first
        seed(store, 3, prefix="raw/passages/more", start=10)  # new files under the same input prefix
        third = cg(config, store=store.url)
    assert third["address"] == "datasets/ner-cot/v2"


def test_refresh_annotates_only_new_raw_files(prefect_server: None, tmp_path: Path) -> None:
    from flows.refresh import cg_refresh

    store = Store(tmp_path / "store")
    seed(store, 5, prefix="raw/passages/a")
    with FaultServer(sequence(ok(answer=teacher_or_judge))) as server:
        config = cg_config(server.endpoint, server.endpoint, publish={"min_score": 0})
        first = cg_refresh(config, store=store.url)
        assert (first["address"], first["new_files"]) == ("datasets/ner-cot/v1", 1)
        sent = server.requests
        nothing = cg_refresh(config, store=store.url)
        assert nothing == {"address": "datasets/ner-cot/v1", "new_files": 0}
        assert server.requests == sent  # nothing was annotated or judged
        seed(store, 3, prefix="raw/passages/b", start=20)
        second = cg_refresh(config, store=store.url)
    assert (second["address"], second["new_files"]) == ("datasets/ner-cot/v2", 1)
    assert server.requests == sent + 2 * 3  # teacher and judge, for the 3 new passages only
    v2 = store.load("datasets/ner-cot/v2").manifest
    assert (v2.stats["carried_over"], v2.stats["kept"], v2.stats["records"]) == (5, 3, 8)
    assert sorted(v2.stats["raw_files"]) == ["raw/passages/a/part-0.jsonl", "raw/passages/b/part-0.jsonl"]
    assert len(list(store.records(v2))) == 8


def test_a_stage_runs_alone_as_its_own_flow(prefect_server: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    state = sample(SampleConfig.preset("smoke"), store=store.url, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    published = store.load(result["address"])
    assert published.digest == result["digest"] and published.manifest.stage == "sample"
    assert {"sample-stats", "sample-output"} <= set(artifacts(state.state_details.flow_run_id))
