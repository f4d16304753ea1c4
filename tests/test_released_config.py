"""The ``paper`` presets against the authors' released configuration, value by value.

``tests/fixtures/released_config.yaml`` is the table: every preset value the released code sets, with the file, the
line and the line's text it comes from. Here each value is checked twice, against the table and against the value
read back from the quoted line itself, and the quoted lines against the released repository where a mirror of it is
at hand. README.md's table is rendered from the fixture (``python tests/test_released_config.py`` prints it). Also
here: ``released_split`` (the released 7 + 1 GPUs), the presets that embed the paper presets, and the command line
(``rner config show`` carries the table, ``rner config diff`` shows departures from a preset).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import GRPOConfig, PipelineConfig, SFTConfig, TrainConfig
from schemas.recipes import RECIPES
from tasks.config import dump_config, load_config

FIXTURE = Path(__file__).parent / "fixtures" / "released_config.yaml"
TABLE: dict[str, Any] = yaml.safe_load(FIXTURE.read_text())
CONFIGS: dict[str, type[TrainConfig]] = {"sft": SFTConfig, "grpo": GRPOConfig}
RELEASED_REPO = Path(os.environ.get("RNER_RELEASED_REPO", "/work/.mirror/HuiResearch+ReasoningIE/repo"))
"""A git directory of HuiResearch/ReasoningIE (the same mirror ``tests/released_rner.py`` reads)."""
README = Path(__file__).parents[1] / "README.md"


def row_id(row: dict[str, Any]) -> str:
    preset = "+".join([row.get("preset", "paper"), *(f"{k}={v}" for k, v in row.get("overrides", {}).items())])
    return f"{row['config']}-{preset}-{row.get('field') or row.get('arg')}"


def preset_value(row: dict[str, Any]) -> Any:
    """The value of the row's field in its preset (with the row's overrides), dotted into nested configs."""
    value: Any = CONFIGS[row["config"]].preset(row.get("preset", "paper"), **row.get("overrides", {}))
    for part in row["field"].split("."):
        value = getattr(value, part)
    return value


def released_value(row: dict[str, Any]) -> Any:
    """The value the row's quoted line sets, spelled as we spell it: a YAML line's value (of its one key, or its one
    list item), or the first group of the row's ``pattern`` read as YAML; then ``means`` maps the released spelling."""
    if "pattern" in row:
        match = re.search(row["pattern"], row["text"])
        assert match, f"{row['pattern']!r} not in {row['text']!r}"
        raw = yaml.safe_load(match.group(1))
    else:
        loaded = yaml.safe_load(row["text"])
        raw = loaded[0] if isinstance(loaded, list) else next(iter(loaded.values()))
    means = row.get("means", {})
    return means.get(raw, raw) if isinstance(raw, Hashable) else raw


# --- the table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", TABLE["values"], ids=row_id)
def test_presets_carry_the_released_values(row: dict[str, Any]) -> None:
    assert preset_value(row) == row["value"]


@pytest.mark.parametrize("row", TABLE["values"], ids=row_id)
def test_the_released_lines_give_the_preset_values(row: dict[str, Any]) -> None:
    assert preset_value(row) == released_value(row), f"{row['file']}:{row['line']}: {row['text']!r}"


@pytest.mark.parametrize("row", TABLE["defaults"] + TABLE["differences"], ids=row_id)
def test_defaults_and_deliberate_differences_are_what_the_presets_hold(row: dict[str, Any]) -> None:
    """Values the released files leave to library defaults, and where we differ on purpose: the table says which
    value the presets hold (rows without a field describe behaviour, checked in tests/test_trainer_config.py)."""
    if row.get("field"):
        assert preset_value(row) == row["value"]


def test_the_table_covers_both_sizes_and_every_released_training_value() -> None:
    rows = TABLE["values"]
    for config in CONFIGS:
        paper = {(r["field"], r["line"]) for r in rows if r["config"] == config and r["preset"] == "paper"}
        small = {(r["field"], r["line"]) for r in rows if r["config"] == config and r["preset"] == "paper-1.7b"}
        assert paper == small and len(paper) >= 20, config
    # the global batch is on no released line: per-device batch x accumulation x processes, each of them cited
    for config in CONFIGS:
        for preset in ("paper", "paper-1.7b"):
            for overrides in [{}, *([{"released_split": True}] if config == "grpo" else [])]:
                cited = {
                    r["field"]: r["value"]
                    for r in rows
                    if (r["config"], r["preset"]) == (config, preset) and r.get("overrides", overrides) == overrides
                }
                c = CONFIGS[config].preset(preset, **overrides)
                # GRPO without released_split: the paper's text's 6 training GPUs (TABLE["differences"])
                processes = cited.get("parallel.processes_per_node", c.parallel.processes_per_node)
                per_step = cited["per_device_batch_size"] * cited["gradient_accumulation_steps"]
                assert c.global_batch_size == per_step * processes, (config, preset, overrides)


