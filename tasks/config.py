"""Stage configs from YAML files, with presets and errors that name the file and the field.

A config file may start from a named preset and override single fields::

    preset: paper          # optional: SFTConfig.PRESETS["paper"]
    dataset: datasets/ner-cot/abc123
    learning_rate: 1e-5

Usage::

    cfg = load_config(SFTConfig, "sft.yaml")
    rner config show sft --preset paper     # a complete file to start from
    rner config diff --preset paper --against sft.yaml      # where a config departs from a preset
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
    data = _read_mapping(path, cls.__name__)
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


ABSENT = object()
"""A field one of two configs compared by ``diff_configs`` does not have (another kind of server, say)."""


def diff_configs(base: Config, other: Config) -> list[tuple[str, Any, Any]]:
    """Every field (dotted, nested configs flattened; lists compared whole) where ``other`` differs from ``base``:
    (name, base's value, other's value), in the order of ``base``'s fields; ``ABSENT`` where one has no such field."""
    mine, theirs = _flatten(base.model_dump(mode="json")), _flatten(other.model_dump(mode="json"))
    names = [*mine, *(name for name in theirs if name not in mine)]
    return [
        (name, mine.get(name, ABSENT), theirs.get(name, ABSENT))
        for name in names
        if mine.get(name, ABSENT) != theirs.get(name, ABSENT)
    ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stage_of(path: str | Path, stages: dict[str, type[Config]]) -> str:
    """The one stage in ``stages`` whose config has every top-level field of the YAML file at ``path``."""
    data = _read_mapping(path, "a stage config")
    keys = set(data) - {"preset"}
    fits = [name for name, cls in stages.items() if keys <= set(cls.model_fields)]
    if len(fits) != 1:
        which = f"it fits {', '.join(fits)}" if fits else "no stage config has all of its fields"
        raise ConfigError(f"{path}: cannot tell which stage's config it is ({which}): name it with --stage")
    return fits[0]


def _read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} fields, got {type(data).__name__}")
    return data
