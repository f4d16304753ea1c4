"""Stage configs from YAML: presets, overrides, and errors that name the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from schemas import STAGE_CONFIGS, GRPOConfig, PipelineConfig, SampleConfig, SFTConfig, TrainConfig
from schemas.configs import PAPER_COT_EXAMPLES
from tasks.config import ConfigError, dump_config, load_config


def test_preset_plus_overrides_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("preset: paper\ndataset: datasets/ner-cot/v2\nlearning_rate: 1e-5\nparallel:\n  num_nodes: 2\n")
    config = load_config(SFTConfig, path)
    assert config.learning_rate == 1e-5 and config.parallel.num_nodes == 2
    assert config.parallel.processes_per_node == 8  # nested preset values survive a partial override
    assert config.epochs == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: d\nlearning_rate: -1\n", r"sft\.yaml: invalid SFTConfig: learning_rate: Input should be greater"),
        ("dataset: d\nparallel:\n  num_nodse: 2\n", r"parallel\.num_nodse: Extra inputs are not permitted"),
        ("preset: huge\n", r"sft\.yaml: invalid SFTConfig: .*no preset 'huge' \(known: paper, paper-1.7b, smoke\)"),
        ("- a\n- b\n", r"expected a mapping of SFTConfig fields, got list"),
        ("dataset: [unclosed\n", r"cannot read it as YAML"),
    ],
)
def test_bad_config_files_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, path)


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_dumped_presets_load_back_identically(tmp_path: Path, stage: str) -> None:
    cls = STAGE_CONFIGS[stage]
    for preset in cls.PRESETS:
        config = cls.preset(preset)
        path = tmp_path / f"{stage}-{preset}.yaml"
        path.write_text(dump_config(config))
        assert load_config(cls, path) == config


def test_config_show_cli(tmp_path: Path) -> None:
    show = [sys.executable, "-m", "tasks.cli", "config", "show"]
    result = subprocess.run([*show, "grpo", "--preset", "paper"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["num_generations"] == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("epsilon: 0\n")
    result = subprocess.run([*show, "grpo", "--preset", "smoke", "--file", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "bad.yaml: invalid GRPOConfig: epsilon: Input should be greater than 0" in result.stderr


def test_overriding_a_server_with_another_kind_replaces_it() -> None:
    from schemas import JudgeConfig

    endpoint = {"kind": "endpoint", "base_url": "http://h:8000/v1", "model": "m"}
    config = JudgeConfig.preset("paper", judge=endpoint)
    assert config.judge.kind == "endpoint" and config.judge.model == "m"
    tuned = JudgeConfig.preset("paper", judge={"max_model_len": 8192})  # same kind: merged
    assert (tuned.judge.model, tuned.judge.max_model_len) == ("Qwen/Qwen3-32B", 8192)


def test_preset_shorthand_works_nested_and_in_plain_dicts() -> None:
    from schemas import CGConfig

    config = CGConfig.model_validate({"input": "raw/x", "annotate": {"preset": "paper", "shard_size": 32}})
    assert config.annotate.sampling.temperature == 0.6 and config.annotate.shard_size == 32
    assert config.judge.sampling.temperature == 0.0  # no preset: the defaults
    assert CGConfig.model_validate({"preset": None, "input": "raw/x"}) == CGConfig(input="raw/x")


PAPER_EXAMPLES: dict[type[TrainConfig], int] = {
    SFTConfig: PAPER_COT_EXAMPLES,  # the paper's 45,787 NER-CoT examples (no preset field holds it)
    GRPOConfig: SampleConfig.preset("paper").total,  # the RE sample's size, 4,703
}


def paper_training_configs() -> list[TrainConfig]:
    """Every paper preset that trains: the stages' own and the pipeline's."""
    stages = [cls.preset("paper") for cls in STAGE_CONFIGS.values() if issubclass(cls, TrainConfig)]
    pipeline = PipelineConfig.preset("paper")
    return [*stages, pipeline.sft, pipeline.grpo]


@pytest.mark.parametrize("config", paper_training_configs(), ids=lambda c: type(c).__name__)
def test_paper_presets_checkpoint_several_times_per_run(config: TrainConfig) -> None:
    """A paper run takes hours on 8 GPUs: it must store checkpoints along the way, not once at the end (or never:
    GRPO's 784 steps under save_steps 500)."""
    steps = config.total_steps(PAPER_EXAMPLES[type(config)])
    # 45,787 x 5 / 256; 4,703 x 16 / 384 = 196 generation batches, each trained on num_iterations (4) times
    assert steps == {SFTConfig: 895, GRPOConfig: 784}[type(config)]
    assert config.save_steps is not None and steps // config.save_steps >= 3


def test_total_steps_count_optimizer_steps() -> None:
    sft = SFTConfig(dataset="d", global_batch_size=8, epochs=2)
    assert sft.total_steps(20) == 2 * 3 and sft.model_copy(update={"max_steps": 5}).total_steps(20) == 5
    grpo = GRPOConfig(dataset="d", num_generations=4, global_batch_size=8, epochs=1.5)
    assert grpo.total_steps(10) == 8  # 40 completions, 5 steps an epoch, one and a half epochs
