"""In-process generation with transformers, for small local runs without an LLM server.

Prompts are chat messages rendered by the model's own chat template; batches are left-padded;
temperature 0 is greedy decoding, anything else samples with the given seed. ``sampling.stop`` ends a
completion at the first of its strings, kept in the text, as an OpenAI-compatible server does
(``StopAtStrings``); its finish reason is then "stop", as at the model's end-of-sequence token.

Usage::

    gen = LocalGenerator("default", batch_size=8)
    outs = gen.complete([ner_messages(text, labels)], SamplingParams(max_tokens=256))
    outs[0].text, outs[0].completion_tokens
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from schemas import SamplingParams
from tasks.models import resolve_model
from tasks.prompts import Message, render_prompt
from tasks.settings import Settings


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_s: float
    reasoning_tokens: int | None = None
    """Of ``completion_tokens``, the thinking's, for a budget-forced completion (``tasks.budget``)."""


class StopAtStrings(StoppingCriteria):
    """Ends each row of a batch once its new text holds one of ``stops``; ``lengths`` says after how many new
    tokens each stopped row ended. Checked every step, so only the last few tokens can hold a new match."""

    def __init__(self, tokenizer: Any, prompt_length: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stops = tuple(stops)
        self.window = max(len(s) for s in stops) + 1  # every token decodes to at least one character
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :]
        for row, tokens in enumerate(new):
            if row not in self.lengths:
                tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
                if any(stop in tail for stop in self.stops):
                    self.lengths[row] = len(tokens)
        done = [row in self.lengths for row in range(len(new))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the end of the first of ``stops`` in it (all of it if none is)."""
    ends = [i + len(stop) for stop in stops if (i := text.find(stop)) >= 0]
    return text[: min(ends)] if ends else text


class LocalGenerator:
    def __init__(
        self, model: str, *, batch_size: int = 8, device: str = "auto", settings: Settings | None = None
    ) -> None:
        self.path = resolve_model(model, settings)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        # The model's end-of-sequence tokens are its generation config's (a converted GGUF tokenizer can name
        # another token as eos); finished rows are padded with the pad token.
        eos = self.model.generation_config.eos_token_id
        ends = {self.tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])
        self.end_ids = torch.tensor(sorted(ends | {self.tokenizer.pad_token_id}), device=self.device)

    def complete(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingParams,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Completion]:
        """One completion per conversation, in order; ``on_batch(n)`` after each batch of n."""
        prompts = [render_prompt(self.tokenizer, c) for c in conversations]
        results: list[Completion] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = prompts[i : i + self.batch_size]
            results.extend(self._generate(batch, sampling))
            if on_batch:
                on_batch(len(batch))
        return results

    @torch.inference_mode()
    def _generate(self, prompts: list[str], sampling: SamplingParams) -> list[Completion]:
        start = time.perf_counter()
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        greedy = sampling.temperature == 0
        if not greedy and sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        stopper = StopAtStrings(self.tokenizer, enc["input_ids"].shape[1], sampling.stop) if sampling.stop else None
        out = self.model.generate(
            **enc,
            max_new_tokens=sampling.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
        )
        new = out[:, enc["input_ids"].shape[1] :]
        latency = (time.perf_counter() - start) / len(prompts)
        completions = []
        stopped = stopper.lengths if stopper else {}
        for i, (row, mask) in enumerate(zip(new, enc["attention_mask"], strict=True)):
            ended = torch.isin(row, self.end_ids).nonzero()
            if i in stopped:
                length = stopped[i]
            elif len(ended):
                length = int(ended[0]) + 1
            else:
                length = len(row)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            completions.append(
                Completion(
                    text=cut_at_stop(text, sampling.stop),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=length,
                    finish_reason="stop" if i in stopped or len(ended) else "length",
                    latency_s=latency,
                )
            )
        return completions
