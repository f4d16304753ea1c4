"""The authors' released code (HuiResearch/ReasoningIE), re-implemented literally: the reference that the
parity tests compare this project's paper modes with.

Each function keeps the released one's structure and every quirk (they are what "parity" means): the
module, function and line it comes from is named on it. Only what the tests need is here, with file
reading replaced by the rows themselves. ``released_prompt_source()`` reads ``rner/prompt.py`` from a local
mirror of the repository when there is one, so a test can check that ``NER_PROMPT`` below is still theirs.
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIRROR = Path("/work/.mirror/HuiResearch+ReasoningIE/repo")
"""A bare git mirror of the released repository, where the development machines keep one."""

# --- rner/prompt.py ----------------------------------------------------------------------------------

NER_PROMPT = (
    "\nYou are an excellent information extraction assistant. Please extract the corresponding entities from the"
    " following sentence based on the provided schema and return them in JSON format.\n\nNote:\n1) The schema"
    " specifies the list of entity types that can be extracted;\n2) Only extract entities that are included in the"
    ' schema.\n\nSchema\uff1a\n{{SCHEMA}}\n\nOutput format:\n{\n  "entities": {\n    "label1": [\n      "x1",\n'
    '      "x2"\n    ],\n    "label2": [\n      "x3"\n    ]\n  }\n}\n\nSentence:\n{{SENTENCE}}\n'
)

qwen_template = {
    "user": "<|im_start|>user\n{{content}}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{{content}}<|im_end|>\n",
    "start_token": None,
    "stop_token": "<|im_end|>",
}
TEMPLATE_MAP = {"qwen": qwen_template, "qwen2": qwen_template, "qwen2.5": qwen_template, "qwen3": qwen_template}


def build_prompt(user_msg: str, template: str) -> str:
    """rner/prompt.py ``build_prompt``."""
    chat_template = TEMPLATE_MAP[template]
    prompt = chat_template["user"].replace("{{content}}", user_msg)
    bot_prefix = chat_template["assistant"].split("{{content}}")[0]
    prompt = prompt + bot_prefix
    if "start_token" in chat_template and chat_template["start_token"] is not None:
        prompt = chat_template["start_token"] + prompt
    return prompt


def released_prompt_source() -> str | None:
    """The text of the released ``rner/prompt.py`` from the local mirror, or None where there is none."""
    if not MIRROR.is_dir():
        return None
    done = subprocess.run(
        ["git", "-C", str(MIRROR), "show", "HEAD:rner/prompt.py"], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else None


# --- rner/utils.py -----------------------------------------------------------------------------------


def process_label(label: str) -> str:
    label = label.lower()
    return label.strip()


def is_valid_label(label: str) -> bool:
    if len(label.strip()) == 0:
        return False
    return process_label(label) not in ["na", "n a", "misc", "else", "other", "nan"]


def get_normalized_answer(input_string: object) -> str:
    input_string = str(input_string)

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(input_string)))).strip()


def process_completion(completion: str) -> str:
    if "<think>" in completion or "</think>" in completion:
        completion = re.sub("<think>.*?</think>", "", completion, flags=re.S)
        completion = completion.replace("<think>", "")
        completion = completion.replace("</think>", "")
    if "<answer>" in completion:
        try:
            completion = re.findall("<answer>(.*?)</answer>", completion, flags=re.S)[0]
        except IndexError:
            completion = completion.replace("<answer>", "").replace("</answer>", "")
    if "```json" in completion:
        found = re.findall("```json(.*?)```", completion, re.S)
        if len(found) > 0:
            completion = found[0]
    return completion.strip()


def find_cot(completion: str) -> str | None:
    if "<think>" in completion:
        cot = re.findall("<think>(.*?)</think>", completion, flags=re.S)
        if len(cot) > 0:
            return cot[0]
    return None


# --- rner/protocol.py --------------------------------------------------------------------------------


@dataclass
class Span:
    text: str
    label: str

    def __post_init__(self) -> None:
        self.label = process_label(self.label)
        self.text = self.text.strip()


@dataclass
class InputExample:
    sentence: str | None = None
    source: str | None = None
    entities: list[Span] | None = None
    schema: list[str] | None = None
    cot: str | None = None

    def __post_init__(self) -> None:
        if self.schema is not None:
            processed = [process_label(label) for label in self.schema]
            processed.sort()
            self.schema = [label for label in processed if is_valid_label(label)]
        if self.entities is None:
            self.entities = []

    def valid_entities(self) -> None:
        if self.schema is not None:
            self.entities = [e for e in self.entities or [] if e.label in self.schema and is_valid_label(e.label)]

    @classmethod
    def from_dict(cls, data: dict) -> InputExample:
        spans = [
            Span(e["text"], e["label"])
            for e in data.get("entities", [])
            if "text" in e and "label" in e and isinstance(e["text"], str) and isinstance(e["label"], str)
        ]
        return InputExample(
            sentence=data.get("sentence"), source=data.get("source"), entities=spans, schema=data.get("schema"),
            cot=data.get("cot"),
        )  # fmt: skip

    def to_set(self) -> set[tuple[str, str]]:
        return {(get_normalized_answer(span.text), span.label) for span in self.entities or []}

    def to_completion(self, add_cot: bool = False) -> str:
        output: dict[str, list[str]] = {}
        for span in self.entities or []:
            if span.label not in output:
                output[span.label] = []
            output[span.label].append(span.text)
        output_str = json.dumps({"entities": output}, ensure_ascii=False, indent=2)
        if add_cot and self.cot is not None:
            output_str = f"<think>\n{self.cot}\n</think>\n{output_str}"
        return output_str

    @classmethod
    def from_completion(cls, completion: str) -> InputExample:
        cot = find_cot(completion)
        completion = process_completion(completion)
        try:
            data = json.loads(completion)
            if not isinstance(data, dict):
                data = {}
        except ValueError:
            data = {}
        entities = []
        for label, spans in data.get("entities", {}).items():
            for span in spans:
                if isinstance(span, str):
                    entities.append({"text": span, "label": label})
        return cls.from_dict({"entities": entities, "cot": cot})

    def to_prompt(self, add_source: bool = False) -> str:
        prompt = copy.deepcopy(NER_PROMPT)
        info = {"SCHEMA": json.dumps(self.schema, ensure_ascii=False), "SENTENCE": self.sentence}
        for key, value in info.items():
            prompt = prompt.replace("{{" + key + "}}", value)  # type: ignore[arg-type]
        if add_source and self.source is not None:
            prompt = f"This sentence is from {self.source} dataset.\n\n" + prompt.strip()
        return prompt.strip()


# --- rner/dataset.py ``read_file`` (rows instead of a file) -------------------------------------------


def read_rows(dataset_name: str, rows: list[dict], schema: list[str]) -> list[InputExample]:
    examples = []
    for d in rows:
        entities = [Span(text=e["name"], label=e["type"]) for e in d["entities"] if is_valid_label(e["type"])]
        example = InputExample(sentence=d["sentence"], source=dataset_name, entities=entities, schema=schema)
        example.valid_entities()
        examples.append(example)
    return examples


# --- rner/metric.py, evaluate.py ---------------------------------------------------------------------


def parse_example(data: InputExample | str) -> InputExample:
    return data if isinstance(data, InputExample) else InputExample.from_completion(data)


def safe_div(num: float, denom: float) -> float:
    return num / denom if denom > 0 else 0


def counts(predictions: list[InputExample | str], golds: list[InputExample | str]) -> tuple[int, int, int]:
    """``compute_f1``'s loop: (matches, predictions, gold)."""
    num_gold = num_pred = num_match = 0
    for prediction, gold in zip(predictions, golds, strict=False):
        pred_set = parse_example(prediction).to_set()
        gold_set = parse_example(gold).to_set()
        num_gold += len(gold_set)
        num_pred += len(pred_set)
        num_match += len(pred_set & gold_set)
    return num_match, num_pred, num_gold


