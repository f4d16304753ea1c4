"""Eval sets: the examples an evaluation runs on, each pinned by the digest of its content.

An entry of ``EvalConfig.datasets`` is, in this order of precedence:

- ``demo:test`` or ``demo:train``: the demo corpus shipped with the package (six datasets by ``source``);
- a folder in the InstructUIE layout, as the paper's evaluation reads it: ``<name>/test.json`` (a JSON list
  of ``{"sentence": ..., "entities": [{"name": ..., "type": ..., "pos": [start, end]}]}``) and
  ``<name>/labels.json`` (the dataset's entity types). Entities typed ``NA`` are skipped, as InstructUIE
  does; an entity whose ``pos`` does not point at its name is placed by ``tasks.parse.ground``, and one
  whose name is nowhere in its sentence is dropped and counted (``EvalSet.dropped_gold``);
- a ``.jsonl`` file of ``NERExample`` lines;
- the address of a published ``ner`` output in the store.

``EvalConfig.suite`` names a list of InstructUIE folders (``schemas.EVAL_SUITES``) found under
``suite_root``: a directory, or the id of a hub dataset with the same layout (read with ``datasets``). Every
entry and suite dataset that cannot be found is named in one ``EvalSetError``.

A dataset is what the metric reports on: an InstructUIE folder is one dataset named after the folder; the
examples of a ``.jsonl`` file or a store output keep their ``source`` (the demo corpus holds six), and
examples without one take the file's stem or the address. Example ids must be unique across everything
evaluated (InstructUIE examples get ``<name>-<index>``), so predictions pair with gold unambiguously.

Usage::

    sets = load_eval_sets(config, store)
    examples = select_examples(sets, config.max_examples, config.seed)
    [s.ref for s in sets]        # InputRefs: store outputs by manifest digest, files under external/<name>
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from schemas import EVAL_SUITES, EvalConfig, InputRef, Mention, NERExample, canonical_json, sha256_hex
from schemas.records import Entity
from tasks.demo import DEMO_SPLITS, demo_path
from tasks.errors import RnerError
from tasks.jsonl import describe, read_jsonl, without_bom
from tasks.parse import ground
from tasks.store import Store

DEMO_SCHEME = "demo:"
NA_TYPES = frozenset({"NA", ""})
"""InstructUIE's entity types that mean "no entity"; its loader skips them."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


class EvalSetError(RnerError, ValueError):
    """Eval sets that cannot be found or read; the message names every one."""


@dataclass(frozen=True)
class EvalSet:
    origin: str
    """What the config named: a path, an address, ``demo:test``, or ``<suite_root>/<name>``."""
    examples: tuple[NERExample, ...]
    ref: InputRef
    dropped_gold: int = 0


