"""JSON Lines in and out, validated line by line against a record schema.

Every error names the file and the 1-based line, and for a schema violation the field path::

    gold.jsonl:7: entities.0.start: Input should be a valid integer

Usage::

    examples = read_jsonl("gold.jsonl", NERExample)      # list, or RecordError
    data = dump_jsonl(examples, NERExample)               # bytes, every record re-validated
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from tasks.errors import RnerError

M = TypeVar("M", bound=BaseModel)


class RecordError(RnerError, ValueError):
    """A line of a JSONL file that is not a valid record."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


def describe(error: ValidationError) -> str:
    """One line per problem: ``field.path: message`` (``invalid JSON: ...`` when it is not JSON)."""
    parts = []
    for e in error.errors(include_url=False):
        if e["type"] == "json_invalid":
            parts.append(f"invalid JSON: {e['ctx'].get('error', e['msg'])}")
            continue
        where = ".".join(str(p) for p in e["loc"]) or "(record)"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark that editors on Windows start files with: a signature, never content. Every reader
of JSON, JSONL, CoNLL and YAML input drops it."""


def without_bom(data: bytes) -> bytes:
    return data.removeprefix(BOM)


def parse_lines(lines: Iterable[bytes | str], model: type[M], source: str) -> Iterator[M]:
    """Validate each non-blank line as ``model``; the first bad line raises ``RecordError``. A byte-order mark
    (``BOM``) at the start of the first line is dropped."""
    for number, line in enumerate(lines, start=1):
        if number == 1:
            line = without_bom(line) if isinstance(line, bytes) else line.removeprefix("\ufeff")
        if line.strip():
            yield _validate(model, line, source, number)


def read_jsonl(path: str | Path, model: type[M]) -> list[M]:
    """All records of a local file; a malformed line raises ``RecordError`` before anything is returned."""
    with open(path, "rb") as f:
        return list(parse_lines(f, model, str(path)))


def dump_jsonl(records: Iterable[M | dict], model: type[M], source: str = "<records>") -> bytes:
    """Serialize records, checking each against ``model`` exactly as a reader will see it."""
    lines = []
    for number, record in enumerate(records, start=1):
        if isinstance(record, dict):
            record = _validate(model, record, source, number)
        elif not isinstance(record, model):
            raise RecordError(source, number, f"expected {model.__name__}, got {type(record).__name__}")
        line = record.model_dump_json()
        _validate(model, line, source, number)
        lines.append(line)
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _validate(model: type[M], data: bytes | str | dict, source: str, number: int) -> M:
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as e:
        raise RecordError(source, number, describe(e)) from None
