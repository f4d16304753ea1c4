"""The LLM client: retries, errors, concurrency and caching against a fault-injecting fake server (for faults a
real server will not produce on demand), the durable cache on a local directory and on real S3, and one round trip
through a real vLLM server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from fault_server import Behaviour, FaultServer, drop, garbage, no_choices, ok, sequence, stall, status

from schemas import Endpoint, SamplingParams
from tasks.llm import ChatResult, LLMClient, LLMRequestError, MemoryCache, Message, StoreCache, Usage, request_key
from tasks.store import Store

SAMPLING = SamplingParams(max_tokens=32)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK backs off 0.5 s doubling to 8 s; the same retry logic with millisecond waits keeps these tests short.
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(openai._base_client, "MAX_RETRY_DELAY", 0.02)


def ask(prompt: str) -> list[Message]:
    return [{"role": "system", "content": "You echo."}, {"role": "user", "content": prompt}]


def chat_all(
    endpoint: Endpoint, prompts: Sequence[str], sampling: SamplingParams = SAMPLING, **client: Any
) -> tuple[list[ChatResult], Usage]:
    async def main() -> tuple[list[ChatResult], Usage]:
        async with LLMClient(endpoint, **client) as llm:
            results = await asyncio.gather(*(llm.chat(ask(p), sampling) for p in prompts))
        return results, llm.usage

    return asyncio.run(main())


def nowhere() -> str:
    """A base URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def chat_one(endpoint: Endpoint, prompt: str, **client: Any) -> ChatResult:
    return chat_all(endpoint, [prompt], **client)[0][0]


# -- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [status(500), status(503), status(429), drop(), stall(10)],
    ids=["500", "503", "429", "drop", "stall"],
)
def test_transient_faults_are_retried(fault: Behaviour) -> None:
    with FaultServer(sequence(fault, fault, ok())) as server:
        result = chat_one(server.endpoint, "p", max_retries=3, timeout_s=0.5)
    assert result.content == "echo: p"
    assert not result.cached
    assert server.attempts["p"] == 3


def test_retry_after_is_honoured() -> None:
    with FaultServer(sequence(status(429, retry_after="1"), ok())) as server:
        start = time.perf_counter()
        result = chat_one(server.endpoint, "p", max_retries=1)
        elapsed = time.perf_counter() - start
    assert result.content == "echo: p"
    assert server.attempts["p"] == 2
    assert elapsed >= 0.9  # the backoff is patched to milliseconds: only the header explains the wait


def test_permanent_failure_gives_up_after_max_retries() -> None:
    cache = MemoryCache()
    with FaultServer(sequence(status(500))) as server:
        with pytest.raises(LLMRequestError, match=r"127\.0\.0\.1.*model 'fake'.*HTTP 500.*injected fault") as err:
            chat_one(server.endpoint, "p", max_retries=2, cache=cache)
        assert server.attempts["p"] == 3
    assert "max_retries=2" in str(err.value)
    assert cache.entries == {}


def test_client_errors_are_not_retried() -> None:
    with FaultServer(sequence(status(400))) as server:
        with pytest.raises(LLMRequestError, match="HTTP 400"):
            chat_one(server.endpoint, "p", max_retries=3)
        assert server.attempts["p"] == 1


def test_stalled_server_times_out() -> None:
    with FaultServer(sequence(stall(10))) as server:
        with pytest.raises(LLMRequestError, match=r"timed out \[max_retries=1, timeout 0\.3 s per attempt\]"):
            chat_one(server.endpoint, "p", max_retries=1, timeout_s=0.3)
        assert server.attempts["p"] == 2


def test_unreachable_server() -> None:
    endpoint = Endpoint(base_url=nowhere(), model="fake")
    with pytest.raises(LLMRequestError, match="connection failed"):
        chat_one(endpoint, "p", max_retries=1)


@pytest.mark.parametrize("fault", [garbage(), no_choices()], ids=["garbage", "no_choices"])
def test_an_answer_that_is_not_a_chat_completion_fails(fault: Behaviour) -> None:
    cache = MemoryCache()
    with FaultServer(sequence(fault)) as server:
        with pytest.raises(LLMRequestError, match="not a chat completion"):
            chat_one(server.endpoint, "p", cache=cache)
        assert server.attempts["p"] == 1  # a 200 is not retried
    assert cache.entries == {}


# -- concurrency, answers, accounting ------------------------------------------------------------------------------


def test_concurrency_is_bounded() -> None:
    prompts = [f"prompt {i}" for i in range(20)]
    with FaultServer(sequence(ok(delay=0.05))) as server:
        results, _ = chat_all(server.endpoint, prompts, concurrency=3)
    assert [r.content for r in results] == [f"echo: {p}" for p in prompts]
    assert server.max_in_flight == 3


