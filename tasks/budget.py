"""Budget forcing: the model thinks for at most ``budget`` tokens, then answers (s1, Muennighoff et al. 2025).

Usage::

    async with LLMClient(endpoint) as client:
        forced = await budget_chat(client, ner_messages(text, labels), SamplingParams(max_tokens=512), budget=64)
    forced.text                 # "<think>\\n…\\n</think>\\n\\n{…}": what the parser reads, as without a budget
    forced.reasoning_tokens     # thinking tokens generated (at most 64)
    forced.answer_tokens        # answer tokens generated (at most 512)
    forced.forced               # True: the budget ran out and the think block was closed for the model
    forced.result()             # the same as one ChatResult, with reasoning_tokens
    await ask(client, messages, sampling, budget)   # budget None: one plain request; else budget_chat(…).result()
    budget_complete(LocalGenerator("default"), conversations, sampling, 64)   # in process: Completions

Two requests to any OpenAI-compatible server that can continue an assistant turn (vLLM's chat completions):

1. Thinking: the conversation as it is, ``max_tokens=budget``, ``</think>`` the only stop string. The model
   opens its think block itself, so the budget counts everything it writes before the answer (the ``<think>``
   tag included). The reasoning is what follows ``<think>`` (all of it if the model wrote no tag, as when a
   chat template opens the block in the prompt), up to ``</think>`` or where the budget ran out.
2. Answer: the conversation plus an assistant turn ``<think>\\n{reasoning}\\n</think>\\n\\n``, sent with
   ``continue_final_message: true`` and ``add_generation_prompt: false``, so the server's chat template renders
   it and the model continues that same turn; ``max_tokens`` is the sampling's. That turn is spelled as
   ``prompts.assistant_target`` spells it, which is also what Qwen3's template re-renders a think block to, so
   the template keeps it verbatim.

Budget 0 sends only the second request, with an empty think block. Both requests go through the client, so
its cache replays them on a resumed run (each under its own key). Token counts are the server's.

In process (``budget_complete``, a ``tasks.generate.LocalGenerator``): the same two steps, batched; the answer
step renders the open assistant turn with the tokenizer's chat template (``prompts.render_prompt`` continues a
conversation that ends with an assistant turn).

Only with the chain-of-thought instruction: a model asked for the answer alone (``with_cot=False``) has no
think block to budget (``check_budget``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas import SamplingParams
from tasks.errors import RnerError
from tasks.llm import ChatResult, LLMClient
from tasks.prompts import Message

if TYPE_CHECKING:
    from tasks.generate import Completion, LocalGenerator

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FORCING_TOKENS = 16
"""Tokens the answer request's prompt may have beyond the thinking generated: the tags around the kept
reasoning, and re-tokenization where the reasoning was cut."""
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM's request fields to continue the last (assistant) message instead of starting a new turn."""


class BudgetError(RnerError, ValueError):
    """A reasoning budget that cannot apply: negative, or for a model asked to answer without reasoning."""


def check_budget(budget: int | None, *, with_cot: bool) -> None:
    """Refuse a ``reasoning_budget`` that cannot apply, naming the field. ``None`` (no budget) always passes."""
    if budget is None:
        return
    if budget < 0:
        raise BudgetError(f"reasoning_budget: must be 0 or more tokens (None for no budget), got {budget}")
    if not with_cot:
        raise BudgetError("reasoning_budget: with_cot is false (the model answers without reasoning)")