def compute_f1(predictions: list[InputExample | str], golds: list[InputExample | str]) -> float:
    num_match, num_pred, num_gold = counts(predictions, golds)
    precision = safe_div(num_match, num_pred)
    recall = safe_div(num_match, num_gold)
    return safe_div(2 * precision * recall, precision + recall)


def evaluate(examples: list[InputExample], results: list[str]) -> dict[str, float]:
    """evaluate.py ``evaluate``: per-dataset F1 in percent rounded, and the "Average" of the rounded values."""
    dataset_map: dict[str, list[tuple[InputExample, str]]] = {}
    for example, result in zip(examples, results, strict=True):
        dataset_map.setdefault(example.source or "", []).append((example, result))
    scores = {}
    for source, dataset in dataset_map.items():
        golds, predictions = zip(*dataset, strict=True)
        scores[source] = round(compute_f1(list(predictions), list(golds)) * 100, 2)
    scores["Average"] = round(sum(scores.values()) / len(scores), 2)
    return scores


# --- sample_grpo.py ``sample_for_grpo`` (the loaded datasets instead of files) ------------------------


def sample_for_grpo(
    datasets: dict[str, list], num_samples: int, shuffle: bool = True, max_count: int = -1, seed: int = 42
) -> tuple[list, dict[str, int]]:
    """The sample and the number taken per dataset; ``datasets`` in ``load_data``'s order, each as read."""
    rng = random.Random(seed)  # the module-level generator after random.seed(seed), seeded again by load_data
    dataset_examples = {name: list(examples) for name, examples in datasets.items()}
    dataset_count = {name: len(examples) for name, examples in datasets.items()}
    total = 0
    for source in dataset_count:
        if max_count > 0:
            dataset_count[source] = min(dataset_count[source], max_count)
        total += dataset_count[source]
    out_examples: list = []
    taken = {}
    for source in dataset_examples:
        samples = dataset_examples[source]
        sample_num = int(num_samples * (dataset_count[source] / total))
        rng.shuffle(samples)
        out_examples.extend(samples[:sample_num])
        taken[source] = len(samples[:sample_num])
    if shuffle:
        rng.shuffle(out_examples)
    return out_examples, taken
