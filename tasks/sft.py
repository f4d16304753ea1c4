"""CT: supervised fine-tuning on a NER-CoT dataset with TRL's SFTTrainer.

Each record becomes a prompt-completion conversation: the user turn is the NER instruction
(``tasks.prompts.ner_messages``, the schema without the paper's catch-all labels), the assistant turn is
``<think>`` reasoning ``</think>`` and the JSON answer (``assistant_target``). The tokenizer's chat template
renders both, and the loss is on the completion only (TRL's completion-only loss for prompt-completion
data). ``with_cot: false`` trains on the answer alone, with an instruction that asks for the answer alone:
the paper's ablation, and the only choice for a ``ner`` dataset (gold labels without reasoning). ``prompt:
paper`` trains with the released instruction and the released answer format (``tasks.prompts``).

Sequences longer than ``max_seq_len`` tokens are dropped, cut, or refused (``too_long``), and counted in the
manifest. With ``padding_free`` or ``too_long: truncate_left`` (the released code's: the last tokens kept) the stage
tokenizes the conversations itself as SFTTrainer does (``tokenized_example``) and cuts them (``cut``); otherwise
the trainer cuts them, keeping their first tokens. GPU options the machine lacks are refused before anything
loads. The run writes checkpoints to the store and resumes from them (see ``tasks.train_stage``); the output is a
``model`` at ``models/ct/sft/<hash>``: the HF directory under ``model/`` (load it with
``store:<address>``), the training curve, and a manifest with base model, dataset digest, config, metrics.

Usage::

    python -m tasks.launch sft --config sft.yaml     # N processes x M nodes, as `parallel` says
    python -m tasks.sft --config sft.yaml            # this process only (parallel: 1 x 1)
    published = run(SFTConfig.preset("smoke", dataset="datasets/ner-cot/v1"), Store.from_settings())
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import trl
from datasets import Dataset
from transformers import AutoTokenizer

from schemas import CoTRecord, NERExample, SFTConfig
from schemas.configs import PromptStyle
from tasks.metrics import is_dropped_label, paper_labels
from tasks.prompts import Message, assistant_target, ner_messages
from tasks.settings import Settings
from tasks.stage_cli import stage_main
from tasks.store import Published, Store
from tasks.train_stage import Device, Progress, TrainError, TrainingRun, count_tokens, training_arguments

CURVES = ("loss", "mean_token_accuracy", "learning_rate", "grad_norm")

_log = logging.getLogger("rner.train")


def sft_example(
    record: CoTRecord | NERExample, *, with_cot: bool, prompt: PromptStyle = "rner", add_source: bool = False
) -> dict[str, list[Message]]:
    """The prompt-completion conversation SFTTrainer trains on: the instruction of ``prompt`` (asking for the
    reasoning only ``with_cot``; naming the record's dataset, when it has one, with ``add_source``) and the
    target in that instruction's format."""
    labels = paper_labels(record.labels)
    entities = [e for e in record.entities if not is_dropped_label(e.label)]
    reasoning = record.reasoning if with_cot and isinstance(record, CoTRecord) else None
    target = assistant_target(reasoning, entities, labels, prompt=prompt)
    completion = [{"role": "assistant", "content": target}]
    source = (record.source or None) if add_source else None
    messages = ner_messages(record.text, labels, prompt=prompt, with_cot=with_cot, source=source)
    return {"prompt": messages, "completion": completion}


def tokenizes_itself(config: SFTConfig) -> bool:
    """Whether the stage hands the trainer tokens rather than conversations: with ``padding_free`` (TRL cuts
    nothing then), for ``too_long: truncate_left`` (TRL's own ``keep_end`` is deprecated) and for ``prompt:
    paper`` (the released code ends every example with the tokenizer's EOS, which SFTTrainer does not add)."""
    return config.padding_free or config.too_long == "truncate_left" or config.prompt == "paper"


def sft_arguments(config: SFTConfig, device: Device, workdir: Path) -> dict[str, Any]:
    """The ``trl.SFTConfig`` of a run, as keyword arguments: ``training_arguments`` and SFT's own. Pure (no model,
    no GPU): tests build the trainer config of every preset from it."""
    return {
        **training_arguments(config, device, workdir),
        "max_length": None if tokenizes_itself(config) else config.max_seq_len,  # None: cut by the stage
        "packing": config.packing,
        "padding_free": config.padding_free,
    }


def tokenized_example(row: dict[str, list[Message]], tokenizer: Any, *, eos: bool = False) -> dict[str, list[int]]:
    """A prompt-completion conversation (``sft_example``) as the tokens and labels SFTTrainer builds from it: the
    chat template's rendering of prompt + completion, the prompt's tokens (up to where the rendering of the prompt
    alone, with the generation prompt, stops matching) masked with -100. ``eos``: end with the tokenizer's EOS
    token, learned, unless it is the last token already (the released sft.py's ``tokenize``; for Qwen3 base models
    ``<|endoftext|>`` after the turn's ``<|im_end|>``)."""
    prompt = _chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    ids = _chat_ids(tokenizer, row["prompt"] + row["completion"])
    start = next((i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b), min(len(prompt), len(ids)))
    eos_id = getattr(tokenizer, "eos_token_id", None) if eos else None
    if eos_id is not None and ids[-1:] != [eos_id]:
        ids = [*ids, eos_id]
    return {"input_ids": ids, "labels": [-100] * start + ids[start:]}


def _chat_ids(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = False) -> list[int]:
    """A conversation's tokens in the tokenizer's chat template, tokenized as ``count_tokens`` counts them."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(encoded["input_ids"])


def cut(dataset: Dataset, limit: int, policy: str) -> tuple[Dataset, int]:
    """Tokenized examples cut to ``limit`` tokens (their last ones for ``truncate_left``, as the released code
    does, else their first ones), less those left with no token to learn from; and how many those were."""
    keep = slice(-limit, None) if policy == "truncate_left" else slice(None, limit)
    dataset = dataset.map(lambda row: {"input_ids": row["input_ids"][keep], "labels": row["labels"][keep]})
    kept = dataset.filter(lambda row: any(label != -100 for label in row["labels"]))
    masked = len(dataset) - len(kept)
    if masked:
        _log.warning("%d examples have no target token left once cut to %d tokens: dropped", masked, limit)
    if not len(kept):
        raise TrainError(f"no examples left to train on once cut to {limit} tokens")
    return kept, masked


def run(
    config: SFTConfig, store: Store, *, progress: Progress | None = None, settings: Settings | None = None
) -> Published:
    training = TrainingRun.open(config, store, stage="sft", kinds=("cot", "ner"), prefix="models/ct", settings=settings)
    if training.published is not None:
        return training.published
    if training.source.manifest.kind == "ner" and config.with_cot:
        raise TrainError(f"{config.dataset} holds labels without reasoning ('ner'): set with_cot: false to train on it")
    args = trl.SFTConfig(**sft_arguments(config, training.device, training.workdir))
    training.fetch_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(training.base.path)
    example = partial(sft_example, with_cot=config.with_cot, prompt=config.prompt, add_source=config.add_source)
    if tokenizes_itself(config):
        dataset = training.dataset(
            lambda record: tokenized_example(example(record), tokenizer, eos=config.prompt == "paper"),
            lambda row: len(row["input_ids"]),
            config.max_seq_len,
            config.too_long,
            "prompt + target",
        )
        dataset, training.stats["fully_masked"] = cut(dataset, config.max_seq_len, config.too_long)
    else:
        dataset = training.dataset(
            example,
            lambda row: count_tokens(tokenizer, row["prompt"] + row["completion"]),
            config.max_seq_len,
            config.too_long,
            "prompt + target",
        )
    return training.train(
        trl.SFTTrainer, args=args, train_dataset=dataset, processing_class=tokenizer, progress=progress, curves=CURVES
    )


main = stage_main(SFTConfig, run)

if __name__ == "__main__":
    main()
