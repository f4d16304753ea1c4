"""One storage API over a local directory and S3 (obstore), with an all-or-nothing commit protocol.

An output lives at an *address* (a path under the store root, derived from the producing stage, its
config and its inputs: ``schemas.output_address``). Writing one::

    store = Store.from_settings()                 # RNER_STORE: a directory or s3://bucket/prefix
    out = store.output(address)
    if (done := out.published()) is None:
        committed = out.committed_shards()        # resume: shards a previous attempt finished
        for name, rows in work:
            if name not in committed:
                out.commit_shard(name, rows, CoTRecord)
        done = out.publish(kind="cot", stage="annotate", config=cfg, inputs=[src.ref])

Files go first, the manifest last with create-if-absent: until ``publish`` returns, readers see
nothing, and a second writer gets ``AlreadyPublished``. Shard files carry a content hash in their
name and each committed shard has a marker (also create-if-absent), so concurrent or retried writers
never overwrite each other's bytes. Reading::

    src = store.load(address)                     # Published(manifest, digest); NotPublished if absent
    for example in store.records(src.manifest):   # sha256 verified, every line schema-validated
        ...
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import LocalStore, S3Store
from pydantic import BaseModel, ValidationError

from schemas import (
    MANIFEST_FILE,
    RECORD_TYPES,
    Config,
    FileEntry,
    InputRef,
    Manifest,
    ManifestKind,
    Record,
    canonical_json,
    config_hash,
    sha256_hex,
)
from tasks.errors import RnerError
from tasks.jsonl import describe, dump_jsonl, parse_lines
from tasks.settings import Settings


class StoreError(RnerError, RuntimeError):
    """Base of every store failure; the message says which store and which path."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused the request (network, credentials, permissions)."""


class NotPublished(StoreError):
    """No manifest at the address: the output does not exist (yet)."""


class AlreadyPublished(StoreError):
    """Another writer published at this address first."""


class IntegrityError(StoreError):
    """A file's bytes do not match the sha256 its manifest records."""


@dataclass(frozen=True)
class Published:
    """A manifest as read from the store, with the digest of its bytes (what downstream stages pin)."""

    manifest: Manifest
    digest: str

    @property
    def ref(self) -> InputRef:
        return InputRef(address=self.manifest.address, digest=self.digest)


