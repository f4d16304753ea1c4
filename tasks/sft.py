"""CT: supervised fine-tuning on a NER-CoT dataset with TRL's SFTTrainer.

Each record becomes a prompt-completion conversation: the user turn is the NER instruction
(``tasks.prompts.ner_messages``, the schema without the paper's catch-all labels), the assistant turn is
``<think>`` reasoning ``</think>`` and the JSON answer (``assistant_target``). The tokenizer's chat template
renders both, and the loss is on the completion only (TRL's completion-only loss for prompt-completion
data). ``with_cot: false`` trains on the answer alone: the paper's ablation, and the only choice for a
``ner`` dataset (gold labels without reasoning).

Sequences longer than ``max_seq_len`` tokens are dropped, cut by the trainer, or refused (``too_long``),
and counted in the manifest. GPU options the machine lacks are refused before anything loads. The run
writes checkpoints to the store and resumes from them (see ``tasks.train_stage``); the output is a
``model`` at ``models/ct/sft/<hash>``: the HF directory under ``model/`` (load it with
``store:<address>``), the training curve, and a manifest with base model, dataset digest, config, metrics.

Usage::

    python -m tasks.launch sft --config sft.yaml     # N processes x M nodes, as `parallel` says
    python -m tasks.sft --config sft.yaml            # this process only (parallel: 1 x 1)
    published = run(SFTConfig.preset("smoke", dataset="datasets/ner-cot/v1"), Store.from_settings())
"""

from __future__ import annotations

from functools import partial

import trl
from transformers import AutoTokenizer

from schemas import CoTRecord, NERExample, SFTConfig
from tasks.metrics import is_dropped_label, paper_labels
from tasks.prompts import Message, assistant_target, ner_messages
from tasks.settings import Settings
from tasks.stage_cli import stage_main
from tasks.store import Published, Store
from tasks.train_stage import Progress, TrainError, TrainingRun, count_tokens

CURVES = ("loss", "mean_token_accuracy", "learning_rate", "grad_norm")


def sft_example(record: CoTRecord | NERExample, *, with_cot: bool) -> dict[str, list[Message]]:
    """The prompt-completion conversation SFTTrainer trains on."""
    labels = paper_labels(record.labels)
    entities = [e for e in record.entities if not is_dropped_label(e.label)]
    reasoning = record.reasoning if with_cot and isinstance(record, CoTRecord) else None
    completion = [{"role": "assistant", "content": assistant_target(reasoning, entities, labels)}]
    return {"prompt": ner_messages(record.text, labels), "completion": completion}


def run(
    config: SFTConfig, store: Store, *, progress: Progress | None = None, settings: Settings | None = None
) -> Published:
    training = TrainingRun.open(config, store, stage="sft", kinds=("cot", "ner"), prefix="models/ct", settings=settings)
    if training.published is not None:
        return training.published
    if training.source.manifest.kind == "ner" and config.with_cot:
        raise TrainError(f"{config.dataset} holds labels without reasoning ('ner'): set with_cot: false to train on it")
    args = trl.SFTConfig(
        **training.arguments(),
        max_length=config.max_seq_len,
        packing=config.packing,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the steps
    )
    training.fetch_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(training.base.path)
    dataset = training.dataset(
        partial(sft_example, with_cot=config.with_cot),
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