def test_concurrent_answers_map_back_to_their_prompts() -> None:
    prompts = [f"passage {i}" for i in range(50)]

    # Uneven delays and a fault for every third prompt, so answers arrive out of order.
    def script(prompt: str, attempt: int) -> Behaviour:
        i = int(prompt.split()[-1])
        return status(500) if i % 3 == 0 and attempt == 1 else ok(delay=0.003 * (i % 7))

    with FaultServer(script) as server:
        results, usage = chat_all(server.endpoint, prompts, concurrency=16)
    assert [r.content for r in results] == [f"echo: {p}" for p in prompts]
    assert [r.key for r in results] == [request_key("fake", ask(p), SAMPLING) for p in prompts]
    assert server.requests == 50 + 17
    assert usage.requests == 50


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_separate_reasoning_is_put_inline(field: str) -> None:
    with FaultServer(sequence(ok(reasoning=field))) as server:
        result = chat_one(server.endpoint, "p")
    assert result.content == "echo: p"
    assert result.reasoning == "thinking about p"
    assert result.text == "<think>\nthinking about p\n</think>\n\necho: p"


def test_without_separate_reasoning_text_is_the_content() -> None:
    with FaultServer(sequence(ok())) as server:
        result = chat_one(server.endpoint, "<think>hm</think> p")
    assert result.reasoning is None
    assert result.text == result.content == "echo: <think>hm</think> p"


def test_request_carries_the_sampling_parameters() -> None:
    with FaultServer(sequence(ok())) as server:
        chat_all(server.endpoint, ["a"], SamplingParams(temperature=0.6, top_p=0.95, max_tokens=7))
        chat_all(server.endpoint, ["b"], SamplingParams(seed=11))
    a, b = server.bodies["a"], server.bodies["b"]
    assert a["model"] == "fake"
    assert a["messages"] == ask("a")
    assert (a["temperature"], a["top_p"], a["max_tokens"]) == (0.6, 0.95, 7)
    assert "seed" not in a
    assert b["seed"] == 11


def test_usage_and_generation() -> None:
    cache = MemoryCache()

    async def main(endpoint: Endpoint) -> tuple[list[ChatResult], Usage]:
        async with LLMClient(endpoint, cache=cache) as llm:
            first = await asyncio.gather(*(llm.chat(ask(p), SAMPLING) for p in ["a b", "c", "d e f"]))
            again = await asyncio.gather(*(llm.chat(ask(p), SAMPLING) for p in ["a b", "c", "new"]))
        return first + again, llm.usage

    with FaultServer(sequence(ok())) as server:
        results, usage = asyncio.run(main(server.endpoint))
    assert server.requests == 4
    assert [r.cached for r in results] == [False, False, False, True, True, False]
    assert results[3] == ChatResult(**{**results[0].__dict__, "cached": True})
    assert usage.requests == 6
    assert usage.cached == 2
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in results) > 0
    assert usage.completion_tokens == sum(r.completion_tokens for r in results) > 0
    assert usage.latency_s == pytest.approx(sum(r.latency_s for r in results))
    generation = results[0].generation("fake", SAMPLING)
    assert (generation.model, generation.sampling, generation.request_key) == ("fake", SAMPLING, results[0].key)
    assert (generation.prompt_tokens, generation.completion_tokens) == (4, 3)  # words, as the fake counts them
    assert generation.finish_reason == "stop"


# -- the durable cache ---------------------------------------------------------------------------------------------


def test_store_cache_replays_without_sending(store: Store) -> None:
    prompts = [f"q{i}" for i in range(5)]
    prefix = "annotate/abc/_cache"
    with FaultServer(sequence(ok(reasoning="reasoning"))) as server:
        first, _ = chat_all(server.endpoint, prompts, cache=StoreCache(store, prefix))
        assert server.requests == 5
        replayed, usage = chat_all(server.endpoint, prompts, cache=StoreCache(store, prefix))
        assert server.requests == 5
    assert all(r.cached for r in replayed)
    assert [r.text for r in replayed] == [r.text for r in first]
    assert [(r.prompt_tokens, r.completion_tokens, r.latency_s) for r in replayed] == [
        (r.prompt_tokens, r.completion_tokens, r.latency_s) for r in first
    ]
    assert usage.cached == 5
    assert store.list(prefix) == sorted(f"{prefix}/{r.key[:2]}/{r.key}.json" for r in first)


def test_store_cache_first_write_wins(store: Store) -> None:
    cache = StoreCache(store, "/stage/x/_cache/")
    assert cache.get("ab12") is None
    cache.put("ab12", {"content": "first"})
    cache.put("ab12", {"content": "second"})  # a concurrent duplicate: no error, the first answer stays
    assert cache.get("ab12") == {"content": "first"}
    assert StoreCache(store, "stage/x/_cache").get("ab12") == {"content": "first"}
    assert store.list("stage/x/_cache") == ["stage/x/_cache/ab/ab12.json"]


