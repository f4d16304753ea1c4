"""Experiment recipes: one config per experiment of the paper, each run by a ``recipe-*`` flow (``flows.recipes``).

A recipe names its data (published CoT datasets, labelled sets to import, eval sets) and carries the stage
configs it runs. The flow chains the stages, so the ``dataset`` and ``model`` fields inside those stage
configs are set from the outputs before them (as ``PipelineConfig`` says). Every recipe ends with one
comparison table, F1 (paper mode) per dataset and the average, one row per trained model (``ReportConfig``).

- ``ablation`` (``Ablation``; the paper's ablation): SFT on the raw labels, SFT on the CoT answers without the
  reasoning, CT, CT + RE;
- ``zero-shot-crossner-mit`` (``ZeroShot``; Table 1): CT (+ RE), evaluated on CrossNER and MIT;
- ``zero-shot-20`` (``ZeroShot``): CT (+ RE), evaluated on the 20 InstructUIE NER sets;
- ``supervised`` (``Supervised``): SFT on labelled sets' train splits, evaluated on their test splits;
- ``low-resource`` (``LowResource``): SFT on 1% / 5% / 10% of a train split, each evaluated on its test split;
- ``cross-lingual`` (``CrossLingual``): SFT on English sets, evaluated on other languages' test sets.

``paper`` presets hold the paper's values, with the data at placeholder paths under ``PAPER_DATA`` (the
InstructUIE release's NER folders) and ``/data/...``: set them (``recipes/<name>.yaml`` lists each input).
``smoke`` presets run on the demo corpus with the embedded default model on a CPU.

Usage::

    rner recipe run ablation --smoke
    config = LowResource.preset("paper", data={"path": "/mnt/ie/NER/CoNLL 2003"})
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from schemas.base import Config, Name, Seq
from schemas.configs import (
    EVAL_SUITES,
    EvalConfig,
    GRPOConfig,
    ImportConfig,
    SampleConfig,
    SFTConfig,
    check_loads_trained_models,
)

PAPER_DATA = "/data/IE_INSTRUCTIONS/NER"
"""Where the paper presets expect the InstructUIE NER folders (``<name>/{train,dev,test}.json`` + ``labels.json``):
a placeholder to set."""

_RE_SOURCES = [f"{PAPER_DATA}/{name}" for name in EVAL_SUITES["instructuie_20"]]
"""The RE data's sources: the 20 supervised sets one by one, never the whole folder, whose CrossNER and MIT
sets are the zero-shot evaluation's."""

_DEMO_SET = {"dataset": "demo", "format": "jsonl", "path": "demo:", "splits": ["train", "test"]}
"""The demo corpus as one labelled dataset (both splits), what the smoke presets import."""


def _paper_import(name: str, splits: Iterable[str]) -> dict[str, Any]:
    """An InstructUIE folder under ``PAPER_DATA`` to import, named as a dataset name may be (no spaces)."""
    return {"dataset": name.replace(" ", "-"), "format": "instructuie", "path": f"{PAPER_DATA}/{name}",
            "splits": list(splits)}  # fmt: skip


def _require_splits(imports: Iterable[ImportConfig], field: str, *needed: str) -> None:
    for config in imports:
        missing = [split for split in needed if split not in config.splits]
        if missing:
            raise ValueError(f"{field}: {config.dataset} must import its {' and '.join(missing)} split")


class ReportConfig(Config):
    """A comparison table (``tasks.report``): F1 per dataset and the average, one row per evaluation, as the
    paper's tables read. Its output (``reports/report/<hash>``) holds the table and a chart; its inputs are
    the evaluations, so ``rner report <address>`` renders it again."""

    title: Name = "F1 per dataset"
    """The table's title."""
    evals: Annotated[dict[Name, Name], Field(min_length=1)]
    """Row label → address of an evaluation output, in row order."""
    mode: Literal["paper", "strict"] = "paper"
    """Which F1 the table shows: ``paper`` (the paper's metric, text and label) or ``strict`` (exact spans)."""


class RecipeEval(EvalConfig):
    """The evaluation of a recipe that imports its eval data: an ``EvalConfig`` whose eval sets are the test
    splits the recipe imports; ``datasets`` and ``suite`` add more (none by default)."""

    PRESETS: ClassVar = {
        name: {k: v for k, v in EvalConfig.PRESETS[name].items() if k not in ("datasets", "suite")}
        for name in ("paper", "smoke")
    }

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> Self:  # replaces EvalConfig's: the recipe adds its own eval sets
        return self

    def on(self, datasets: Sequence[str]) -> EvalConfig:
        """The evaluate stage's config: this evaluation on ``datasets`` (the recipe's test splits) and its own sets."""
        return EvalConfig.model_validate({**self.model_dump(), "datasets": [*datasets, *self.datasets]})


