"""The manifest: the one file that makes a stage's output exist.

A stage writes its files first and its manifest last (create-if-absent), so an output without a
manifest is invisible, and two writers cannot both publish. Downstream stages read their inputs only
through manifests and name them by digest (sha256 of the manifest file's bytes), which makes lineage
exact. Where an output lives is a function of the producing stage, its config hash and its inputs'
digests (``output_address``): running the same stage on the same inputs finds the finished output.

A manifest is *sealed*: ``seal`` is the sha256 of its own JSON without the seal (``seal_digest``), set by
``tasks.store`` when it writes one and checked whenever one is read, so an edit that leaves valid JSON is
still caught. ``writer`` is a random token of the one ``publish`` call that wrote it: a writer whose reply was
lost recognises its own manifest. ``content_digest`` names what an output *is* (kind, stage, config hash,
inputs, files), whatever its address, version number, stats or creation time: versioned datasets publish one
version per content.

Usage::

    address = output_address("validate", config_hash(cfg), [raw.digest])
    # ... write shards under address, then publish a Manifest(address=address, ...)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AwareDatetime, Field, JsonValue, NonNegativeInt, model_validator

from schemas.base import Name, Record, Seq, canonical_json, sha256_hex
from schemas.records import SCHEMA_VERSION

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _relative_path(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path!r} is not a normalized relative path")
    return path


RelPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-/=]+$", max_length=1024), AfterValidator(_relative_path)]

ManifestKind = Literal[
    "passages",  # Passage records: raw input for annotation
    "ner",  # NERExample records: labelled data (imported, sampled, published NER-CoT)
    "cot",  # CoTRecord records: teacher annotations, validated or not
    "verdicts",  # JudgeVerdict records
    "predictions",  # Prediction records
    "metrics",  # evaluation results and reports
    "model",  # a trained model directory
]

MANIFEST_FILE = "manifest.json"


class FileEntry(Record):
    """One file of an output, relative to the output's address."""

    path: RelPath
    sha256: Sha256
    bytes: NonNegativeInt
    rows: NonNegativeInt | None = None
    record_type: Name | None = None
    """Name of the record model every line validates against (``None`` for binary files)."""
    role: Name = "data"
    """What the file is for within the output: ``data``, ``rejects``, ``report``, ..."""


class InputRef(Record):
    """A consumed output, pinned by the digest of its manifest."""

    address: RelPath
    digest: Sha256


class Manifest(Record):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: ManifestKind
    address: RelPath
    stage: Name
    code_version: Name
    config_hash: Sha256
    config: dict[str, JsonValue] = Field(default_factory=dict)
    inputs: Seq[InputRef] = ()
    files: Seq[FileEntry]
    stats: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: AwareDatetime
    writer: Name | None = None
    """A random token of the ``publish`` call that wrote this manifest (``None`` for a manifest being built)."""
    seal: Sha256 | None = None
    """sha256 of the canonical JSON of every other field as written (``seal_digest``); ``None`` only before it
    is written. Readers check it (``tasks.store``)."""

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        paths = [f.path for f in self.files]
        if len(paths) != len(set(paths)):
            raise ValueError("files list a path twice")
        return self

    def files_with(self, role: str) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.role == role)

    @property
    def rows(self) -> int:
        return sum(f.rows or 0 for f in self.files_with("data"))

    @property
    def content_digest(self) -> str:
        """What the output is, independent of where and when it was published: see ``content_digest``."""
        return content_digest(self.kind, self.stage, self.config_hash, self.inputs, self.files)


def content_digest(
    kind: str, stage: str, config_digest: str, inputs: Iterable[InputRef], files: Iterable[FileEntry]
) -> str:
    """sha256 of kind, stage, config hash, inputs (in any order) and files (in order, each with its sha256)."""
    payload = {
        "kind": kind,
        "stage": stage,
        "config_hash": config_digest,
        "inputs": sorted((ref.address, ref.digest) for ref in inputs),
        "files": [f.model_dump(mode="json") for f in files],
    }
    return sha256_hex(canonical_json(payload))


def seal_digest(document: dict[str, Any]) -> str:
    """The seal of a manifest's JSON object: sha256 of its canonical JSON without the ``seal`` key."""
    return sha256_hex(canonical_json({k: v for k, v in document.items() if k != "seal"}))


def sealed_json(manifest: Manifest) -> bytes:
    """The bytes of ``manifest`` as written to the store, with its seal."""
    document = json.loads(manifest.model_copy(update={"seal": None}).model_dump_json())
    document["seal"] = seal_digest(document)
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


_SEGMENT = re.compile(r"[^A-Za-z0-9._\-]+")


def output_address(stage: str, config_digest: str, input_digests: list[str], *, prefix: str = "") -> str:
    """Where ``stage`` run with this config on these inputs publishes: ``[prefix/]stage/<16 hex>``.

    Input order does not matter; the prefix is a readable grouping such as ``cot/raw``.
    """
    key = sha256_hex(canonical_json({"stage": stage, "config": config_digest, "inputs": sorted(input_digests)}))
    parts = [p for p in prefix.strip("/").split("/") if p] + [_SEGMENT.sub("-", stage), key[:16]]
    return "/".join(parts)
