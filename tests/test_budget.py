"""Budget forcing (tasks/budget.py) on the real vLLM server, and reasoning-budget validation.

The embedded SmolLM2-135M rarely closes a think block or writes valid JSON, so the real-server tests assert what
is deterministic under greedy decoding: where the reasoning was cut (counted with the model's own tokenizer),
that the answer request continued the very text (its prompt is the chat template's rendering of the open
assistant turn, and a raw completion of that rendering gives the same answer), and the token counts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fault_server import FaultServer, ok, sequence
from pydantic import ValidationError

from schemas import Endpoint, EvalConfig, Mention, SamplingParams, TransformersRunner
from tasks import evaluate
from tasks.budget import THINK_CLOSE, BudgetError, Forced, budget_chat, budget_complete, check_budget, forced_prefix
from tasks.extract import Extractor, load_tokenizer, token_counter
from tasks.llm import LLMClient, MemoryCache
from tasks.parse import parse_completion
from tasks.prompts import Message, ner_messages, render_prompt
from tasks.store import Store

TEXT = "Ada Lovelace met Charles Babbage in London in 1833 and wrote about the Analytical Engine."
MESSAGES = ner_messages(TEXT, ["person", "location"])
ANSWER = SamplingParams(temperature=0.0, max_tokens=24)


def forced(endpoint: Endpoint, budget: int, cache: MemoryCache | None = None) -> Forced:
    async def go() -> Forced:
        async with LLMClient(endpoint, concurrency=1, cache=cache) as client:
            return await budget_chat(client, MESSAGES, ANSWER, budget)

    return asyncio.run(go())


def continued_prompt(tokenizer: Any, messages: list[Message]) -> list[int]:
    """The token ids of the open assistant turn, as the chat template renders it for continuation."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def raw_completion(endpoint: Endpoint, prompt: list[int], max_tokens: int) -> str:
    body = {"model": endpoint.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    answer = httpx.post(f"{endpoint.base_url}/completions", json=body, timeout=300).raise_for_status().json()
    return answer["choices"][0]["text"]


@pytest.mark.parametrize("budget", [-1, -100])
def test_a_negative_budget_is_refused_naming_the_field(budget: int) -> None:
    with pytest.raises(BudgetError, match=rf"^reasoning_budget: must be 0 or more tokens .*got {budget}$"):
        check_budget(budget, with_cot=True)


def test_a_budget_for_an_answer_only_model_is_refused() -> None:
    check_budget(None, with_cot=False)
    with pytest.raises(BudgetError, match=r"^reasoning_budget: with_cot is false"):
        check_budget(32, with_cot=False)


def test_budget_options_are_validated_where_they_are_given() -> None:
    with pytest.raises(ValidationError, match="reasoning_budget"):
        EvalConfig(datasets=["demo:test"], model={"kind": "vllm"}, reasoning_budget=-1)
    with pytest.raises(ValidationError, match="reasoning_budget: with_cot is false"):
        EvalConfig(datasets=["demo:test"], model={"kind": "vllm"}, reasoning_budget=8, with_cot=False)
    assert EvalConfig(datasets=["demo:test"], model={"kind": "vllm"}, reasoning_budget=0).reasoning_budget == 0
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(BudgetError, match=r"^reasoning_budget: must be 0 or more"):
        Extractor(endpoint, reasoning_budget=-3)
    with pytest.raises(BudgetError, match=r"^reasoning_budget: with_cot is false"):
        Extractor(endpoint, reasoning_budget=8, with_cot=False)


def scripted_thinker(prompt: str) -> str:
    """A model that closes its think block early (the server stops at </think>, leaving it out) and, asked to
    continue the closed block, answers."""
    if prompt.startswith("<think>\n"):
        return '{"entities": {"person": ["Ada Lovelace"], "location": []}}'
    return "<think>\nAda Lovelace is a person."


def test_a_think_block_the_model_closes_itself_is_kept_whole() -> None:
    # The embedded model never closes a think block within a small budget: a scripted one does.
    with FaultServer(sequence(ok(answer=scripted_thinker))) as server:
        cache = MemoryCache()
        first = forced(server.endpoint, 16, cache)
        assert not first.forced and first.reasoning == "Ada Lovelace is a person."
        assert parse_completion(first.text).mentions == (Mention(text="Ada Lovelace", label="person"),)
        thinking = server.bodies[MESSAGES[0]["content"]]
        assert (thinking["max_tokens"], thinking["stop"]) == (16, [THINK_CLOSE])
        answering = server.bodies[forced_prefix(first.reasoning)]
        assert answering["messages"] == [*MESSAGES, {"role": "assistant", "content": forced_prefix(first.reasoning)}]
        assert answering["continue_final_message"] is True and answering["add_generation_prompt"] is False
        assert answering["max_tokens"] == ANSWER.max_tokens and "stop" not in answering
        # A resumed run replays both requests from the cache and sends nothing.
        again = forced(server.endpoint, 16, cache)
        assert server.requests == 2 and again.result().cached and again.text == first.text
        assert first.result().reasoning_tokens == first.reasoning_tokens == first.thinking.completion_tokens  # type: ignore[union-attr]


def test_the_forced_turn_is_spelled_as_the_training_target() -> None:
    assert forced_prefix("  weighing spans \n") == "<think>\nweighing spans\n</think>\n\n"
    assert forced_prefix("") == "<think>\n\n</think>\n\n"


@pytest.mark.slow
def test_budget_forcing_on_the_real_server(vllm_endpoint: Endpoint, default_model: Path) -> None:
    tokenizer = load_tokenizer(str(default_model))
    count = token_counter(tokenizer)
    budget = 24
    cut = forced(vllm_endpoint, budget)
    assert cut.thinking is not None and cut.forced  # SmolLM2 does not close a think block within 24 tokens
    assert cut.reasoning_tokens == cut.thinking.completion_tokens == budget
    # The thinking request's text is the budget, give or take a token of re-tokenization; the reasoning kept is
    # that text after the model's <think>.
    assert abs(count([cut.thinking.content])[0] - budget) <= 1
    assert cut.reasoning and THINK_CLOSE not in cut.reasoning
    assert count([cut.reasoning])[0] <= budget
    # The answer request continued the assistant turn: its prompt is the template's open rendering of it, and
    # the model's raw continuation of exactly those tokens is the answer.
    turn: Message = {"role": "assistant", "content": forced_prefix(cut.reasoning)}
    prompt = continued_prompt(tokenizer, [*MESSAGES, turn])
    assert tokenizer.decode(prompt).endswith(f"{cut.reasoning}\n</think>\n\n")
    assert cut.answering.prompt_tokens == len(prompt)
    assert cut.answer == raw_completion(vllm_endpoint, prompt, ANSWER.max_tokens)
    assert 0 < cut.answer_tokens == cut.answering.completion_tokens <= ANSWER.max_tokens
    # What the parser reads: the think block closed, the reasoning as kept.
    assert cut.text == forced_prefix(cut.reasoning) + cut.answer
    assert parse_completion(cut.text).reasoning == cut.reasoning
    result = cut.result()
    assert result.text == cut.text and result.completion_tokens == budget + cut.answer_tokens
    assert result.prompt_tokens == cut.thinking.prompt_tokens < cut.answering.prompt_tokens

    # Budget 0: one request, the answer right after an empty think block.
    direct = forced(vllm_endpoint, 0)
    assert direct.thinking is None and not direct.forced and direct.reasoning_tokens == 0
    assert direct.text.startswith("<think>\n\n</think>\n\n") and not parse_completion(direct.text).reasoning
    empty: Message = {"role": "assistant", "content": forced_prefix("")}
    prompt = continued_prompt(tokenizer, [*MESSAGES, empty])
    assert direct.answering.prompt_tokens == len(prompt)
    assert direct.answer == raw_completion(vllm_endpoint, prompt, ANSWER.max_tokens)


@pytest.mark.slow
def test_extract_and_evaluate_with_a_budget_on_the_real_server(
    vllm_endpoint: Endpoint, default_model: Path, tmp_path: Path
) -> None:
    budget = 16
    count = token_counter(load_tokenizer(str(default_model)))
    extractor = Extractor(
        vllm_endpoint, tokenizer=str(default_model), context_tokens=640, max_tokens=24, reasoning_budget=budget
    )
    [found] = extractor.extract([TEXT], ["person", "location"])
    assert len(found.reasoning) == 1 and count(list(found.reasoning))[0] <= budget
    assert all(TEXT[e.start : e.end] == e.text for e in found.entities)

    store = Store(tmp_path / "store")
    config = EvalConfig.preset(
        "smoke", model=vllm_endpoint.model_dump(mode="json"), sampling={"max_tokens": 24}, reasoning_budget=budget
    )
    published = evaluate.run(config, store)
    predictions = list(store.records(published.manifest))
    thinking = []
    for p in predictions:
        generation = p.generation  # type: ignore[attr-defined]
        assert p.completion.startswith("<think>\n") and f"\n{THINK_CLOSE}\n\n" in p.completion  # type: ignore[attr-defined]
        assert 0 < generation.reasoning_tokens <= budget < generation.completion_tokens <= budget + 24
        thinking.append(generation.reasoning_tokens)
    stats = published.manifest.stats
    assert stats["reasoning_budget"] == budget and stats["reasoning_tokens_mean"] == sum(thinking) / len(thinking)
    answers = [p.generation.completion_tokens - p.generation.reasoning_tokens for p in predictions]  # type: ignore[attr-defined]
    assert stats["answer_tokens_mean"] == sum(answers) / len(answers)
    [report] = published.manifest.files_with("report")
    text = store.read_file(published.manifest.address, report).decode()
    assert f"reasoning budget: {budget} tokens" in text and "| answer tok/ex |" in text
    # Another budget is another evaluation; the same one is found.
    assert evaluate.run(config, store) == published
    unlimited = EvalConfig.preset("smoke", model=vllm_endpoint.model_dump(mode="json"), sampling={"max_tokens": 24})
    assert evaluate.run(unlimited, store).manifest.address != published.manifest.address


@pytest.mark.slow
def test_budget_forcing_in_process(default_model: Path, tmp_path: Path) -> None:
    from tasks.generate import LocalGenerator

    generator = LocalGenerator(str(default_model), batch_size=2, device="cpu")
    count = token_counter(generator.tokenizer)
    budget, answer = 8, SamplingParams(temperature=0.0, max_tokens=8)
    cut, direct = budget_complete(generator, [MESSAGES], answer, budget) + budget_complete(
        generator, [MESSAGES], answer, 0
    )
    assert cut.reasoning_tokens == budget and budget < cut.completion_tokens <= budget + answer.max_tokens
    reasoning = parse_completion(cut.text).reasoning or ""
    assert cut.text.startswith(forced_prefix(reasoning)) and count([reasoning])[0] <= budget
    # The answer step continued the open assistant turn: its prompt is the template's rendering of that turn.
    turn: Message = {"role": "assistant", "content": forced_prefix(reasoning)}
    assert render_prompt(generator.tokenizer, [*MESSAGES, turn]).endswith(f"{reasoning}\n</think>\n\n")
    assert direct.reasoning_tokens == 0 and direct.text.startswith("<think>\n\n</think>\n\n")

    store = Store(tmp_path / "store")
    runner = TransformersRunner(model=str(default_model), batch_size=4, device="cpu")
    config = EvalConfig.preset(
        "smoke", model=runner.model_dump(), sampling={"max_tokens": 8}, max_examples=1, reasoning_budget=budget
    )
    published = evaluate.run(config, store)
    for p in store.records(published.manifest):
        assert p.generation.reasoning_tokens == budget < p.generation.completion_tokens  # type: ignore[attr-defined]
    assert published.manifest.stats["reasoning_tokens_mean"] == budget
