"""Self-documenting configs: every field's docstring is its JSON-schema description, every field has one, and
the help reaches ``rner config show --fields``, ``rner schemas export`` and the stage commands' ``--help``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from schemas import EXPORTED, STAGE_CONFIGS, Config, PipelineConfig, SFTConfig, config_hash
from schemas.jobs import DockerJob, KubernetesJob, LocalJob
from schemas.recipes import RECIPES
from tasks.config import field_docs

CONFIGS: dict[str, type[BaseModel]] = {
    **{m.__name__: m for m in EXPORTED.values() if issubclass(m, Config)},
    **{m.__name__: m for m in (*RECIPES.values(), PipelineConfig, LocalJob, DockerJob, KubernetesJob)},
}
"""Every config a person writes: stage configs, recipes, the pipeline's, and the job backends'."""


def undocumented(schema: dict[str, Any]) -> Iterator[str]:
    """``Model.field`` for each property, of the model and of every model it nests, without a description."""
    models = {"": schema, **{f"{name}": sub for name, sub in schema.get("$defs", {}).items()}}
    for model_name, model in models.items():
        for field, prop in model.get("properties", {}).items():
            if not str(prop.get("description", "")).strip():
                yield f"{model_name or schema.get('title')}.{field}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_field_has_a_description(name: str) -> None:
    missing = sorted(set(undocumented(CONFIGS[name].model_json_schema())))
    assert not missing, f"fields without a docstring under them: {', '.join(missing)}"


def test_the_check_catches_a_field_without_a_docstring() -> None:
    class Sloppy(Config):
        documented: int = 1
        """Has help."""
        bare: int = 2

    assert list(undocumented(Sloppy.model_json_schema())) == ["Sloppy.bare"]


def test_the_docstring_is_the_description() -> None:
    schema = SFTConfig.model_json_schema()
    assert schema["properties"]["with_cot"]["description"].startswith("False trains on the answer alone")
    # A nested config's field keeps its own help next to the reference to the nested model.
    assert schema["properties"]["parallel"]["description"] == "How many processes on how many nodes."


KNOWN_HASHES = {
    ("sft", "paper"): "a6bfa15a64a8c64cbd709c66cc605081c16672d466631f2ead8b84523d35ce93",
    ("publish", "smoke"): "30b737b05d3490e7ee43e0599ff4f95d51dfd46482604ecfa4722c537c39361e",
    ("mix", "paper"): "23c168c531b1cba892c8cb6f4a010ea108fd41e4bec37c6c4fab82f49b13f709",
}
"""Hashes of presets before their fields had descriptions. Help text is not part of what a stage produces, so
documenting a field must never move a finished output's address."""


@pytest.mark.parametrize(("stage", "preset"), sorted(KNOWN_HASHES))
def test_help_text_does_not_change_config_hashes(stage: str, preset: str) -> None:
    assert config_hash(STAGE_CONFIGS[stage].preset(preset)) == KNOWN_HASHES[stage, preset]


def rner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True, check=True)


def test_config_show_fields_prints_every_field_with_its_help() -> None:
    lines = rner("config", "show", "cg", "--fields").stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [name for name, _ in field_docs(STAGE_CONFIGS["cg"])]
    assert "annotate.sampling.temperature: Sampling temperature; 0 is greedy." in lines


def test_schemas_export_carries_the_descriptions(tmp_path: Path) -> None:
    rner("schemas", "export", str(tmp_path))
    schema = json.loads((tmp_path / "EvalConfig.schema.json").read_text())
    assert "per dataset" in schema["properties"]["max_examples"]["description"]


@pytest.mark.parametrize(
    ("command", "stage", "field"),
    [(("data", "sample"), "sample", "per_dataset_cap"), (("train", "grpo"), "grpo", "num_generations"),
     (("eval",), "evaluate", "max_examples"), (("cg", "run"), "cg", "annotate")],
)  # fmt: skip
def test_stage_help_lists_the_config_fields(command: tuple[str, ...], stage: str, field: str) -> None:
    # A wide terminal so that the names are not wrapped apart.
    help_text = subprocess.run(
        [sys.executable, "-m", "tasks.cli", *command, "--help"],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "400"},
    ).stdout  # fmt: skip
    assert f"rner config show {stage} --fields" in help_text
    assert field in help_text


def test_help_lists_pipeline_first() -> None:
    commands = re.findall(r"^│ ([a-z0-9]+) ", rner("--help").stdout, re.MULTILINE)
    assert commands[0] == "pipeline", commands
