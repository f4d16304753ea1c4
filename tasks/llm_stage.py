"""One LLM request per item, over shards that commit as they finish: the engine of annotate and judge.

Items are cut into shards of ``config.shard_size`` (named ``00000``, ``00001``, ... in input order).
Shards already committed by an earlier attempt are skipped; inside a shard, requests that finished
before are replayed from the output's request cache (``<address>/_cache``), so a resumed stage never
pays twice. All pending requests share one client, whose concurrency bound keeps the server saturated
across shard boundaries. A request that fails for good (after the client's retries) fails its shard
only: the other shards still complete and commit, then ``StageFailed`` names the failed shards, and a
rerun resumes from there. A shard marker or a cache entry that a crash left damaged (a store without
atomic writes) is reported once, with its path, and its shard or request done again: it never blocks a
resume (``Output.committed_shards``, ``StoreCache``).

Usage::

    with serving(config.teacher, endpoint) as ep:
        usage = map_requests(out, passages, config=config, endpoint=ep, messages=lambda p: ...,
                             build=lambda p, result: CoTRecord(...), record_type=CoTRecord)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from schemas import Endpoint, FileEntry, Generation, Record, SamplingParams, VLLMLaunch
from schemas.configs import LLMStage
from tasks.budget import ask
from tasks.errors import RnerError
from tasks.llm import ChatResult, LLMClient, LLMRequestError, Message, StoreCache, Usage
from tasks.serving import serve
from tasks.settings import Settings
from tasks.store import Output

T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called with (items done, items total) as shards finish."""


class StageFailed(RnerError, RuntimeError):
    """Some shards could not be completed; the others are committed and a rerun resumes."""


_POOL: ContextVar[tuple[ExitStack, dict[Endpoint | VLLMLaunch, Endpoint]] | None] = ContextVar("pool", default=None)


@contextmanager
def shared_servers() -> Iterator[None]:
    """Inside this block, stages that ask for the same server spec share one server, started on first
    use and stopped when the block ends (CG runs teacher and judge on one vLLM when they are the same)."""
    with ExitStack() as stack:
        token = _POOL.set((stack, {}))
        try:
            yield
        finally:
            _POOL.reset(token)


@contextmanager
def serving(
    server: Endpoint | VLLMLaunch, endpoint: Endpoint | None = None, *, settings: Settings | None = None
) -> Iterator[Endpoint]:
    """``endpoint`` when the caller already has a server running, else the configured one: started and
    stopped here if it is a launch spec, or taken from the enclosing ``shared_servers`` block. ``settings``:
    the stage's store's (``Store.settings``), where a ``store:`` model resolves."""
    pool = _POOL.get()
    if endpoint is not None:
        yield endpoint
    elif pool is None:
        with serve(server, settings=settings) as started:
            yield started
    else:
        stack, running = pool
        if server not in running:
            running[server] = stack.enter_context(serve(server, settings=settings))
        yield running[server]


def collect_shards(out: Output, generation: Callable[[Any], Generation]) -> tuple[list[FileEntry], list[Any], dict]:
    """The committed shards (in order), their records, and token usage per shard and in total."""
    files, records, per_shard = [], [], {}
    for name, entry in sorted(out.committed_shards().items()):
        rows = list(out.store.read_records(out.address, [entry]))
        per_shard[name] = {
            "requests": len(rows),
            "prompt_tokens": sum(generation(r).prompt_tokens for r in rows),
            "completion_tokens": sum(generation(r).completion_tokens for r in rows),
        }
        files.append(entry)
        records += rows
    totals = {k: sum(u[k] for u in per_shard.values()) for k in ("prompt_tokens", "completion_tokens")}
    return files, records, {**totals, "usage_per_shard": per_shard}


def shards_of(items: Sequence[T], size: int) -> list[tuple[str, Sequence[T]]]:
    return [(f"{i // size:05d}", items[i : i + size]) for i in range(0, len(items), size)]


def pending_shards(out: Output, items: Sequence[T], size: int) -> list[tuple[str, Sequence[T]]]:
    committed = out.committed_shards()
    return [(name, shard) for name, shard in shards_of(items, size) if name not in committed]


def map_requests(
    out: Output,
    items: Sequence[T],
    *,
    config: LLMStage,
    endpoint: Endpoint,
    messages: Callable[[T], list[Message]],
    build: Callable[[T, ChatResult], Record],
    record_type: type[Record],
    progress: Progress | None = None,
    reasoning_budget: int | None = None,
    sampling: Callable[[T], SamplingParams] | None = None,
) -> Usage:
    """Send one request per item of every uncommitted shard and commit each shard's records. With a
    ``reasoning_budget``, each item's completion is budget-forced (``tasks.budget``: two requests). ``sampling``:
    an item's own decoding parameters (annotate's samples of one passage differ by seed); else ``config.sampling``."""
    params = sampling or (lambda _: config.sampling)
    return asyncio.run(
        _map(out, items, config, endpoint, messages, build, record_type, progress, reasoning_budget, params)
    )


async def _map(
    out: Output,
    items: Sequence[T],
    config: LLMStage,
    endpoint: Endpoint,
    messages: Callable[[T], list[Message]],
    build: Callable[[T, ChatResult], Record],
    record_type: type[Record],
    progress: Progress | None,
    reasoning_budget: int | None,
    sampling: Callable[[T], SamplingParams],
) -> Usage:
    pending = await asyncio.to_thread(pending_shards, out, items, config.shard_size)
    done = len(items) - sum(len(shard) for _, shard in pending)
    if progress:
        progress(done, len(items))
    cache = await asyncio.to_thread(StoreCache, out.store, f"{out.address}/_cache")
    async with LLMClient(
        endpoint,
        concurrency=config.concurrency,
        timeout_s=config.request_timeout_s,
        max_retries=config.max_retries,
        cache=cache,
    ) as client:

        async def run_shard(name: str, shard: Sequence[T]) -> None:
            nonlocal done
            # Every request of the shard runs to the end (and is cached) even if one fails.
            results = await asyncio.gather(
                *(ask(client, messages(item), sampling(item), reasoning_budget) for item in shard),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            records = [build(item, r) for item, r in zip(shard, results, strict=True)]  # type: ignore[arg-type]
            await asyncio.to_thread(out.commit_shard, name, records, record_type)
            done += len(shard)
            if progress:
                progress(done, len(items))

        outcomes = await asyncio.gather(*(run_shard(n, s) for n, s in pending), return_exceptions=True)
        usage = client.usage
    failed = [(name, e) for (name, _), e in zip(pending, outcomes, strict=True) if isinstance(e, BaseException)]
    if failed:
        names = ", ".join(name for name, _ in failed)
        first = failed[0][1]
        if not isinstance(first, LLMRequestError | OSError | RuntimeError):
            raise first
        raise StageFailed(
            f"{len(failed)} of {len(pending)} pending shards failed ({names}) at {out.store.uri(out.address)}: "
            f"{first}. Finished shards are committed and finished requests cached; rerun to resume."
        ) from first
    return usage
