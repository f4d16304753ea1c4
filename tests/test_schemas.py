"""The contracts: strict records, manifests, stage configs and their presets, JSON Schema export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from schemas import (
    EXPORTED,
    STAGE_CONFIGS,
    CoTRecord,
    Entity,
    EvalConfig,
    FileEntry,
    GRPOConfig,
    JudgeConfig,
    JudgeVerdict,
    Manifest,
    Mention,
    NERExample,
    Prediction,
    PublishConfig,
    SFTConfig,
    config_hash,
)

TEXT = "Ada Lovelace met Charles Babbage in London."
ADA = {"text": "Ada Lovelace", "label": "person", "start": 0, "end": 12}
GEN = {"model": "teacher", "sampling": {"temperature": 0.6}, "request_key": "k1"}


def test_example_round_trips_as_one_jsonl_line() -> None:
    ex = NERExample(id="e1", text=TEXT, labels=["person", "location"], entities=[ADA], source="demo")
    line = ex.model_dump_json()
    assert "\n" not in line
    assert NERExample.model_validate_json(line) == ex
    assert json.loads(line)["schema_version"] == 1


@pytest.mark.parametrize(
    ("entity", "message"),
    [
        ({**ADA, "start": 1, "end": 13}, r"text\[1:13\] is 'da Lovelace '"),
        ({**ADA, "end": 11}, "has length 11"),
        ({**ADA, "label": "location"}, "label 'location' is not in labels"),
        ({**ADA, "start": "0"}, "entities.0.start"),
        ({**ADA, "extra": 1}, "entities.0.extra"),
        ({**ADA, "text": ""}, "entities.0.text"),
    ],
)
def test_bad_entities_name_the_field(entity: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NERExample.model_validate({"id": "e1", "text": TEXT, "labels": ["person"], "entities": [entity]})


def test_records_are_frozen_and_closed() -> None:
    ex = NERExample(id="e1", text=TEXT, labels=["person"], entities=[ADA])
    with pytest.raises(ValidationError, match="frozen"):
        ex.id = "e2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        NERExample.model_validate({"id": "e1", "text": TEXT, "labels": [], "surprise": True})
    with pytest.raises(ValidationError, match="labels repeat"):
        NERExample(id="e1", text=TEXT, labels=["person", "person"])


def test_cot_record_keeps_out_of_schema_labels_but_not_ungrounded_spans() -> None:
    record = CoTRecord(
        id="c1",
        text=TEXT,
        labels=["person"],
        reasoning="Ada Lovelace is a person; London is a city.",
        entities=[ADA, {"text": "London", "label": "city", "start": 36, "end": 42}],
        ungrounded=[{"text": "Paris", "label": "city"}],
        completion="<think>...</think>{}",
        teacher=GEN,
    )
    assert record.entities[1].label == "city"
    with pytest.raises(ValidationError, match="text"):
        CoTRecord.model_validate({**record.model_dump(), "entities": [{**ADA, "start": 2, "end": 14}]})


def test_judge_verdict_needs_a_score_or_a_reason() -> None:
    JudgeVerdict(id="c1", score=9, completion="Score: 9", judge=GEN)
    JudgeVerdict(id="c1", score=None, parse_error="no score", completion="?", judge=GEN)
    with pytest.raises(ValidationError, match="exactly one of score and parse_error"):
        JudgeVerdict(id="c1", score=None, completion="?", judge=GEN)
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        JudgeVerdict(id="c1", score=11, completion="11", judge=GEN)


def test_prediction_entities_mix_spans_and_bare_mentions() -> None:
    p = Prediction.model_validate_json(
        '{"id": "e1", "entities": [{"text": "Ada Lovelace", "label": "person"}, '
        '{"text": "London", "label": "location", "start": 36, "end": 42}]}'
    )
    assert type(p.entities[0]) is Mention
    assert type(p.entities[1]) is Entity
    assert Prediction(id="e1", completion="...").entities is None
    with pytest.raises(ValidationError, match="needs 'entities' or 'completion'"):
        Prediction(id="e1")


def _manifest(**overrides: object) -> dict:
    entry = {"path": "data/00000.abc.jsonl", "sha256": "0" * 64, "bytes": 3, "rows": 1, "record_type": "NERExample"}
    return {
        "kind": "ner",
        "address": "datasets/demo/x",
        "stage": "import",
        "code_version": "0.1.0",
        "config_hash": "1" * 64,
        "files": [entry],
        "created_at": "2026-11-25T00:00:00Z",
        **overrides,
    }


def test_manifest_rejects_paths_outside_the_output() -> None:
    assert Manifest.model_validate_json(json.dumps(_manifest())).rows == 1
    for bad in ("../escape", "/abs", "a//b", "a/./b"):
        with pytest.raises(ValidationError, match="path"):
            FileEntry(path=bad, sha256="0" * 64, bytes=0)
    with pytest.raises(ValidationError, match="timezone"):
        Manifest.model_validate_json(json.dumps(_manifest(created_at="2026-11-25T00:00:00")))
    with pytest.raises(ValidationError, match="kind"):
        Manifest.model_validate_json(json.dumps(_manifest(kind="weights")))


def test_every_preset_of_every_stage_validates() -> None:
    for name, cls in STAGE_CONFIGS.items():
        sizes = {"paper-1.7b"} if name in ("sft", "grpo") else set()  # the released 1.7B training configs
        assert set(cls.PRESETS) == {"paper", "smoke", *sizes}, name
        for preset in cls.PRESETS:
            config = cls.preset(preset)
            assert len(config_hash(config)) == 64


def test_paper_presets_carry_the_papers_values() -> None:
    ct = SFTConfig.preset("paper")
    assert (ct.epochs, ct.learning_rate, ct.lr_scheduler, ct.global_batch_size, ct.max_seq_len) == (
        5,
        2e-5,
        "cosine",
        256,
        8192,
    )
    assert ct.bf16 and ct.gradient_checkpointing and ct.liger_kernel and ct.flash_attention
    assert ct.deepspeed_zero == 3 and ct.parallel.processes_per_node == 8
    assert ct.model == "Qwen/Qwen3-8B-Base"
    re = GRPOConfig.preset("paper")
    assert (re.num_generations, re.beta, re.epsilon, re.epochs, re.global_batch_size) == (16, 0.04, 0.2, 1, 384)
    assert re.max_completion_length == 4096
    assert (re.f1_reward_weight, re.schema_reward_weight) == (10, 1)
    assert (re.parallel.processes_per_node, re.rollout_gpus, re.rollout) == (6, 2, "server")
    assert PublishConfig.preset("paper").min_score == 9
    assert JudgeConfig.preset("paper").judge.model == "Qwen/Qwen3-32B"


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"learning_rate\n.*greater than 0"):
        SFTConfig.preset("smoke", learning_rate=-1)
    with pytest.raises(ValidationError, match="not a multiple"):
        SFTConfig.preset("smoke", global_batch_size=5)
    with pytest.raises(ValidationError, match=r"epsilonn\n.*Extra inputs"):
        GRPOConfig.preset("smoke", epsilonn=0.1)
    with pytest.raises(ValidationError, match="multiple of num_generations"):
        GRPOConfig.preset("smoke", num_generations=3)
    with pytest.raises(ValidationError, match=r"model\.vllm\.base_url|model\.endpoint\.base_url"):
        EvalConfig.preset("smoke", model={"kind": "endpoint", "model": "m"})
    with pytest.raises(ValueError, match="no preset 'fast'"):
        SFTConfig.preset("fast")


def test_yaml_written_numbers_are_read_as_numbers() -> None:
    # PyYAML reads 2e-5 as a string; configs written by people must still work.
    data = yaml.safe_load("dataset: d\nlearning_rate: 2e-5\nepochs: '3'\n")
    assert isinstance(data["learning_rate"], str)
    config = SFTConfig.model_validate(data)
    assert (config.learning_rate, config.epochs) == (2e-5, 3.0)


def test_endpoint_secrets_stay_out_of_hashes_and_dumps() -> None:
    a = EvalConfig.preset(
        "smoke", model={"kind": "endpoint", "base_url": "http://a:8000/v1", "model": "m", "api_key": "s3cr3t"}
    )
    b = EvalConfig.preset("smoke", model={"kind": "endpoint", "base_url": "http://b:9000/v1", "model": "m"})
    assert config_hash(a) == config_hash(b)
    assert "s3cr3t" not in a.model_dump_json()


def test_schemas_export_writes_every_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "schemas", "export", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{name}.schema.json" for name in EXPORTED)
    schema = json.loads((tmp_path / "NERExample.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert {"id", "text"} <= set(schema["required"])