def test_the_quoted_lines_are_the_released_files() -> None:
    if not (RELEASED_REPO / "HEAD").exists() and not (RELEASED_REPO / ".git").exists():
        pytest.skip(f"no copy of the released repository at {RELEASED_REPO} (set RNER_RELEASED_REPO)")
    files: dict[str, list[str]] = {}
    for row in TABLE["values"] + TABLE["trainer"] + TABLE["differences"]:
        if row["file"] not in files:
            shown = subprocess.run(
                ["git", "-C", str(RELEASED_REPO), "show", f"{TABLE['commit']}:{row['file']}"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            files[row["file"]] = shown.stdout.split("\n")
        quoted = row["text"].split("\n")
        start = row["line"] - 1
        assert files[row["file"]][start : start + len(quoted)] == quoted, f"{row['file']}:{row['line']}"


# --- the README's table --------------------------------------------------------------------------------

BEGIN = (
    "<!-- released-config: rendered from tests/fixtures/released_config.yaml (python tests/test_released_config.py) -->"
)
END = "<!-- /released-config -->"


def _cell(value: Any) -> str:
    shown = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    shown = shown.removesuffix("\n...").replace("|", "\\|")
    return f"`{shown}`"


def _where(*rows: dict[str, Any]) -> str:
    places = dict.fromkeys(f"{r['file']}:{r['line']}" for r in rows)
    return " / ".join(places)


def render() -> str:
    """README.md's table, from the fixture."""
    lines = [BEGIN, "", "| stage | our field | `paper` | `paper-1.7b` | released line | released file:line |"]
    lines.append("|---|---|---|---|---|---|")
    values = TABLE["values"]
    for row in (r for r in values if r["preset"] == "paper"):
        twin = next(
            r
            for r in values
            if r["preset"] == "paper-1.7b"
            and (r["config"], r["field"], r["line"], r.get("overrides"))
            == (row["config"], row["field"], row["line"], row.get("overrides"))
        )
        field = f"`{row['field']}`" + "".join(f" ({k}: {_cell(v)})" for k, v in row.get("overrides", {}).items())
        text = " / ".join(_cell(t) for t in dict.fromkeys(" ".join(r["text"].split()) for r in (row, twin)))
        lines.append(
            f"| {row['config']} | {field} | {_cell(row['value'])} | {_cell(twin['value'])} | {text} "
            f"| {_where(row, twin)} |"
        )
    lines += ["", "| stage | trainer argument | value | released line | released file:line |", "|---|---|---|---|---|"]
    for row in TABLE["trainer"]:
        if row["preset"] == "paper":
            text = " ".join(row["text"].split())
            lines.append(
                f"| {row['config']} | `{row['arg']}` | {_cell(row['value'])} | {_cell(text)} | {_where(row)} |"
            )
    lines += ["", "Left to the libraries' defaults by the released files:", ""]
    lines += [f"- {row['config']} `{row['field']}`: {_cell(row['value'])} — {row['why']}." for row in TABLE["defaults"]]
    lines += ["", "| stage | ours | released line | released file:line | why |", "|---|---|---|---|---|"]
    for row in TABLE["differences"]:
        ours = f"`{row['field']}`: {_cell(row['value'])}" if row.get("field") else _cell(row["value"])
        text = " ".join(row["text"].split())
        why = row["why"].replace("|", "\\|")
        lines.append(f"| {row['config']} | {ours} | {_cell(text)} | {_where(row)} | {why} |")
    return "\n".join([*lines, "", END])


def test_readme_shows_the_table() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lacks the released-config table"
    shown = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert shown == render(), "README.md's table is not the fixture's: python tests/test_released_config.py"


# --- the GPU split --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "paper-1.7b"])
def test_released_split_is_seven_training_gpus_and_one_rollout_gpu(preset: str) -> None:
    paper = GRPOConfig.preset(preset)
    released = GRPOConfig.preset(preset, released_split=True)
    assert (paper.parallel.processes_per_node, paper.rollout_gpus, paper.global_batch_size) == (6, 2, 384)
    assert (released.parallel.processes_per_node, released.rollout_gpus, released.global_batch_size) == (7, 1, 448)
    assert released.gradient_accumulation_steps == paper.gradient_accumulation_steps  # 16 at 8B, 4 at 1.7B
    assert released.per_device_batch_size == paper.per_device_batch_size
    assert GRPOConfig.model_validate(yaml.safe_load(dump_config(released))) == released  # idempotent
    assert GRPOConfig.preset(preset, released_split="true") == released  # as YAML or a form may spell it
    with pytest.raises(ValueError, match="released_split: the released GPU split is for rollout: server"):
        GRPOConfig.preset("smoke", released_split=True)


def test_num_iterations_multiplies_the_optimizer_steps() -> None:
    """Each generation batch of 384 completions is trained on four times: 196 x 4 steps (TRL drops a last partial
    batch, so its own count is 195 x 4 = 780), 168 x 4 with the released split's 448."""
    assert GRPOConfig.preset("paper").total_steps(4703) == 784
    assert GRPOConfig.preset("paper", released_split=True).total_steps(4703) == 672
    assert GRPOConfig.preset("paper", max_steps=10).total_steps(4703) == 10


def test_over_long_sft_examples_are_options() -> None:
    assert SFTConfig(dataset="d").too_long == "drop"  # ours, outside the paper presets
    with pytest.raises(ValueError, match="padding_free needs flash_attention"):
        SFTConfig(dataset="d", padding_free=True)
    with pytest.raises(ValueError, match="packing: TRL packs without padding"):
        SFTConfig(dataset="d", packing=True, too_long="truncate_left")


def test_our_improvements_stay_the_defaults_outside_the_paper_presets() -> None:
    for name in ("smoke",):
        grpo, sft = GRPOConfig.preset(name), SFTConfig.preset(name)
        assert grpo.empty_match_f1 == 1.0 and sft.too_long == "drop"
    assert GRPOConfig(dataset="d").empty_match_f1 == 1.0


# --- presets that embed the paper presets ---------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "paper-1.7b"])
def test_the_pipeline_trains_with_the_stage_presets(preset: str) -> None:
    pipeline = PipelineConfig.preset(preset)
    assert pipeline.sft == SFTConfig.preset(preset) and pipeline.grpo == GRPOConfig.preset(preset)


def test_the_recipes_train_with_the_paper_presets() -> None:
    for name, recipe in RECIPES.items():
        config = recipe.preset("paper")
        if hasattr(config, "grpo"):
            assert config.grpo == GRPOConfig.preset("paper"), name
        assert config.sft.model_copy(update={"with_cot": True}) == SFTConfig.preset("paper"), name


# --- the command line -----------------------------------------------------------------------------------


def _rner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True)


def test_config_show_carries_the_released_values() -> None:
    shown = _rner("config", "show", "grpo", "--preset", "paper")
    assert shown.returncode == 0, shown.stderr
    config = yaml.safe_load(shown.stdout)
    assert (config["loss_type"], config["epsilon_high"], config["num_iterations"], config["temperature"]) == (
        "dr_grpo", 0.28, 4, 0.9,
    )  # fmt: skip
    for row in TABLE["values"]:
        if row["config"] == "grpo" and row["preset"] == "paper" and not row.get("overrides"):
            value: Any = config
            for part in row["field"].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if row["field"] in config or "." in row["field"]:
                assert value == row["value"], row["field"]


def test_config_diff_shows_each_departure_from_a_preset(tmp_path: Path) -> None:
    mine = tmp_path / "grpo.yaml"
    mine.write_text("preset: paper\ntemperature: 1.0\nloss_type: dapo\nparallel:\n  num_nodes: 2\n")
    result = _rner("config", "diff", "--preset", "paper", "--against", str(mine))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["field", "preset", "paper", str(mine)]
    assert [row.split() for row in rows] == [
        ["parallel.num_nodes", "1", "2"], ["temperature", "0.9", "1.0"], ["loss_type", "dr_grpo", "dapo"],
    ]  # fmt: skip
    assert "grpo: 3 field(s)" in result.stderr
    same = tmp_path / "same.yaml"
    same.write_text(dump_config(load_config(GRPOConfig, mine)))
    result = _rner("config", "diff", "--preset", "smoke", "--against", str(same), "--stage", "grpo")
    rows = [row.split() for row in result.stdout.splitlines()[1:]]
    assert result.returncode == 0 and ["num_iterations", "1", "4"] in rows
    assert not any(row[0] in ("loss_type", "temperature") for row in rows)  # dapo and 1.0 in both


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("dataset: [unclosed\n", [], r"bad\.yaml: cannot read it as YAML: .*"),
        ("- a\n", [], r"bad\.yaml: expected a mapping of a stage config fields, got list"),
        ("dataset: d\nmodel: m\n", [], r"bad\.yaml: cannot tell which stage's config it is \(it fits sft, grpo\)"),
        ("preset: paper\ntemperature: 0\n", ["--stage", "grpo"], r"bad\.yaml: invalid GRPOConfig: temperature: Input"),
        ("temperature: 1\n", ["--stage", "grpo", "--preset", "huge"], r"grpo preset 'huge': invalid GRPOConfig"),
    ],
)
def test_config_diff_refuses_a_bad_file_in_one_line(tmp_path: Path, text: str, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    preset = [] if "--preset" in args else ["--preset", "paper"]
    result = _rner("config", "diff", *preset, "--against", str(bad), *args)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert re.search(message, line), line


if __name__ == "__main__":
    print(render())