def forced_prefix(reasoning: str) -> str:
    """The assistant turn the answer continues: the reasoning, closed."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n"


def kept_reasoning(thinking: str) -> str:
    """The reasoning in what the thinking request produced: after ``<think>`` when the model opened one, before
    the ``</think>`` that stopped it."""
    return thinking.split(THINK_OPEN, 1)[-1].split(THINK_CLOSE, 1)[0]


@dataclass(frozen=True)
class Forced:
    """One budget-forced completion: the reasoning as kept, the answer, and what each cost."""

    reasoning: str
    answer: str
    reasoning_tokens: int
    """Tokens the thinking request generated (0 for budget 0)."""
    answer_tokens: int
    forced: bool
    """The budget ran out before the model closed its think block."""
    thinking: ChatResult | None
    """The thinking request's result (``None`` for budget 0)."""
    answering: ChatResult

    @property
    def text(self) -> str:
        return forced_prefix(self.reasoning) + self.answer

    def result(self) -> ChatResult:
        """Both requests as one result: the answer request's key, the first request's prompt, all tokens."""
        first = self.thinking or self.answering
        return ChatResult(
            key=self.answering.key,
            content=self.text,
            reasoning=None,
            prompt_tokens=first.prompt_tokens,
            completion_tokens=self.reasoning_tokens + self.answer_tokens,
            latency_s=self.answering.latency_s + (self.thinking.latency_s if self.thinking else 0.0),
            finish_reason=self.answering.finish_reason,
            cached=self.answering.cached and (self.thinking is None or self.thinking.cached),
            reasoning_tokens=self.reasoning_tokens,
        )


async def ask(client: LLMClient, messages: list[Message], sampling: SamplingParams, budget: int | None) -> ChatResult:
    """One request as usual without a budget (``None``), else ``budget_chat``'s two as one result."""
    if budget is None:
        return await client.chat(messages, sampling)
    return (await budget_chat(client, messages, sampling, budget)).result()


async def budget_chat(client: LLMClient, messages: list[Message], sampling: SamplingParams, budget: int) -> Forced:
    """Think for at most ``budget`` tokens, then answer in at most ``sampling.max_tokens`` (module docs)."""
    check_budget(budget, with_cot=True)
    thinking = None
    reasoning = ""
    if budget > 0:
        # Only </think> stops the thinking: the answer's stop strings could occur in the reasoning.
        limited = sampling.model_copy(update={"max_tokens": budget, "stop": (THINK_CLOSE,)})
        thinking = await client.chat(messages, limited)
        # A server with a reasoning parser returns an unclosed think block as reasoning, the tag removed.
        reasoning = kept_reasoning(thinking.content if thinking.reasoning is None else thinking.reasoning)
    turn: Message = {"role": "assistant", "content": forced_prefix(reasoning)}
    answering = await client.chat([*messages, turn], sampling, extra=CONTINUE)
    return Forced(
        reasoning=reasoning.strip(),
        # A reasoning parser may take a continued answer for reasoning (no think tag in what it generated).
        answer=(answering.reasoning or "") + answering.content,
        reasoning_tokens=thinking.completion_tokens if thinking else 0,
        answer_tokens=answering.completion_tokens,
        forced=thinking is not None and thinking.finish_reason == "length",
        thinking=thinking,
        answering=answering,
    )


def budget_complete(
    generator: LocalGenerator,
    conversations: Sequence[list[Message]],
    sampling: SamplingParams,
    budget: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[Completion]:
    """``budget_chat`` in process: every conversation thinks (batched), then every one answers (batched, with
    ``on_batch`` after each batch). Each completion is the whole text, its tokens both steps'."""
    from tasks.generate import Completion

    check_budget(budget, with_cot=True)
    limited = sampling.model_copy(update={"max_tokens": budget, "stop": (THINK_CLOSE,)})
    thoughts = generator.complete(conversations, limited) if budget > 0 else [None] * len(conversations)
    prefixes = [forced_prefix(kept_reasoning(t.text) if t else "") for t in thoughts]
    continued = [[*c, {"role": "assistant", "content": p}] for c, p in zip(conversations, prefixes, strict=True)]
    answers = generator.complete(continued, sampling, on_batch=on_batch)
    completions = []
    for thought, prefix, answer in zip(thoughts, prefixes, answers, strict=True):
        thinking = thought.completion_tokens if thought else 0
        completions.append(
            Completion(
                text=prefix + answer.text,
                prompt_tokens=thought.prompt_tokens if thought else answer.prompt_tokens,
                completion_tokens=thinking + answer.completion_tokens,
                finish_reason=answer.finish_reason,
                latency_s=answer.latency_s + (thought.latency_s if thought else 0.0),
                reasoning_tokens=thinking,
            )
        )
    return completions