class CoTRecipe(Config):
    """What the recipes that train on CoT data share: the data, CT, RE and one evaluation for every model.

    ``cot``: the CoT training data, mixed in this order when more than one: NER-CoT versions (the ``cg`` flow,
    ``rner cg run``), other published ``cot`` datasets, ``demo:cot``. ``sample`` is the RE data (labelled
    sets), ``evaluate`` the eval sets every model is evaluated on (its ``model`` gives the kind of runner).
    """

    cot: Annotated[Seq[Name], Field(min_length=1)]
    """The CoT training data: addresses of published ``cot`` datasets or ``demo:cot``, mixed in this order."""
    sft: SFTConfig
    """CT: supervised fine-tuning on the CoT data (``dataset`` is set by the flow)."""
    sample: SampleConfig
    """The RE data, sampled from labelled sets."""
    grpo: GRPOConfig
    """RE: GRPO from the CT model (``dataset`` and ``model`` are set by the flow)."""
    evaluate: EvalConfig
    """The evaluation every trained model gets (its ``model`` gives the kind of runner)."""

    @model_validator(mode="after")
    def _evaluate_can_load_trained_models(self) -> Self:
        check_loads_trained_models(self.evaluate)
        return self


_COT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "cot": ["datasets/ner-cot/v1"],
        "sft": {"preset": "paper"},
        "sample": {"preset": "paper", "sources": _RE_SOURCES},
        "grpo": {"preset": "paper"},
        "evaluate": {"preset": "paper", "suite_root": PAPER_DATA},
    },
    "smoke": {
        "cot": ["demo:cot"],
        "sft": {"preset": "smoke"},
        "sample": {"preset": "smoke"},
        "grpo": {"preset": "smoke"},
        "evaluate": {"preset": "smoke"},
    },
}


class ZeroShot(CoTRecipe):
    """Recipes ``zero-shot-crossner-mit`` (the paper's Table 1) and ``zero-shot-20``: CT on the CoT data, RE
    from the CT model (unless ``reinforce`` is off), each evaluated zero-shot on ``evaluate``'s suite. Rows:
    CT, RE."""

    reinforce: bool = True
    """Also train RE (GRPO from the CT model) and evaluate it next to CT."""
    PRESETS: ClassVar = _COT_PRESETS


class Ablation(CoTRecipe):
    """Recipe ``ablation``, the paper's ablation: four models evaluated on the same eval sets, one row each —
    SFT on the raw labels (``raw``: the labelled data the CoT passages come from), SFT on the CoT data's
    answers without the reasoning, SFT with the reasoning (CT), and CT + GRPO (RE). ``sft`` serves all three
    SFT rows; each row sets ``with_cot`` itself."""

    raw: Annotated[Seq[ImportConfig], Field(min_length=1)]
    """The raw labels, imported (their train splits, mixed when more than one)."""
    PRESETS: ClassVar = {
        # The paper's 45,787 CoT passages come with the labels of the corpus they were drawn from (Pile-NER):
        # converted to NERExample JSONL, that is the raw-label training set.
        "paper": _COT_PRESETS["paper"]
        | {"raw": [{"dataset": "pile-ner", "format": "jsonl", "path": "/data/pile-ner", "splits": ["train"]}]},
        # demo:cot is hand-written reasoning for the demo training passages; their gold is the raw labels.
        "smoke": _COT_PRESETS["smoke"] | {"raw": [_DEMO_SET]},
    }

    @model_validator(mode="after")
    def _raw_has_train(self) -> Self:
        _require_splits(self.raw, "raw", "train")
        return self


class LabelledRecipe(Config):
    """What the recipes that train on labelled sets share: SFT on labels alone (the sets hold no reasoning;
    ``sft.model`` may be a CT model, ``store:<address>``), and how the models are evaluated."""

    sft: SFTConfig
    """SFT on the labelled sets (``with_cot: false``; ``dataset`` is set by the flow)."""
    evaluate: RecipeEval
    """The evaluation of every trained model, on the recipe's test splits and its own eval sets."""

    @model_validator(mode="after")
    def _labels_only(self) -> Self:
        if self.sft.with_cot:
            raise ValueError("sft.with_cot: labelled sets hold no reasoning to train on; set with_cot: false")
        check_loads_trained_models(self.evaluate)
        return self