@cache
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout; in an image, the version of
    the checkout it was built from (``RNER_CODE_VERSION``, set by ``rner images build``)."""
    from importlib.metadata import PackageNotFoundError, version

    if pinned := os.environ.get("RNER_CODE_VERSION"):
        return pinned
    try:
        base = version("reasoning-ner")
    except PackageNotFoundError:
        base = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return f"{base}+g{result.stdout.strip()}"
    return base


class Store:
    """Bytes, records and manifests under one root: a local directory or ``s3://bucket[/prefix]``."""

    def __init__(self, url: str | Path, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        url = str(url)
        if url.startswith("s3://"):
            self.url = url.rstrip("/")
            self._store: Any = _s3_store(self.url, settings)
        else:
            root = Path(url.removeprefix("file://")).expanduser().resolve()
            self.url = str(root)
            try:
                self._store = LocalStore(root, mkdir=True)
            except (BaseError, OSError) as e:
                raise StoreUnavailable(f"cannot use {root} as a store: {e}") from None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Store:
        settings = settings or Settings()
        return cls(settings.store_url, settings)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def uri(self, path: str) -> str:
        return f"{self.url}/{path}"

    # -- bytes ---------------------------------------------------------------------------------

    def get(self, path: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, path).bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(path)} does not exist") from None
        except BaseError as e:
            raise StoreUnavailable(f"cannot read {self.uri(path)}: {_first_line(e)}") from None

    def put(self, path: str, data: bytes, *, create: bool = False) -> None:
        """Atomic write; ``create=True`` fails with ``AlreadyExistsError`` if the path exists."""
        try:
            obstore.put(self._store, path, data, mode="create" if create else "overwrite", use_multipart=False)
        except AlreadyExistsError:
            raise
        except (BaseError, OSError) as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {_first_line(e)}") from None

    def put_path(self, path: str, local: Path) -> None:
        """Upload a local file (streamed, multipart when large)."""
        try:
            obstore.put(self._store, path, local)
        except (BaseError, OSError) as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {_first_line(e)}") from None

    def download(self, path: str, dest: Path, sha256: str) -> None:
        """Stream an object to ``dest``; refused (and nothing left at ``dest``) unless its sha256 matches."""
        partial = dest.with_name(f".{dest.name}.partial")
        digest = hashlib.sha256()
        try:
            with open(partial, "wb") as f:
                for chunk in obstore.get(self._store, path):
                    digest.update(chunk)
                    f.write(chunk)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            raise FileNotFoundError(f"{self.uri(path)} does not exist") from None
        except BaseError as e:
            partial.unlink(missing_ok=True)
            raise StoreUnavailable(f"cannot read {self.uri(path)}: {_first_line(e)}") from None
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise IntegrityError(f"{self.uri(path)}: sha256 is {digest.hexdigest()}, expected {sha256}")
        os.replace(partial, dest)

    def fetch_tree(self, address: str, entries: Iterable[FileEntry], prefix: str, dest: Path) -> Path:
        """The files of an output under ``prefix/`` (see ``Output.put_tree``) as a local directory, verified."""
        for entry in entries:
            rel = entry.path.removeprefix(f"{prefix}/")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download(f"{address}/{entry.path}", target, entry.sha256)
        return dest

    def exists(self, path: str) -> bool:
        try:
            obstore.head(self._store, path)
        except FileNotFoundError:
            return False
        except BaseError as e:
            raise StoreUnavailable(f"cannot reach {self.uri(path)}: {_first_line(e)}") from None
        return True

    def list(self, prefix: str) -> list[str]:
        """Paths of all objects under ``prefix`` (recursive), sorted."""
        try:
            return sorted(m["path"] for batch in obstore.list(self._store, prefix.rstrip("/")) for m in batch)
        except FileNotFoundError:
            return []
        except BaseError as e:
            raise StoreUnavailable(f"cannot list {self.uri(prefix)}: {_first_line(e)}") from None

    def fingerprint(self, prefix: str) -> str:
        """What is under ``prefix`` right now, in one hash: the manifest's digest for a published output,
        else the paths, sizes and ETags of its files (cheap: one listing, no reads)."""
        if (published := self.find(prefix)) is not None:
            return published.digest
        try:
            objects = [m for batch in obstore.list(self._store, prefix.rstrip("/")) for m in batch]
        except FileNotFoundError:
            objects = []
        except BaseError as e:
            raise StoreUnavailable(f"cannot list {self.uri(prefix)}: {_first_line(e)}") from None
        listing = sorted((m["path"], m["size"], m.get("e_tag") or "") for m in objects)
        return sha256_hex(canonical_json(listing))

    # -- manifests and records -----------------------------------------------------------------

    def output(self, address: str) -> Output:
        return Output(self, address.strip("/"))

    def find(self, address: str) -> Published | None:
        """The published manifest at ``address``, or ``None`` if nothing is published there."""
        path = f"{address.strip('/')}/{MANIFEST_FILE}"
        try:
            data = self.get(path)
        except FileNotFoundError:
            return None
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as e:
            raise StoreError(f"{self.uri(path)}: not a valid manifest: {describe(e)}") from None
        return Published(manifest, sha256_hex(data))

    def load(self, address: str) -> Published:
        published = self.find(address)
        if published is None:
            raise NotPublished(f"nothing is published at {self.uri(address.strip('/'))} (no {MANIFEST_FILE})")
        return published

    def read_file(self, address: str, entry: FileEntry) -> bytes:
        """A file of the output at ``address``, refused unless its sha256 matches ``entry``."""
        path = f"{address}/{entry.path}"
        data = self.get(path)
        actual = sha256_hex(data)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{self.uri(path)}: sha256 is {actual}, the manifest says {entry.sha256}; refusing to read it"
            )
        return data

    def records(self, manifest: Manifest, role: str = "data") -> Iterator[Record]:
        """Every record of a published output's files with ``role``, in file order, each validated."""
        return self.read_records(manifest.address, manifest.files_with(role))

    def split_records(self, manifest: Manifest, split: str) -> Iterator[Record]:
        """One split of a dataset: its files of role ``split`` (an imported dataset keeps each split apart),
        else, for outputs that are one split, its ``data`` files."""
        return self.records(manifest, split if manifest.files_with(split) else "data")

    def read_records(self, address: str, entries: Iterable[FileEntry]) -> Iterator[Record]:
        """Records of the given files of the output at ``address`` (published or still being written)."""
        for entry in entries:
            if entry.record_type not in RECORD_TYPES:
                raise StoreError(f"{self.uri(address)}/{entry.path}: no record type {entry.record_type!r}")
            data = self.read_file(address, entry)
            source = self.uri(f"{address}/{entry.path}")
            yield from parse_lines(data.splitlines(), RECORD_TYPES[entry.record_type], source)


