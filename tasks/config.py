"""Stage configs from YAML files, with presets and errors that name the file and the field.

A config file may start from a named preset and override single fields::

    preset: paper          # optional: SFTConfig.PRESETS["paper"]
    dataset: datasets/ner-cot/abc123
    learning_rate: 1e-5

Usage::

    cfg = load_config(SFTConfig, "sft.yaml")
    rner config show sft --preset paper     # a complete file to start from
    rner config show sft --fields           # what each field means
    rner config diff --preset paper --against sft.yaml      # where a config departs from a preset
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas import Config
from tasks.errors import RnerError
from tasks.jsonl import describe

C = TypeVar("C", bound=Config)


MAX_DEPTH = 64
"""How deep a config may nest (mappings and lists; as deep JSON in ``tasks.parse``): PyYAML's composer and
pydantic recurse once per level, so deeper input is refused before either sees it."""
MAX_VALUES = 100_000
"""How many values a config may hold, YAML aliases counted each time they are used: a few lines of aliases of
aliases would otherwise make validation walk billions."""


class ConfigError(RnerError, ValueError):
    """A config file that cannot be read or does not validate; the message names file and field."""


def load_config(cls: type[C], path: str | Path, *, preset: str | None = None) -> C:
    """The config in ``path``; ``preset`` applies when the file names none."""
    data = read_mapping(path, cls.__name__)
    if preset:
        data = {"preset": preset, **data}
    return build_config(cls, data, source=str(path))


def build_config(cls: type[C], data: dict[str, Any], source: str = "<config>") -> C:
    """``data`` validated as ``cls`` (starting from ``data["preset"]`` when it names one)."""
    _check_shape(data, source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {describe(e)}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def field_docs(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field name, its docstring) for every field, a nested config's fields after its own line: the help
    text ``rner config show STAGE --fields``, ``rner schemas export`` and the Prefect run form all show."""
    docs: list[tuple[str, str]] = []
    for name, field in cls.model_fields.items():
        docs.append((f"{prefix}{name}", field.description or ""))
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            docs += field_docs(field.annotation, f"{prefix}{name}.")
    return docs


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
    data = read_mapping(path, "a stage config")
    keys = set(data) - {"preset"}
    fits = [name for name, cls in stages.items() if keys <= set(cls.model_fields)]
    if len(fits) != 1:
        which = f"it fits {', '.join(fits)}" if fits else "no stage config has all of its fields"
        raise ConfigError(f"{path}: cannot tell which stage's config it is ({which}): name it with --stage")
    return fits[0]


def _check_shape(data: Any, source: str) -> None:
    """Refuse data no config has, before validation walks it: nested deeper than ``MAX_DEPTH``, more than
    ``MAX_VALUES`` values (YAML aliases counted each time they are used), or text that is not Unicode (a lone
    surrogate, which no file or manifest can hold). Iterative: no recursion depth is up to the input."""
    todo: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    seen = 0
    while todo:
        value, where = todo.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{source}: more than {MAX_VALUES} values (YAML aliases count each time they are used)")
        if len(where) > MAX_DEPTH:
            raise ConfigError(f"{source}: {'.'.join(where)}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str) and not _is_unicode(value):
            field = ".".join(where) or "(top level)"
            raise ConfigError(f"{source}: {field}: not valid text (a lone surrogate: {ascii(value)[:80]})")
        if isinstance(value, dict):
            for key, item in value.items():
                todo += [(key, (*where, str(key))), (item, (*where, str(key)))]
        elif isinstance(value, list | tuple):
            todo += [(item, (*where, str(i))) for i, item in enumerate(value)]


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document nested deeper than ``MAX_DEPTH`` before its composer (which
    recurses once per level) runs out of stack."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"{line}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)  # type: ignore[no-untyped-call]
        except ValueError:  # longer than Python converts (4,300 digits)
            digits = sum(c.isdigit() for c in node.value)
            raise ConfigError(
                f"{node.start_mark.line + 1}: an integer of {digits} digits is too long to read"
            ) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; any file that is not one is a ``ConfigError`` naming it (and the line)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a YAML file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is a signature, not part of the first key
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot read it as YAML: {' '.join(str(e).split())}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}:{e}") from None
    except ValueError as e:  # a date that is none (2024-13-45), ...
        raise ConfigError(f"{path}: cannot read it as YAML: {str(e).split(';')[0]}") from None
    if data is None:  # an empty file is more likely a mistake (a truncated copy) than a wish for all defaults
        raise ConfigError(f"{path}: empty: no {what} fields (write `{{}}` for the defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} fields, got {type(data).__name__}")
    return data
