"""Prefect result storage in the project's store (a directory or S3), not in a container-local path.

Task results (the small ``{address, digest}`` of a published output) are what lets a retried or
repeated flow skip a finished stage as a cache hit; they must outlive the container that ran the flow,
so they live in the store under ``_prefect/results/``.

Prefect wants result storage saved as a block document on its server (so that any worker can read
the results back); ``for_store`` saves one per store, named after the store's URL.

Usage::

    task.with_options(result_storage=StoreResults.for_store(store), persist_result=True)
"""

from __future__ import annotations

import anyio
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem

from schemas import sha256_hex
from tasks.store import Store

PREFIX = "_prefect/results"


class StoreResults(WritableFileSystem):
    """A ``WritableFileSystem`` block over ``tasks.store.Store``; credentials come from the environment."""

    _block_type_name = "Reasoning NER Store"
    url: str

    @classmethod
    def for_store(cls, store: Store) -> StoreResults:
        """This store's result storage, saved (idempotently) on the Prefect server."""
        block = cls(url=store.url)
        block.save(f"rner-{sha256_hex(store.url)[:16]}", overwrite=True)
        return block

    def _store(self) -> Store:
        return Store(self.url)

    def _path(self, path: str) -> str:
        return f"{PREFIX}/{path.strip('/')}"

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self._store().get, self._path(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:  # type: ignore[override]
        return self._store().get(self._path(path))

    async def awrite_path(self, path: str, content: bytes) -> str:
        await anyio.to_thread.run_sync(self._store().put, self._path(path), content)
        return path

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:  # type: ignore[override]
        self._store().put(self._path(path), content)
        return path