class Output:
    """A stage output being written at one address. Nothing is visible until ``publish``."""

    def __init__(self, store: Store, address: str) -> None:
        self.store = store
        self.address = address

    def __repr__(self) -> str:
        return f"Output({self.store.uri(self.address)!r})"

    def published(self) -> Published | None:
        return self.store.find(self.address)

    def write(
        self, name: str, records: Iterable[BaseModel | dict], record_type: type[Record], role: str = "data"
    ) -> FileEntry:
        """Validate and write one JSONL file; returns its entry for the manifest."""
        source = self.store.uri(f"{self.address}/{role}/{name}")
        data = dump_jsonl(records, record_type, source)
        return self.put_file(name, data, role=role, suffix=".jsonl", rows=data.count(b"\n"), record_type=record_type)

    def put_file(
        self,
        name: str,
        data: bytes,
        *,
        role: str = "data",
        suffix: str = "",
        rows: int | None = None,
        record_type: type[Record] | None = None,
    ) -> FileEntry:
        """Write bytes under ``role/`` with a content-addressed name, so no writer overwrites another."""
        digest = sha256_hex(data)
        path = f"{role}/{name}.{digest[:16]}{suffix}"
        self.store.put(f"{self.address}/{path}", data)
        return FileEntry(
            path=path,
            sha256=digest,
            bytes=len(data),
            rows=rows,
            record_type=record_type.__name__ if record_type else None,
            role=role,
        )

    def put_tree(self, local: Path, prefix: str, role: str) -> list[FileEntry]:
        """Upload a directory under ``prefix/`` keeping its file names, so that a model directory stays a
        model directory in the store (``Store.fetch_tree`` brings it back)."""
        entries = []
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            path = f"{prefix}/{file.relative_to(local).as_posix()}"
            self.store.put_path(f"{self.address}/{path}", file)
            entries.append(FileEntry(path=path, sha256=_file_sha256(file), bytes=file.stat().st_size, role=role))
        return entries

    def commit_shard(self, name: str, records: Iterable[BaseModel | dict], record_type: type[Record]) -> FileEntry:
        """Write a shard and mark it committed. A shard committed before (by anyone) is kept as it was."""
        entry = self.write(name, records, record_type)
        try:
            self.store.put(self._marker(name), entry.model_dump_json().encode(), create=True)
        except AlreadyExistsError:
            return self.committed_shards()[name]
        return entry

    def committed_shards(self) -> dict[str, FileEntry]:
        """Shards committed so far (by this or an earlier attempt), by name."""
        shards = {}
        for path in self.store.list(f"{self.address}/_shards"):
            shards[Path(path).stem] = FileEntry.model_validate_json(self.store.get(path))
        return shards

    def publish(
        self,
        *,
        kind: ManifestKind,
        stage: str,
        config: Config,
        files: Iterable[FileEntry] | None = None,
        inputs: Iterable[InputRef] = (),
        stats: dict[str, Any] | None = None,
    ) -> Published:
        """Write the manifest, create-if-absent. ``files`` defaults to the committed shards in name order."""
        if files is None:
            files = [entry for _, entry in sorted(self.committed_shards().items())]
        manifest = Manifest(
            kind=kind,
            address=self.address,
            stage=stage,
            code_version=code_version(),
            config_hash=config_hash(config),
            config=json.loads(config.model_dump_json()),
            inputs=tuple(inputs),
            files=tuple(files),
            stats=stats or {},
            created_at=datetime.now(UTC),
        )
        data = manifest.model_dump_json(indent=2).encode()
        try:
            self.store.put(f"{self.address}/{MANIFEST_FILE}", data, create=True)
        except AlreadyExistsError:
            raise AlreadyPublished(
                f"{self.store.uri(self.address)} is already published (another writer finished first); "
                "read it with Store.load instead"
            ) from None
        return Published(manifest, sha256_hex(data))

    def _marker(self, name: str) -> str:
        return f"{self.address}/_shards/{name}.json"


def _s3_store(url: str, settings: Settings) -> S3Store:
    config: dict[str, str] = {"region": settings.s3_region}
    client: dict[str, Any] = {"timeout": f"{settings.store_timeout_s}s", "connect_timeout": "10s"}
    if settings.s3_endpoint:
        config["endpoint"] = settings.s3_endpoint
        client["allow_http"] = settings.s3_endpoint.startswith("http://")
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        config["access_key_id"] = settings.s3_access_key_id.get_secret_value()
        config["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    retry = {"max_retries": settings.store_retries, "retry_timeout": timedelta(seconds=settings.store_timeout_s)}
    try:
        return S3Store.from_url(url, config=config, client_options=client, retry_config=retry)
    except BaseError as e:
        raise StoreUnavailable(f"cannot configure {url}: {_first_line(e)}") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
