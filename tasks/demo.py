"""The demo corpus, the embedded default data of every smoke preset.

The demo corpus (``tasks/corpus/{train,test}.jsonl``) was written for this project: six domains, each
passage with its own entity-type schema and gold entities; ``train_cot.jsonl`` adds hand-written
reasoning for the training passages.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from schemas import NERExample, Passage
from tasks.jsonl import dump_jsonl, read_jsonl
from tasks.store import Store

DEMO_SPLITS = ("train", "test")


def demo_path(split: str) -> Path:
    if split not in DEMO_SPLITS:
        raise ValueError(f"demo split {split!r} does not exist (known: {', '.join(DEMO_SPLITS)})")
    return Path(str(files("tasks") / "corpus" / f"{split}.jsonl"))


def load_demo(split: str) -> list[NERExample]:
    return read_jsonl(demo_path(split), NERExample)


def demo_cot_path() -> Path:
    """Hand-written reasoning for every training passage (``CoTRecord`` lines, teacher "human-written"):
    CoT data to train on where the embedded 135M teacher writes almost none that passes validation."""
    return Path(str(files("tasks") / "corpus" / "train_cot.jsonl"))


def seed_passages(store: Store, prefix: str, split: str = "train", files: int = 2) -> list[str]:
    """Write a demo split as raw passage files (``Passage`` JSONL, gold entities left out); their paths."""
    passages = [Passage(id=ex.id, text=ex.text, labels=ex.labels, source=ex.source) for ex in load_demo(split)]
    paths = []
    for i in range(files):
        path = f"{prefix.strip('/')}/demo-{split}-{i:02d}.jsonl"
        store.put(path, dump_jsonl(passages[i::files], Passage, path))
        paths.append(path)
    return paths
