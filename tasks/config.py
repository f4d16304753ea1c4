"""Stage configs from YAML files, with presets and errors that name the file and the field.

A config file may start from a named preset and override single fields::

    preset: paper          # optional: SFTConfig.PRESETS["paper"]
    dataset: datasets/ner-cot/abc123
    learning_rate: 1e-5

Usage::

    cfg = load_config(SFTConfig, "sft.yaml")
    rner config show sft --preset paper     # a complete file to start from
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from schemas import Config
from tasks.errors import RnerError
from tasks.jsonl import describe

C = TypeVar("C", bound=Config)


class ConfigError(RnerError, ValueError):
    """A config file that cannot be read or does not validate; the message names file and field."""


def load_config(cls: type[C], path: str | Path, *, preset: str | None = None) -> C:
    """The config in ``path``; ``preset`` applies when the file names none."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    if preset:
        data = {"preset": preset, **data}
    return build_config(cls, data, source=str(path))


def build_config(cls: type[C], data: dict[str, Any], source: str = "<config>") -> C:
    """``data`` validated as ``cls`` (starting from ``data["preset"]`` when it names one)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {describe(e)}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
