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

Reliability (README, "Reliability"): a create-if-absent write whose reply was lost is recognised by reading
the object back (``Store.create``), so a writer never takes its own manifest for another writer's; manifests
are sealed (``schemas.manifest.seal_digest``) and checked on every read (``IntegrityError`` naming the path);
a shard marker that does not parse, or whose shard is missing or of another size, is reported once and its
shard done again. On a local directory every write goes to a staging file (``name#<digits>``, locked while it
is written) that is renamed or linked into place, so no reader sees a partial file, and staging files that a
crashed writer left are removed by the next writer in that folder (never a live writer's: it holds the lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
import threading
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
from schemas.manifest import seal_digest, sealed_json
from tasks.errors import RnerError
from tasks.jsonl import describe, dump_jsonl, parse_lines
from tasks.redact import redact_url
from tasks.settings import Settings

_log = logging.getLogger("rner.store")
_LOCK = threading.Lock()


class StoreError(RnerError, RuntimeError):
    """Base of every store failure; the message says which store and which path."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused the request (network, credentials, permissions)."""


class NotPublished(StoreError):
    """No manifest at the address: the output does not exist (yet)."""


class AlreadyPublished(StoreError):
    """Another writer published at this address first; ``existing`` is what it published (verified)."""

    def __init__(self, message: str, existing: Published | None = None) -> None:
        super().__init__(message)
        self.existing = existing


class IntegrityError(StoreError):
    """Bytes that are not what they claim: a file whose sha256 is not the one its manifest records, a manifest
    whose seal does not match its content, or one that is not the manifest a reader pinned by digest."""


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
            self._root: Path | None = None
        else:
            root = Path(url.removeprefix("file://")).expanduser().resolve()
            self.url = str(root)
            try:
                self._store = LocalStore(root, mkdir=True)
            except (BaseError, OSError) as e:
                raise StoreUnavailable(f"cannot use {root} as a store: {e}") from None
            self._root = root
        self._swept: set[Path] = set()
        self._warned: set[str] = set()
        self.settings = settings.model_copy(update={"store": self.url})
        """The settings the store was opened with, pointing at it: a stage given this store resolves ``store:``
        model references here (``tasks.models.resolve_model``), whatever ``RNER_STORE`` says."""

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
        """Atomic write; ``create=True`` fails with ``AlreadyExistsError`` if the path exists.

        A create-if-absent write whose reply is lost fails with ``StoreUnavailable`` although it may have
        landed: ``create`` is the write that tells the two apart."""
        if (target := self._local_path(path)) is not None:
            self._put_local(path, target, [data], create)
            return
        try:
            obstore.put(self._store, path, data, mode="create" if create else "overwrite", use_multipart=False)
        except AlreadyExistsError:
            raise
        except (BaseError, OSError) as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {_first_line(e)}") from None

    def create(self, path: str, data: bytes, *, attempts: int = 3) -> bytes | None:
        """Create-if-absent that survives lost replies: ``None`` when ``data`` is what ``path`` holds now
        (written by this call, or by one of its attempts whose reply was lost), else the bytes another
        writer put there first. An attempt that fails without an answer is followed by a read, then (if
        nothing is there) by another attempt, at most ``attempts`` in all."""
        error: StoreUnavailable | None = None
        for _ in range(attempts):
            try:
                self.put(path, data, create=True)
                return None
            except AlreadyExistsError:
                pass
            except StoreUnavailable as e:  # the write may or may not have landed: look
                error = e
            try:
                found = self.get(path)
            except FileNotFoundError:
                continue  # it did not land (or was removed): try again
            except StoreUnavailable as e:
                error = e
                continue
            return None if found == data else found
        raise error or StoreUnavailable(f"cannot create {self.uri(path)}: it kept appearing and vanishing")

    def put_path(self, path: str, local: Path) -> None:
        """Upload a local file (streamed, multipart when large)."""
        if (target := self._local_path(path)) is not None:
            try:
                with open(local, "rb") as f:
                    self._put_local(path, target, iter(lambda: f.read(1 << 20), b""), create=False)
            except OSError as e:
                raise StoreUnavailable(f"cannot write {self.uri(path)}: {e}") from None
            return
        try:
            obstore.put(self._store, path, local)
        except (BaseError, OSError) as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {_first_line(e)}") from None

    def _local_path(self, path: str) -> Path | None:
        """Where ``path`` lives in a local store, if this module writes it itself (else obstore does)."""
        if self._root is None:
            return None
        parts = path.split("/")
        if any(p in ("", ".", "..") or "#" in p or "\\" in p or "\0" in p for p in parts):
            return None  # obstore refuses it with its own error, or (``#``) would hide it from listings
        return self._root.joinpath(*parts)

    def _put_local(self, path: str, target: Path, chunks: Iterable[bytes], create: bool) -> None:
        """Write to a locked staging file beside ``target``, then link (create) or rename (overwrite) it into
        place: readers see the whole file or nothing, and a crash leaves only a staging file, which the next
        writer in that folder removes."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._sweep_once(target.parent)
            fd, staging = _staging_file(target)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {e}") from None
        try:
            with open(fd, "wb", closefd=False) as f:
                for chunk in chunks:
                    f.write(chunk)
            if create:
                try:
                    os.link(staging, target)
                except FileExistsError:
                    raise AlreadyExistsError(f"{self.uri(path)} already exists") from None
            else:
                os.replace(staging, target)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {self.uri(path)}: {e}") from None
        finally:
            staging.unlink(missing_ok=True)  # after a link (or a failure); a rename left nothing there
            os.close(fd)  # releases the lock only now: a sweeper never takes a file still in use

    def _sweep_once(self, directory: Path) -> None:
        with _LOCK:
            if directory in self._swept:
                return
            self._swept.add(directory)
        sweep_staging(directory)

    def sweep(self, prefix: str) -> int:
        """Remove the staging files that crashed writers left under ``prefix`` (a local store; nothing on S3,
        where writes are atomic). Returns how many were removed."""
        if self._root is None:
            return 0
        top = self._local_path(prefix.strip("/")) if prefix.strip("/") else self._root
        return sweep_staging(top, recursive=True) if top is not None and top.is_dir() else 0

    def sizes(self, prefix: str) -> dict[str, int]:
        """Path → size in bytes of every object under ``prefix`` (one listing)."""
        try:
            return {m["path"]: m["size"] for batch in obstore.list(self._store, prefix.rstrip("/")) for m in batch}
        except FileNotFoundError:
            return {}
        except BaseError as e:
            raise StoreUnavailable(f"cannot list {self.uri(prefix)}: {_first_line(e)}") from None

    def size(self, path: str) -> int | None:
        """The size in bytes of the object at ``path``, or ``None`` if there is none."""
        try:
            return int(obstore.head(self._store, path)["size"])
        except FileNotFoundError:
            return None
        except BaseError as e:
            raise StoreUnavailable(f"cannot reach {self.uri(path)}: {_first_line(e)}") from None

    def warn_once(self, path: str, message: str) -> None:
        """Log ``message`` as a warning, once per ``path`` in this store object's life."""
        with _LOCK:
            if path in self._warned:
                return
            self._warned.add(path)
        _log.warning(message)

    def download(self, path: str, dest: Path, sha256: str) -> None:
        """Stream an object to ``dest``; refused (and nothing left at ``dest``) unless its sha256 matches.
        It is written to a locked staging file first (see ``_put_local``): a crash leaves nothing at ``dest``,
        and the next download into that folder removes what it left."""
        sweep_staging(dest.parent)
        fd, partial = _staging_file(dest)
        digest = hashlib.sha256()
        try:
            with open(fd, "wb", closefd=False) as f:
                for chunk in obstore.get(self._store, path):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise IntegrityError(f"{self.uri(path)}: sha256 is {digest.hexdigest()}, expected {sha256}")
            os.replace(partial, dest)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(path)} does not exist") from None
        except BaseError as e:
            raise StoreUnavailable(f"cannot read {self.uri(path)}: {_first_line(e)}") from None
        finally:
            partial.unlink(missing_ok=True)
            os.close(fd)

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
        """The published manifest at ``address``, verified, or ``None`` if nothing is published there."""
        path = f"{address.strip('/')}/{MANIFEST_FILE}"
        try:
            data = self.get(path)
        except FileNotFoundError:
            return None
        return self._manifest(path, data)

    def _manifest(self, path: str, data: bytes) -> Published:
        """A manifest's bytes, checked: valid JSON, a valid ``Manifest``, and its seal matches its content."""
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as e:
            raise StoreError(f"{self.uri(path)}: not a valid manifest: {describe(e)}") from None
        if manifest.seal is None:
            raise IntegrityError(
                f"{self.uri(path)}: the manifest has no seal (edited, or written before manifests were sealed); "
                "refusing to trust it: publish the output again"
            )
        actual = seal_digest(json.loads(data))
        if actual != manifest.seal:
            raise IntegrityError(
                f"{self.uri(path)}: the manifest was changed after it was written (its content hashes to "
                f"{actual[:16]}…, its seal says {manifest.seal[:16]}…); refusing to read it"
            )
        return Published(manifest, sha256_hex(data))

    def load(self, address: str, digest: str | None = None) -> Published:
        """The published manifest at ``address``; with ``digest``, only if it is that very manifest (the
        digest a consumer recorded in its ``InputRef``), else ``IntegrityError``."""
        published = self.find(address)
        if published is None:
            raise NotPublished(f"nothing is published at {self.uri(address.strip('/'))} (no {MANIFEST_FILE})")
        if digest is not None and published.digest != digest:
            raise IntegrityError(
                f"{self.uri(address.strip('/'))}/{MANIFEST_FILE}: its digest is {published.digest}, "
                f"but it was recorded as {digest}; the manifest was replaced or edited"
            )
        return published

    def load_ref(self, ref: InputRef) -> Published:
        """The manifest an ``InputRef`` pins, checked against the digest it recorded."""
        return self.load(ref.address, ref.digest)

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
        entry = file_entry(name, data, role=role, suffix=suffix, rows=rows, record_type=record_type)
        self.store.put(f"{self.address}/{entry.path}", data)
        return entry

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
        """Write a shard and mark it committed. A shard committed before (by anyone) is kept as it was; a
        damaged marker (see ``committed_shards``) is replaced by this one."""
        entry = self.write(name, records, record_type)
        marker = self._marker(name)
        data = entry.model_dump_json().encode()
        existing = self.store.create(marker, data)
        if existing is None:
            return entry
        kept = self._marker_entry(marker, existing)
        if kept is not None and self.store.size(f"{self.address}/{kept.path}") == kept.bytes:
            return kept
        self.store.put(marker, data)  # a damaged marker, or one whose shard is gone, gives way to this one
        return entry

    def committed_shards(self) -> dict[str, FileEntry]:
        """Shards committed so far (by this or an earlier attempt), by name. A marker that does not parse (a
        crash mid-write on a store without atomic writes), or whose shard file is missing or has another size,
        is reported once (a warning naming it) and left out: its shard is done again."""
        shards = {}
        markers = self.store.list(f"{self.address}/_shards")
        sizes = self.store.sizes(f"{self.address}/data") if markers else {}  # where commit_shard writes shards
        for path in markers:
            try:
                data = self.store.get(path)
            except FileNotFoundError:
                continue
            entry = self._marker_entry(path, data)
            if entry is None:
                continue
            if sizes.get(f"{self.address}/{entry.path}") != entry.bytes:
                self.store.warn_once(
                    path,
                    f"{self.store.uri(path)}: shard marker names {entry.path}, which is missing or not "
                    f"{entry.bytes} bytes; the shard will be done again",
                )
                continue
            shards[Path(path).stem] = entry
        return shards

    def _marker_entry(self, path: str, data: bytes) -> FileEntry | None:
        try:
            return FileEntry.model_validate_json(data)
        except ValidationError as e:
            self.store.warn_once(
                path, f"{self.store.uri(path)}: damaged shard marker ({describe(e)}); the shard will be done again"
            )
            return None

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
        """Write the manifest, create-if-absent. ``files`` defaults to the committed shards in name order.

        Returns the manifest written, also when the reply to its write was lost (its own bytes are found
        there: ``Store.create``). ``AlreadyPublished`` means another writer's manifest is there; it carries
        that manifest (``existing``), verified."""
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
            writer=secrets.token_hex(16),
        )
        data = sealed_json(manifest)
        path = f"{self.address}/{MANIFEST_FILE}"
        self.store.sweep(self.address)  # what crashed attempts left in a local store goes before publishing
        existing = self.store.create(path, data)
        if existing is None:
            return self.store._manifest(path, data)
        raise AlreadyPublished(
            f"{self.store.uri(self.address)} is already published (another writer finished first); "
            "read it with Store.load instead",
            self.store._manifest(path, existing),
        )

    def _marker(self, name: str) -> str:
        return f"{self.address}/_shards/{name}.json"