class InstructUIEEntity(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    type: str
    pos: tuple[int, int] | None = None


class InstructUIERow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sentence: str
    entities: list[InstructUIEEntity] = []


_ROWS = TypeAdapter(list[InstructUIERow])
_LABELS = TypeAdapter(list[str])


def load_eval_sets(config: EvalConfig, store: Store) -> list[EvalSet]:
    """Every eval set of ``config`` (its ``datasets``, then its suite's), or one error naming all that are missing."""
    found: list[EvalSet] = []
    missing: list[str] = []
    for entry in config.datasets:
        loaded = load_entry(entry, store)
        if isinstance(loaded, str):
            missing.append(f"{entry!r} ({loaded})")
        else:
            found.append(loaded)
    if config.suite is not None:
        if config.suite_root is None:
            raise EvalSetError(f"suite {config.suite!r} needs `suite_root`: a directory or a hub dataset id")
        for name in EVAL_SUITES[config.suite]:
            loaded = _load_suite_member(config.suite_root, name)
            if isinstance(loaded, str):
                missing.append(f"{config.suite}/{name} ({loaded})")
            else:
                found.append(loaded)
    if missing:
        raise EvalSetError(f"{len(missing)} eval set(s) not found: {'; '.join(missing)}")
    return found


def draw(examples: list[NERExample], quota: int, seed: int, name: str) -> list[NERExample]:
    """``quota`` of the examples, chosen by a generator seeded with (seed, dataset name), in their order."""
    chosen = random.Random(f"{seed}/{name}").sample(range(len(examples)), quota)
    return [examples[i] for i in sorted(chosen)]


def select_ids(examples: list[NERExample], ids: Sequence[str], where: str, error: type[RnerError]) -> list[NERExample]:
    """The examples named by ``ids``, in their order (``ImportConfig.ids``, ``SampleConfig.ids``). An id that names
    no example of ``where``, or several, is an ``error`` that names it: a typo or a mix-up must not pass silently."""
    count = Counter(ex.id for ex in examples)
    missing = [i for i in ids if i not in count]
    if missing:
        raise error(f"ids: {len(missing)} not in {where}, e.g. {missing[:5]}")
    ambiguous = [i for i in ids if count[i] > 1]
    if ambiguous:
        raise error(f"ids: {len(ambiguous)} name several examples of {where}, e.g. {ambiguous[:5]}")
    wanted = set(ids)
    return [ex for ex in examples if ex.id in wanted]


def select_examples(sets: Iterable[EvalSet], max_examples: int | None, seed: int) -> list[NERExample]:
    """The examples to evaluate, set by set, in their order: at most ``max_examples`` per dataset, drawn with
    ``draw`` (seeded with ``seed`` and the dataset's name: a sample, not the first ones); names and ids checked."""
    examples: list[NERExample] = []
    origin_of: dict[str, str] = {}
    for s in sets:
        by_dataset: defaultdict[str, list[NERExample]] = defaultdict(list)
        for ex in s.examples:
            by_dataset[ex.source].append(ex)
        for name in by_dataset:
            if origin_of.setdefault(name, s.origin) != s.origin:
                raise EvalSetError(f"dataset {name!r} comes from two eval sets: {origin_of[name]} and {s.origin}")
        kept: set[int] = set()
        for name, group in by_dataset.items():
            quota = len(group) if max_examples is None else min(len(group), max_examples)
            kept.update(id(ex) for ex in draw(group, quota, seed, name))
        examples += [ex for ex in s.examples if id(ex) in kept]
    repeated = [i for i, n in Counter(ex.id for ex in examples).items() if n > 1]
    if repeated:
        raise EvalSetError(f"example ids must be unique across the eval sets; repeated: {repeated[:5]}")
    return examples


def load_entry(entry: str, store: Store, split: str = "test") -> EvalSet | str:
    """The eval set ``entry`` names (of a published dataset with splits, its ``split``), or why there is none."""
    if entry.startswith(DEMO_SCHEME):
        split = entry.removeprefix(DEMO_SCHEME)
        if split not in DEMO_SPLITS:
            return f"the demo corpus has splits {', '.join(DEMO_SPLITS)}"
        return _jsonl_set(demo_path(split), entry, f"demo-{split}")
    path = Path(entry).expanduser()
    if path.is_dir():
        return _folder_set(path, path.name, entry)
    if path.is_file():
        if path.suffix != ".jsonl":
            return "a file, but not .jsonl"
        return _jsonl_set(path, entry, path.stem)
    published = store.find(entry)
    if published is None:
        return f"no folder, .jsonl file or published output at {store.uri(entry.strip('/'))}"
    if published.manifest.kind != "ner":
        return f"a {published.manifest.kind!r} output, not an NER dataset"
    examples = [_with_source(ex, published.manifest.address) for ex in store.split_records(published.manifest, split)]
    return EvalSet(entry, tuple(examples), published.ref)  # type: ignore[arg-type]


def _jsonl_set(path: Path, origin: str, name: str) -> EvalSet:
    examples = tuple(_with_source(ex, name) for ex in read_jsonl(path, NERExample))
    return EvalSet(origin, examples, _external_ref(name, path.read_bytes()))


def _with_source(example: NERExample, default: str) -> NERExample:
    return example if example.source else example.model_copy(update={"source": default})


def _load_suite_member(root: str, name: str) -> EvalSet | str:
    folder = Path(root).expanduser() / name
    if folder.is_dir() or not _HUB_ID.match(root):
        return _folder_set(folder, name, str(folder))
    return _hub_set(root, name)


def _folder_set(folder: Path, name: str, origin: str) -> EvalSet | str:
    absent = [f for f in ("test.json", "labels.json") if not (folder / f).is_file()]
    if absent:
        return f"no {' and no '.join(absent)} in {folder}"
    rows = _parse(_ROWS, (folder / "test.json").read_bytes(), folder / "test.json")
    labels = _parse(_LABELS, (folder / "labels.json").read_bytes(), folder / "labels.json")
    return instructuie_set(name, rows, labels, origin)


def _hub_set(repo_id: str, name: str) -> EvalSet | str:
    """A suite member from a hub dataset laid out like the InstructUIE folders (``<name>/test.json`` ...)."""
    import datasets
    from huggingface_hub import hf_hub_download

    try:
        test = datasets.load_dataset(repo_id, data_files={"test": f"{name}/test.json"}, split="test")
        labels_path = hf_hub_download(repo_id, f"{name}/labels.json", repo_type="dataset")
    except Exception as e:  # the hub clients' errors differ by version; any of them means "not there"
        return f"not readable from hub dataset {repo_id}: {type(e).__name__}: {e}"
    rows = _parse(_ROWS, json.dumps(test.to_list()), Path(f"hf://datasets/{repo_id}/{name}/test.json"))
    labels = _parse(_LABELS, Path(labels_path).read_bytes(), Path(labels_path))
    return instructuie_set(name, rows, labels, f"hf://datasets/{repo_id}/{name}")


def _parse(adapter: TypeAdapter[Any], data: bytes | str, path: Path) -> Any:
    try:
        return adapter.validate_json(without_bom(data) if isinstance(data, bytes) else data)
    except ValidationError as e:
        raise EvalSetError(f"{path}: not in the InstructUIE layout: {describe(e)}") from None


def instructuie_set(
    name: str, rows: list[InstructUIERow], labels: list[str], origin: str, split: str = "test"
) -> EvalSet:
    """One InstructUIE dataset split as NERExamples (schema = ``labels.json``), pinned by a digest of its content."""
    schema = tuple(dict.fromkeys(labels))
    examples, dropped = [], 0
    for i, row in enumerate(rows):
        placed: list[Entity] = []
        unplaced: list[Mention] = []
        for e in row.entities:
            if e.type in NA_TYPES or not e.name.strip():
                continue
            if e.type not in schema:
                raise EvalSetError(f"{origin}/{split}.json: [{i}]: entity type {e.type!r} is not in labels.json")
            start, end = e.pos or (-1, -1)
            if start >= 0 and row.sentence[start:end] == e.name:
                placed.append(Entity(text=e.name, label=e.type, start=start, end=end))
            else:
                unplaced.append(Mention(text=e.name, label=e.type))
        grounded = ground(row.sentence, unplaced)
        dropped += len(grounded.ungrounded)
        entities = (*placed, *grounded.entities)
        try:
            example = NERExample(id=f"{name}-{i}", text=row.sentence, labels=schema, source=name, entities=entities)
        except ValidationError as e:
            raise EvalSetError(f"{origin}/{split}.json: [{i}]: {describe(e)}") from None
        examples.append(example)
    content = canonical_json({"rows": [r.model_dump() for r in rows], "labels": labels})
    return EvalSet(origin, tuple(examples), _external_ref(name, content.encode()), dropped)


def _external_ref(name: str, content: bytes) -> InputRef:
    """An input from outside the store: ``external/<name>`` in the lineage, pinned by its name and content."""
    digest = sha256_hex(canonical_json({"name": name, "sha256": sha256_hex(content)}))
    return InputRef(address=f"external/{_UNSAFE.sub('-', name).strip('-.') or 'data'}", digest=digest)
