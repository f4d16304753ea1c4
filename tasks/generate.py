"""In-process generation with transformers, for small local runs without an LLM server.

Prompts are chat messages rendered by the model's own chat template; batches are left-padded;
temperature 0 is greedy decoding, anything else samples with the given seed.

Usage::

    gen = LocalGenerator("default", batch_size=8)
    outs = gen.complete([ner_messages(text, labels)], SamplingParams(max_tokens=256))
    outs[0].text, outs[0].completion_tokens
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemas import SamplingParams
from tasks.models import resolve_model
from tasks.prompts import Message, render_prompt


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_s: float


class LocalGenerator:
    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto") -> None:
        self.path = resolve_model(model)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size

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
        out = self.model.generate(
            **enc,
            max_new_tokens=sampling.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        latency = (time.perf_counter() - start) / len(prompts)
        completions = []
        for row, mask in zip(new, enc["attention_mask"], strict=True):
            ended = (row == self.tokenizer.eos_token_id).nonzero()
            length = int(ended[0]) + 1 if len(ended) else len(row)
            completions.append(
                Completion(
                    text=self.tokenizer.decode(row[:length], skip_special_tokens=True),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=length,
                    finish_reason="stop" if len(ended) else "length",
                    latency_s=latency,
                )
            )
        return completions