def test_store_cache_sees_only_what_exists(store: Store) -> None:
    early = StoreCache(store, "c")
    StoreCache(store, "c").put("cd34", {"content": "x"})
    assert early.get("cd34") is None  # listed before it was written: at worst sent once more
    assert StoreCache(store, "c").get("cd34") == {"content": "x"}


# -- request keys --------------------------------------------------------------------------------------------------


def test_request_key_is_stable_across_key_order() -> None:
    forward = [{"role": "user", "content": "x"}]
    backward = [{"content": "x", "role": "user"}]
    assert request_key("m", forward, SAMPLING) == request_key("m", backward, SAMPLING)
    assert len(request_key("m", forward, SAMPLING)) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"messages": ask("other")},
        {"messages": [*ask("p"), {"role": "assistant", "content": ""}]},
        {"sampling": SAMPLING.model_copy(update={"temperature": 0.7})},
        {"sampling": SAMPLING.model_copy(update={"top_p": 0.9})},
        {"sampling": SAMPLING.model_copy(update={"max_tokens": 33})},
        {"sampling": SAMPLING.model_copy(update={"seed": 0})},
    ],
    ids=["model", "messages", "extra-message", "temperature", "top_p", "max_tokens", "seed"],
)
def test_request_key_changes_with_every_input(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"model": "m", "messages": ask("p"), "sampling": SAMPLING}
    assert request_key(**{**base, **change}) != request_key(**base)


# -- a real server -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_vllm_round_trip_and_replay(vllm_endpoint: Endpoint, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    sampling = SamplingParams(max_tokens=16, seed=0)
    [result], usage = chat_all(vllm_endpoint, ["Name a city."], sampling, cache=StoreCache(store, "c"))
    assert result.content.strip()
    assert result.prompt_tokens > 0
    assert result.completion_tokens > 0
    assert result.finish_reason in ("stop", "length")
    assert usage.cached == 0
    # The replay goes to an address where nothing listens: it can only succeed by sending nothing.
    offline = vllm_endpoint.model_copy(update={"base_url": nowhere()})
    [replayed], usage = chat_all(offline, ["Name a city."], sampling, cache=StoreCache(store, "c"), max_retries=0)
    assert replayed.cached
    assert replayed.text == result.text
    assert usage.cached == 1


# -- a damaged cache entry heals (issue #17) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [b'{"completion_tokens":3,"content":"echo: q', b"", b"[]", b'{"content": "no other field"}'],
    ids=["truncated", "empty", "not-an-object", "not-an-answer"],
)
def test_a_damaged_cache_entry_is_reported_once_and_sent_again(
    store: Store, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = "annotate/abc/_cache"
    key = request_key("fake", ask("q0"), SAMPLING)
    path = f"{prefix}/{key[:2]}/{key}.json"
    store.put(path, damage)  # a crash mid-write on a store without atomic writes (create-if-absent keeps it)
    with FaultServer(sequence(ok())) as server, caplog.at_level("WARNING"):
        [result], _ = chat_all(server.endpoint, ["q0"], cache=StoreCache(store, prefix))
        assert (server.requests, result.cached, result.text) == (1, False, "echo: q0")
        [again], _ = chat_all(server.endpoint, ["q0"], cache=StoreCache(store, prefix))
        assert (server.requests, again.cached, again.text) == (1, True, "echo: q0")  # healed: replayed
    warnings = [r.getMessage() for r in caplog.records if store.uri(path) in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_a_damaged_cache_entry_and_marker_never_block_the_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from schemas import AnnotateConfig, NERExample
    from tasks.llm_stage import map_requests

    store = Store(tmp_path / "store")
    out = store.output("cot/raw/annotate/x")
    items = [f"p{i}" for i in range(4)]
    config = AnnotateConfig.preset("smoke", shard_size=2, max_retries=0)

    def build(item: str, result: ChatResult) -> NERExample:
        return NERExample(id=item, text=result.text, labels=[], source="t")

    def stage(server: FaultServer) -> None:
        map_requests(out, items, config=config, endpoint=server.endpoint, messages=ask, build=build,
                     record_type=NERExample)  # fmt: skip

    with FaultServer(sequence(ok())) as server:
        stage(server)
        assert server.requests == 4
        key = request_key("fake", ask("p3"), config.sampling)
        store.put(f"{out.address}/_cache/{key[:2]}/{key}.json", b'{"content":"ec')
        store.put(f"{out.address}/_shards/00001.json", b'{"path":"data/000')
        with caplog.at_level("WARNING"):
            stage(server)  # shard 00001 again: p2 replayed, p3 sent again
        assert server.requests == 5
    assert len([r for r in caplog.records if "_shards/00001.json" in r.getMessage()]) == 1, caplog.text
    assert len([r for r in caplog.records if f"{key}.json" in r.getMessage()]) == 1, caplog.text
    assert [r.id for name in ("00000", "00001") for r in store.read_records(out.address, [out.committed_shards()[name]])
            ] == items  # fmt: skip
