"""Base classes for every contract, and the canonical hashing that addresses rely on.

Two flavours, both frozen and closed to unknown fields:

- ``Record``: a row of a dataset shard or a manifest. Strict: ``"3"`` is not an offset, ``1`` is not a
  label. Sequence fields accept lists (JSON arrays, Python lists) and store tuples.
- ``Config``: a stage configuration. Written by people in YAML, so numbers given as strings (PyYAML
  reads ``2e-5`` as a string) are coerced; everything else is as strict as a record. A config names
  the fields that do not change what the stage produces (concurrency, timeouts, endpoints): they are
  left out of its hash, so tuning them never invalidates finished work; so are fields added later while
  they hold their default (``ADDED``). Each field's docstring is its JSON-schema description.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

T = TypeVar("T")

Seq = Annotated[tuple[T, ...], Field(strict=False)]
"""An immutable sequence field that accepts JSON arrays and Python lists."""

MAX_NAME_CHARS = 512
"""The longest name (``Name``): an id, an entity type, a model name. Wherever names come in (imported data, the
labels given to ``rner extract``) this one limit applies."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
"""A non-empty identifier-like string (ids, labels, model names)."""


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)


class Config(BaseModel):
    # Each field's docstring becomes its JSON-schema description: one help text for `rner config show`,
    # `rner schemas export` and the Prefect run form.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True)

    schema_version: Literal[1] = 1
    """Version of the config format; a config written for another version is refused, not misread."""

    VOLATILE: ClassVar[frozenset[str]] = frozenset()
    """Fields that do not affect the output: excluded from ``config_hash``."""

    ADDED: ClassVar[frozenset[str]] = frozenset()
    """Fields added after outputs were made with this config: excluded from ``config_hash`` while they hold their
    default (which does what the config did before they existed), so adding one moves no finished output."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named parameter sets, e.g. ``paper`` (the paper's values) and ``smoke`` (a minute on a CPU)."""

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """The named preset with ``overrides`` merged in (nested dicts merge key by key)."""
        return cls.model_validate({"preset": name, **overrides})

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """``{"preset": "paper", ...}`` is that preset with the other keys merged in: one shorthand for
        YAML files, Prefect parameters and nested configs alike."""
        if not isinstance(data, dict) or "preset" not in data:
            return data
        rest = {k: v for k, v in data.items() if k != "preset"}
        name = data["preset"]
        if name is None:
            return rest
        if not isinstance(name, str) or name not in cls.PRESETS:
            known = ", ".join(sorted(cls.PRESETS)) or "none"
            raise ValueError(f"{cls.__name__} has no preset {name!r} (known: {known})")
        return deep_merge(cls.PRESETS[name], rest)

    def hash_payload(self) -> dict[str, Any]:
        """The part of the config that determines the output, as plain JSON data."""
        payload: dict[str, Any] = {}
        for field, info in type(self).model_fields.items():
            if field in self.VOLATILE or (field in self.ADDED and getattr(self, field) == info.default):
                continue
            payload[field] = _jsonable(getattr(self, field))
        return payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.hash_payload()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, SecretStr):
        return None
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, nested dicts key by key. A nested dict that names another ``kind``
    (a different member of a discriminated union) replaces the base's instead of merging into it."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def canonical_json(data: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def config_hash(config: Config) -> str:
    return sha256_hex(canonical_json(config.hash_payload()))
