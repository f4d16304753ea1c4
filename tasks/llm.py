"""Async client for any OpenAI-compatible chat endpoint (vLLM, SGLang, hosted APIs), with a durable request cache.

Usage::

    cache = StoreCache(store, f"{output.address}/_cache")    # finished requests survive a crash of the stage
    async with LLMClient(endpoint, concurrency=64, timeout_s=600, max_retries=5, cache=cache) as llm:
        results = await asyncio.gather(*(llm.chat(ner_messages(p.text, p.labels), sampling) for p in passages))
    results[0].text                                 # what the parser reads: "<think>\\n…\\n</think>\\n\\n{…}"
    results[0].generation(endpoint.model, sampling) # provenance for CoTRecord.teacher / JudgeVerdict.judge
    llm.usage                                       # requests, cached, tokens and latency so far

Retries are the OpenAI SDK's own: up to ``max_retries`` more attempts, with exponential backoff and jitter (0.5 s
doubling up to 8 s, or the server's ``Retry-After``), on connection errors, timeouts (``timeout_s`` per attempt),
408, 409, 429 and 5xx. A request that still fails, or whose answer is not a chat completion, raises
``LLMRequestError``. At most ``concurrency`` requests are in flight, retries included.

Caching: a request is identified by ``request_key(model, messages, sampling)`` (the endpoint's address is not part
of it: the same model behind another URL gives the same answers). Before sending, the cache is asked; after a
successful answer it stores ``{content, reasoning, prompt_tokens, completion_tokens, latency_s, finish_reason}``
under the key. Failures are never cached. A replay returns the stored answer with ``cached=True`` and sends
nothing, so a resumed stage gets the very answers the interrupted one paid for, even at temperature > 0. A
damaged entry (truncated by a crash, or not such an answer) is reported once and the request sent again; the
new answer replaces it (``StoreCache``).

Stop strings (``sampling.stop``) are sent as ``stop``; the one that ended a completion is put back at the end of
its text when the server says which it was (vLLM's ``stop_reason``, SGLang's ``matched_stop``).

Reasoning: servers with a reasoning parser (vLLM ``--reasoning-parser``) return the thinking separately in
``message.reasoning`` (``reasoning_content`` in older versions) and the answer in ``content``; without one the
thinking stays inline in ``content`` as ``<think>…</think>``. ``ChatResult.text`` puts a separate reasoning back
into the inline form, so the parser reads one format either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, Protocol, Self

import httpx2
import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import Endpoint, Generation, SamplingParams, canonical_json, sha256_hex
from tasks.errors import RnerError
from tasks.jsonl import describe
from tasks.prompts import Message
from tasks.redact import install_log_redaction, redact_url
from tasks.store import Store


def request_key(
    model: str, messages: list[Message], sampling: SamplingParams, extra: Mapping[str, Any] | None = None
) -> str:
    """The identity of a request: sha256 of the canonical JSON of model, messages, sampling parameters and the
    extra request fields (left out when there are none, so plain requests keep their keys)."""
    payload = {"model": model, "messages": messages, "sampling": sampling.model_dump(mode="json")}
    if extra:
        payload["extra"] = dict(extra)
    return sha256_hex(canonical_json(payload))


@dataclass(frozen=True)
class ChatResult:
    """One chat completion, sent or replayed. ``content`` is the message content ("" when the server sent none);
    ``reasoning`` the separate reasoning field, ``None`` when the server sent none."""

    key: str
    content: str
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None
    cached: bool = False
    reasoning_tokens: int | None = None
    """Of ``completion_tokens``, the thinking request's, when a reasoning budget split the completion in two
    (``tasks.budget``); never cached itself (each of its two requests is)."""

    @property
    def text(self) -> str:
        """The completion as the parser expects it: reasoning inline in ``<think>`` tags."""
        if self.reasoning is None:
            return self.content
        return f"<think>\n{self.reasoning}\n</think>\n\n{self.content}"

    def generation(self, model: str, sampling: SamplingParams) -> Generation:
        return Generation(
            model=model,
            sampling=sampling,
            request_key=self.key,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            reasoning_tokens=self.reasoning_tokens,
        )


NOT_CACHED = ("key", "cached", "reasoning_tokens")
"""``ChatResult`` fields a cache entry leaves out: the key it is stored under, and what one request never has."""


class RequestCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def discard(self, key: str, why: str) -> None:
        """The entry ``get`` gave is unusable (``why``): forget it, and let the next ``put`` replace it."""
        ...


class MemoryCache:
    """A cache for one process (tests, interactive use)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries.setdefault(key, value)

    def discard(self, key: str, why: str) -> None:
        self.entries.pop(key, None)