def file_entry(
    name: str,
    data: bytes,
    *,
    role: str = "data",
    suffix: str = "",
    rows: int | None = None,
    record_type: type[Record] | None = None,
) -> FileEntry:
    """The manifest entry ``Output.put_file`` gives these bytes (their content-addressed path), without writing."""
    digest = sha256_hex(data)
    return FileEntry(
        path=f"{role}/{name}.{digest[:16]}{suffix}",
        sha256=digest,
        bytes=len(data),
        rows=rows,
        record_type=record_type.__name__ if record_type else None,
        role=role,
    )


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
        raise StoreUnavailable(f"cannot configure {redact_url(url)}: {_first_line(e)}") from None


_STAGING = re.compile(r"[^#]+#\d+")
"""A staging file's name: ``<final name>#<digits>`` (obstore's listings skip such names, as its own staging)."""


def _staging_file(target: Path) -> tuple[int, Path]:
    """A new staging file beside ``target``, open for writing and locked (``flock``) until its descriptor is
    closed. A sweeper may remove a file between its creation and its lock; the file is then made again."""
    for _ in range(100):
        staging = target.with_name(f"{target.name}#{secrets.randbelow(10**18):018d}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, staging
        os.close(fd)
    raise OSError(f"cannot make a staging file beside {target}")


def sweep_staging(directory: Path, *, recursive: bool = False) -> int:
    """Remove the staging files under ``directory`` whose writers are gone (their lock is free): what a
    crashed writer left. A live writer holds its lock, so its file stays. Returns how many were removed."""
    removed = 0
    try:
        candidates = directory.rglob("*#*") if recursive else directory.glob("*#*")
        for path in candidates:
            if not _STAGING.fullmatch(path.name):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # gone already, or not a file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:  # still that file: its writer is gone
                    path.unlink()
                    removed += 1
            except OSError:
                pass  # locked by a live writer, or renamed/removed meanwhile
            finally:
                os.close(fd)
    except OSError:
        pass  # an unreadable folder: nothing to sweep that we could
    return removed


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, credentials of the URLs in it (an S3 endpoint's) redacted."""
    return redact_url(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