_LABELLED_PRESETS: dict[str, dict[str, Any]] = {
    name: {"sft": {"preset": name, "with_cot": False}, "evaluate": {"preset": name}} for name in ("paper", "smoke")
}


class Supervised(LabelledRecipe):
    """Recipe ``supervised``: SFT on the train splits of ``datasets`` (mixed), evaluated on their test splits
    (and ``evaluate``'s own eval sets, if any). One row."""

    datasets: Annotated[Seq[ImportConfig], Field(min_length=1)]
    """Labelled sets to import, each with a train and a test split."""
    PRESETS: ClassVar = {
        "paper": _LABELLED_PRESETS["paper"]
        | {"datasets": [_paper_import(name, ("train", "test")) for name in EVAL_SUITES["instructuie_20"]]},
        "smoke": _LABELLED_PRESETS["smoke"] | {"datasets": [_DEMO_SET]},
    }

    @model_validator(mode="after")
    def _train_and_test(self) -> Self:
        _require_splits(self.datasets, "datasets", "train", "test")
        return self


class LowResource(LabelledRecipe):
    """Recipe ``low-resource``: for each of ``fractions``, SFT on that share of ``data``'s train split (drawn
    with ``data.seed``), each model evaluated on ``data``'s whole test split. One row per fraction."""

    data: ImportConfig
    """The labelled set (train and test splits), imported whole for the test split and once per fraction."""
    fractions: Annotated[Seq[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = (0.01, 0.05, 0.1)
    """Shares of the train split, one SFT model each."""
    PRESETS: ClassVar = {
        "paper": _LABELLED_PRESETS["paper"] | {"data": _paper_import("CoNLL 2003", ("train", "test"))},
        "smoke": _LABELLED_PRESETS["smoke"] | {"data": _DEMO_SET},
    }

    @model_validator(mode="after")
    def _whole_set_with_test(self) -> Self:
        _require_splits([self.data], "data", "train", "test")
        if self.data.fraction is not None or self.data.count is not None:
            raise ValueError("data: give the whole set; `fractions` says which shares of its train split to take")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions: each once, not {list(self.fractions)}")
        return self


# MultiCoNER II: CoNLL files with a "# id ..." line opening each sentence and the tag in the last column.
_MULTICONER = "/data/multiconer2"
_MULTICONER_LANGUAGES = ("bn", "de", "es", "fa", "fr", "hi", "it", "pt", "sv", "uk", "zh")


def _multiconer(language: str, split: str) -> dict[str, Any]:
    return {"dataset": f"multiconer-{language}", "format": "conll", "doc_start": "# id",
            "path": f"{_MULTICONER}/{language}/{language}_{split}.conll", "splits": [split]}  # fmt: skip


class CrossLingual(LabelledRecipe):
    """Recipe ``cross-lingual``: SFT on ``train`` (English sets, mixed), evaluated on ``test``: one set per
    other language, each a column of the table, named by its ``dataset`` (e.g. ``multiconer-de``). One row.
    The demo corpus is English only: the smoke preset evaluates on its test split."""

    train: Annotated[Seq[ImportConfig], Field(min_length=1)]
    """English labelled sets to import, each with a train split."""
    test: Annotated[Seq[ImportConfig], Field(min_length=1)]
    """The other languages' labelled sets to import, each with a test split."""
    PRESETS: ClassVar = {
        "paper": _LABELLED_PRESETS["paper"]
        | {
            "train": [_multiconer("en", "train")],
            "test": [_multiconer(language, "test") for language in _MULTICONER_LANGUAGES],
        },
        "smoke": _LABELLED_PRESETS["smoke"] | {"train": [_DEMO_SET], "test": [_DEMO_SET]},
    }

    @model_validator(mode="after")
    def _train_and_test(self) -> Self:
        _require_splits(self.train, "train", "train")
        _require_splits(self.test, "test", "test")
        return self


RECIPES: dict[str, type[Config]] = {
    "ablation": Ablation,
    "zero-shot-crossner-mit": ZeroShot,
    "zero-shot-20": ZeroShot,
    "supervised": Supervised,
    "low-resource": LowResource,
    "cross-lingual": CrossLingual,
}
"""Each recipe's config; ``recipes/<name>.yaml`` holds its paper parameters (``zero-shot-20``: the 20-set suite)."""