class StoreCache:
    """A durable cache: one small JSON object per finished request, at ``{prefix}/{key[:2]}/{key}.json``.

    Writes are create-if-absent: when two writers finish the same request, the first answer stays. The keys are
    listed once, on construction, so a miss costs no round trip; a key that another writer stores later is not
    seen, which at worst sends that request once more.

    An entry that is not a JSON object (a crash mid-write on a store without atomic writes leaves a truncated
    one), or that its reader ``discard``s, is damaged: reported once (a warning naming its path), treated as
    a miss, and replaced by the next ``put`` — so a damaged entry costs one request again, never the stage.
    """

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._keys = {PurePosixPath(path).stem for path in store.list(self.prefix)}
        self._damaged: set[str] = set()

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self._keys:
            return None
        try:
            data = self.store.get(self._path(key))
        except FileNotFoundError:
            return None
        entry, why = _entry(data)
        if entry is None:
            self.discard(key, why)
        return entry

    def put(self, key: str, value: dict[str, Any]) -> None:
        path, data = self._path(key), canonical_json(value).encode()
        if key in self._damaged:
            self.store.put(path, data)  # replaces the damaged entry
            self._damaged.discard(key)
        elif (existing := self.store.create(path, data)) is not None and _entry(existing)[0] is None:
            self.discard(key, _entry(existing)[1])
            self.store.put(path, data)
            self._damaged.discard(key)
        self._keys.add(key)

    def discard(self, key: str, why: str) -> None:
        self._damaged.add(key)
        path = self._path(key)
        self.store.warn_once(path, f"{self.store.uri(path)}: damaged request-cache entry ({why}); sending it again")

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}.json"


def _entry(data: bytes) -> tuple[dict[str, Any] | None, str]:
    """A cache entry's bytes as a JSON object, or (None, what is wrong with them)."""
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"not JSON: {e}" if data.strip() else "empty"
    if not isinstance(entry, dict):
        return None, f"a JSON {type(entry).__name__}, not an object"
    return entry, ""


class _Cached(BaseModel):
    """A cached answer, as ``LLMClient.chat`` stores it."""

    model_config = ConfigDict(extra="forbid")

    content: str
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None


@dataclass
class Usage:
    """Running totals over the results returned, replayed ones included (``cached`` says how many of ``requests``
    were not sent): the totals describe the output, so a resumed stage reports what an uninterrupted one would."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def add(self, result: ChatResult) -> None:
        self.requests += 1
        self.cached += result.cached
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.latency_s += result.latency_s


class LLMRequestError(RnerError, RuntimeError):
    """A request that failed for good (after the SDK's retries); the message names the endpoint, model and cause."""


class MissingKeyError(RnerError, ValueError):
    """An endpoint whose API key is not at hand: its ``api_key_env`` variable is unset, or the key was masked."""


MASKED = "**********"
"""What pydantic writes for a ``SecretStr`` when a config is serialized (a job's ``--config-json``)."""


def endpoint_api_key(endpoint: Endpoint) -> str:
    """The key to send to ``endpoint``: from the variable its ``api_key_env`` names (read now, never stored), its
    in-process ``api_key``, or none ("EMPTY", what the OpenAI SDK needs for a server without a key)."""
    url = redact_url(endpoint.base_url)
    if endpoint.api_key_env is not None:
        key = os.environ.get(endpoint.api_key_env, "")
        if not key:
            raise MissingKeyError(
                f"the endpoint {url} ({endpoint.model}) takes its API key from ${endpoint.api_key_env}, "
                "which is not set here: set it (Kubernetes jobs: a key of the backend's env_secret; docker jobs: name "
                "it in forward_env), or set api_key_env: null for a server without a key"
            )
        return key
    if endpoint.api_key is None:
        return "EMPTY"
    key = endpoint.api_key.get_secret_value()
    if key == MASKED:
        raise MissingKeyError(
            f"the endpoint {url} ({endpoint.model}) has an api_key that was masked when its config was "
            "written out: give the key through an environment variable instead (api_key_env)"
        )
    return key


# The wire format, read leniently: only what a result needs, so any OpenAI-compatible server's extras pass.
class _Message(BaseModel):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """vLLM: the stop string (or token id) that ended the completion."""
    matched_stop: int | str | None = None
    """SGLang's name for it."""


class _TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(BaseModel):
    choices: list[_Choice] = Field(min_length=1)
    usage: _TokenUsage = _TokenUsage()


class LLMClient:
    """Chat requests to one endpoint, at most ``concurrency`` at a time, through an optional cache."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        cache: RequestCache | None = None,
    ) -> None:
        install_log_redaction()  # the HTTP client logs each request's URL, the SDK each retry
        self.endpoint = endpoint
        self.cache = cache
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.usage = Usage()
        self._slots = asyncio.Semaphore(concurrency)
        # The pool must fit every request the semaphore lets through, or requests would wait for a connection
        # inside their own timeout.
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint_api_key(endpoint),
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )

    async def chat(
        self, messages: list[Message], sampling: SamplingParams, *, extra: Mapping[str, Any] | None = None
    ) -> ChatResult:
        """One chat completion: replayed from the cache when finished before, else sent (and then cached).

        ``extra``: more request fields, sent as they are (vLLM's ``stop``, ``continue_final_message``, ...)."""
        key = request_key(self.endpoint.model, messages, sampling, extra)
        entry = await asyncio.to_thread(self.cache.get, key) if self.cache is not None else None
        if entry is not None:
            try:
                result = ChatResult(key=key, cached=True, **_Cached.model_validate(entry).model_dump())
            except ValidationError as e:  # not an answer this client stored: ask again (and replace it)
                await asyncio.to_thread(self.cache.discard, key, f"not a cached answer: {describe(e)}")  # type: ignore[union-attr]
                entry = None
        if entry is None:
            async with self._slots:
                result = await self._send(key, messages, sampling, extra or {})
            if self.cache is not None:
                stored = {name: value for name, value in asdict(result).items() if name not in NOT_CACHED}
                await asyncio.to_thread(self.cache.put, key, stored)
        self.usage.add(result)
        return result

    async def _send(
        self, key: str, messages: list[Message], sampling: SamplingParams, extra: Mapping[str, Any]
    ) -> ChatResult:
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            params["seed"] = sampling.seed
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        start = time.perf_counter()
        try:
            # The raw response, so that we read the body ourselves: the SDK would hand back a non-JSON body as a
            # string and a JSON body without choices as a half-built object.
            raw = await self._client.chat.completions.with_raw_response.create(
                model=self.endpoint.model,
                messages=messages,
                extra_body=dict(extra) or None,
                **params,
            )
        except openai.APIError as e:
            raise self._error(self._cause(e)) from e
        latency = time.perf_counter() - start
        body = raw.http_response.content
        try:
            completion = _Completion.model_validate_json(body)
        except ValidationError as e:
            raise self._error(f"the answer is not a chat completion ({describe(e)}): {_snippet(body)}") from None
        choice = completion.choices[0]
        # A server leaves the stop string out of the text; put it back, so an answer cut at its closing is whole.
        matched = choice.stop_reason if choice.stop_reason is not None else choice.matched_stop
        stopped = choice.finish_reason == "stop" and isinstance(matched, str) and matched in sampling.stop
        ending = str(matched) if stopped else ""
        return ChatResult(
            key=key,
            content=(choice.message.content or "") + ending,
            # An empty reasoning field means none came separately; older vLLM versions call it reasoning_content.
            reasoning=choice.message.reasoning or choice.message.reasoning_content or None,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            latency_s=latency,
            finish_reason=choice.finish_reason,
        )

    def _cause(self, error: openai.APIError) -> str:
        if isinstance(error, openai.APIStatusError):
            return f"HTTP {error.status_code}: {_snippet(error.response.content)}"
        if isinstance(error, openai.APITimeoutError):
            return "timed out"
        if isinstance(error, openai.APIConnectionError):
            return f"connection failed: {error.__cause__ or error}"
        return str(error)

    def _error(self, cause: str) -> LLMRequestError:
        return LLMRequestError(
            redact_url(
                f"chat request to {self.endpoint.base_url} (model {self.endpoint.model!r}) failed: {cause} "
                f"[max_retries={self.max_retries}, timeout {self.timeout_s:g} s per attempt]"
            )
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")
