"""Labelled NER data into the store: one dataset, its splits as versioned ``NERExample`` files.

``ImportConfig.format`` says how ``path`` is laid out; each of ``splits`` must be there:

- ``jsonl``: ``<path>/<split>.jsonl`` files of ``NERExample`` lines (or ``path`` itself, a ``.jsonl`` file,
  for a single split), or ``demo:`` for the packaged demo corpus; read as ``tasks.eval_sets`` reads them. A
  ``<path>/labels.json`` (a JSON list of entity types, as InstructUIE folders have) is the schema of every line
  that carries no ``labels`` of its own, and part of the input's digest.
- ``instructuie``: ``<path>/<split>.json`` with ``<path>/labels.json``, converted as ``tasks.sample`` and the
  evaluation convert them (``NA`` entities skipped; an entity whose name is nowhere in its sentence is
  dropped and counted as ``dropped_gold``).
- ``conll``: column files ``<path>/<split>.conll`` (or ``.txt``, ``.tsv``, ``.bio``; or ``path`` itself for a
  single split), one token per line, a blank line between sentences, ``doc_start`` lines skipped; the token
  and the tag are read from ``token_column`` and ``tag_column``, split on ``separator`` (spaces and tabs if unset).
  Inside a token, a no-break space (or another Unicode space) becomes a plain space; a control character is an
  error naming ``file:line``.
- ``hf``: a ``datasets`` dataset with a tokens column and a tags column (class-label ids or tag strings):
  a directory written by ``save_to_disk`` (``load_from_disk``), another local directory or a hub id
  (``load_dataset``). A hub dataset's ``validation`` split serves as ``dev``.

Tags follow ``scheme`` (BIO or BIOES); an ``I-``/``E-`` that continues no ``B-`` of its type, a BIOES
``B-`` that no ``E-`` closes, a tag outside the scheme or a line with a different number of columns is an
error naming ``file:line`` (``<path>[<split>]:<row>`` for ``hf``). A sentence's text is its tokens joined
by single spaces; entity offsets are computed from it and checked (``text[start:end]`` is the entity's
tokens) when each ``NERExample`` is built. The entity types of a tagged dataset are its schema, sorted.
``label_map`` renames entity types in every format (``{PER: person}``); a key that is no type of the data
is an error, so a typo cannot pass silently.

Everything is read and checked before the first byte is written, and the manifest is written last: a
failed import publishes nothing.

``fraction`` or ``count`` keep part of the train split (low-resource settings), ``ids`` a given part (those
examples, in the data's order; an id the split lacks is an error), ``per_dataset_cap`` caps
every split; the examples kept are drawn with ``tasks.eval_sets.draw`` (a generator seeded with ``seed``,
the dataset and the split) and keep their order, so the same data and config give the same bytes.

Output (``datasets/<dataset>/vN``, kind ``ner``): one ``NERExample`` file per split whose role is the split
(``train``, ``dev``, ``test``), not ``data``: nothing that reads an output's ``data`` files can mix held-out
examples into training by accident; read a split with ``store.records(manifest, role="test")``. Every
example's ``source`` is the dataset's name; ids are ``<dataset>-<split>-<index in the split as read>``,
except that JSONL examples keep their own (ids must be unique across the splits). N is taken as
``tasks.publish`` takes it (create-if-absent, the loser of a race takes N+1 unless it lost to the same
content); importing the same content with the same config again — before, or at the same time as another
import — returns the version published before: one version per content (``schemas.manifest.content_digest``
of the files, the input and the config). A split with no examples (an empty file) is refused, naming the
file; a UTF-8 byte-order mark at the start of a file is read as the signature it is. The input is
``external/<dataset>``, pinned by the digest of every split's content. Stats: per split where it came
from, how many examples it had and how many were kept, entities per type, tokens read (tagged formats),
and the label map applied.

Usage::

    rner data import --config import.yaml          # or: python -m tasks.data_import --config import.yaml
    published = run(ImportConfig(dataset="conll2003", format="conll", path="data/conll2003",
                                 label_map={"PER": "person", "LOC": "location"}, fraction=0.1), store)
    test = list(store.records(published.manifest, role="test"))
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import StringConstraints, TypeAdapter, ValidationError

from schemas import Entity, ImportConfig, InputRef, NERExample, canonical_json, config_hash, sha256_hex
from schemas.manifest import content_digest
from tasks.errors import RnerError
from tasks.eval_sets import DEMO_SCHEME, draw, load_entry, select_ids
from tasks.jsonl import describe, dump_jsonl, parse_lines, without_bom
from tasks.llm_stage import Progress
from tasks.publish import publish_version
from tasks.sample import load_instructuie
from tasks.stage_cli import stage_main
from tasks.store import Output, Published, Store, file_entry

CONLL_SUFFIXES = (".conll", ".txt", ".tsv", ".bio")
LABELS_FILE = "labels.json"
_LABELS = TypeAdapter(list[Annotated[str, StringConstraints(min_length=1)]])
_COLUMNS = re.compile(r"[ \t]+")
"""The column separator when ``separator`` is unset: spaces and tabs (a no-break space is part of a token)."""
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Control characters but the tab (a token may hold one when the separator is something else)."""
_OPENERS = {"BIO": frozenset("BI"), "BIOES": frozenset("BIES")}
"""The tag prefixes of each scheme, besides the bare ``O``."""
_HUB_SPLITS = {"dev": "validation"}


class DataImportError(RnerError, ValueError):
    """Data that cannot be imported as configured; the message names the file (and line)."""


@dataclass(frozen=True)
class Tagged:
    """A tagged sentence as read, with the line of each token, for error messages."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    source: str
    lines: tuple[int, ...]


@dataclass(frozen=True)
class TaggedSplit:
    sentences: list[Tagged]
    origin: str
    digest: str


@dataclass(frozen=True)
class Split:
    """One split as read: all its examples (before sampling) and the digest of its content."""

    examples: list[NERExample]
    origin: str
    digest: str
    tokens: int | None = None
    dropped_gold: int = 0


def load_splits(config: ImportConfig, store: Store) -> dict[str, Split]:
    """Every split of ``config``, read, converted and checked; raises ``DataImportError`` on the first problem."""
    if config.format == "conll":
        splits = _from_tags(config, {split: _read_conll(config, split) for split in config.splits})
    elif config.format == "hf":
        splits = _from_tags(config, _read_hf(config))
    else:
        splits = {split: _read_examples(config, store, split) for split in config.splits}
    for split, s in splits.items():
        if not s.examples:  # an empty file would publish an empty split: surely not what was meant
            raise DataImportError(
                f"{s.origin}: no examples in the {split} split (an empty file?); "
                "fix the file, or leave the split out of `splits`"
            )
    repeated = [i for i, n in Counter(ex.id for s in splits.values() for ex in s.examples).items() if n > 1]
    if repeated:
        raise DataImportError(f"{config.path}: example ids must be unique across the splits; repeated: {repeated[:5]}")
    return _relabel(splits, config.label_map)


def run(config: ImportConfig, store: Store, *, progress: Progress | None = None) -> Published:
    splits = load_splits(config, store)
    content = canonical_json({split: s.digest for split, s in splits.items()})
    ref = InputRef(address=f"external/{config.dataset}", digest=sha256_hex(content))
    kept = {split: _take(config, split, s.examples) for split, s in splits.items()}
    stats = _stats(config, splits, kept)
    blobs = {split: dump_jsonl(examples, NERExample, f"{config.dataset}/{split}") for split, examples in kept.items()}
    files = [
        file_entry(split, data, role=split, suffix=".jsonl", rows=data.count(b"\n"), record_type=NERExample)
        for split, data in blobs.items()
    ]
    # One version per content (these files, from these inputs, with this config): an import of the same data
    # with the same config, before or at the same time as this one, gives the version it published.
    digest = content_digest("ner", "import", config_hash(config), [ref], files)

    def attempt(out: Output, n: int) -> Published:
        for entry, data in zip(files, blobs.values(), strict=True):
            out.put_file(entry.role, data, role=entry.role, suffix=".jsonl", rows=entry.rows, record_type=NERExample)
        return out.publish(
            kind="ner", stage="import", config=config, files=files, inputs=[ref], stats={"version": n, **stats}
        )

    published = publish_version(store, config.dataset, lambda done: done.manifest.content_digest == digest, attempt)
    if progress:
        progress(stats["examples"], stats["examples"])
    return published


def _split_file(config: ImportConfig, split: str, suffixes: tuple[str, ...]) -> Path:
    """The file holding ``split``: ``<path>/<split><suffix>``, or ``path`` itself when it is the one split."""
    path = Path(config.path).expanduser()
    if path.is_file() and config.format != "instructuie":
        if len(config.splits) > 1:
            raise DataImportError(f"{path} is one file: name its one split in `splits`, not {list(config.splits)}")
        return path
    for suffix in suffixes:
        if (path / f"{split}{suffix}").is_file():
            return path / f"{split}{suffix}"
    looked = ", ".join(f"{split}{suffix}" for suffix in suffixes)
    raise DataImportError(f"{path}: no {split} split (no {looked} there); `splits` names the splits to import")


def _read_examples(config: ImportConfig, store: Store, split: str) -> Split:
    """A split of a JSONL or InstructUIE dataset, read by the loaders the evaluation and RE sampling use."""
    if config.format == "instructuie":
        loaded = load_instructuie(_split_file(config, split, (".json",)).parent, split)
    elif (labels := _jsonl_labels(config)) is not None:
        return _jsonl_with_labels(config, split, labels)
    else:
        entry = f"{DEMO_SCHEME}{split}" if config.path == DEMO_SCHEME else str(_split_file(config, split, (".jsonl",)))
        found = load_entry(entry, store)
        if isinstance(found, str):
            raise DataImportError(f"{entry}: {found}")
        loaded = found
    # InstructUIE's ids (<folder>-<index>) repeat in every split; JSONL ids are the data's own.
    renumber = config.format == "instructuie"
    examples = [
        ex.model_copy(update={"source": config.dataset} | ({"id": f"{config.dataset}-{split}-{i}"} if renumber else {}))
        for i, ex in enumerate(loaded.examples)
    ]
    return Split(examples, loaded.origin, loaded.ref.digest, dropped_gold=loaded.dropped_gold)


def _jsonl_labels(config: ImportConfig) -> list[str] | None:
    """The entity types of ``labels.json`` in a JSONL folder, or ``None`` when it has none."""
    file = Path(config.path).expanduser() / LABELS_FILE
    if config.path == DEMO_SCHEME or not file.is_file():
        return None
    try:
        return _LABELS.validate_json(without_bom(file.read_bytes()))
    except ValidationError as e:
        raise DataImportError(f"{file}: not a JSON list of entity types: {describe(e)}") from None


def _jsonl_with_labels(config: ImportConfig, split: str, labels: list[str]) -> Split:
    """A JSONL split whose lines without ``labels`` take ``labels``; its digest covers both files."""
    file = _split_file(config, split, (".jsonl",))
    data = file.read_bytes()
    try:
        lines = data.decode("utf-8-sig").splitlines()  # a byte-order mark is a signature, not part of line 1
    except UnicodeDecodeError as e:
        raise DataImportError(f"{file}: not UTF-8 text: {e}") from None
    examples = [
        ex.model_copy(update={"source": config.dataset})
        for ex in parse_lines((_with_labels(line, labels) for line in lines), NERExample, str(file))
    ]
    digest = sha256_hex(canonical_json([sha256_hex(data), labels]))
    return Split(examples, str(file), digest)


def _with_labels(line: str, labels: list[str]) -> str:
    """``line`` with ``labels`` added when it is a JSON object without them; anything else as it is, for
    ``parse_lines`` to accept or to report with its line number."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(record, dict) and "labels" not in record:
        return json.dumps({**record, "labels": labels}, ensure_ascii=False)
    return line


def _read_conll(config: ImportConfig, split: str) -> TaggedSplit:
    file = _split_file(config, split, CONLL_SUFFIXES)
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is a UTF-8 signature, not part of the first token
    except UnicodeDecodeError as e:
        raise DataImportError(f"{file}: not UTF-8 text: {e}") from None
    return TaggedSplit(list(conll_sentences(text, str(file), config)), str(file), sha256_hex(data))


def conll_sentences(text: str, source: str, config: ImportConfig) -> Iterator[Tagged]:
    """The sentences of a CoNLL column file: a blank line or a ``doc_start`` line ends one."""
    rows: list[tuple[int, str, str]] = []
    first: tuple[int, int] | None = None  # (columns, line) of the first token line: every line must match it
    # Lines end at "\n" alone: splitlines() would also end one at a control character inside a token.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or (config.doc_start and line.lstrip().startswith(config.doc_start)):
            if rows:
                yield _tagged(rows, source)
                rows = []
            continue
        columns = _COLUMNS.split(line.strip(" \t")) if config.separator is None else line.split(config.separator)
        if first is None:
            n = len(columns)
            first = (n, number)
            picked = {i % n for i in (config.token_column, config.tag_column) if -n <= i < n}
            if len(picked) != 2:
                raise DataImportError(
                    f"{source}:{number}: token_column {config.token_column} and tag_column {config.tag_column} "
                    f"must be two different columns of the {n} this line has"
                )
        if len(columns) != first[0]:
            raise DataImportError(f"{source}:{number}: {len(columns)} columns, but line {first[1]} has {first[0]}")
        token = _token(columns[config.token_column], f"{source}:{number}")
        rows.append((number, token, columns[config.tag_column].strip()))
    if rows:
        yield _tagged(rows, source)


def _token(token: str, where: str) -> str:
    """A token as the text will hold it: Unicode spaces (no-break and the like) as plain spaces; a control
    character (a broken export, a binary file) is an error."""
    if control := _CONTROL.search(token):
        raise DataImportError(f"{where}: token {token!r} holds a control character (U+{ord(control[0]):04X})")
    return _SPACES.sub(" ", token)


def _tagged(rows: list[tuple[int, str, str]], source: str) -> Tagged:
    lines, tokens, tags = zip(*rows, strict=True)
    return Tagged(tokens, tags, source, lines)


def _read_hf(config: ImportConfig) -> dict[str, TaggedSplit]:
    import datasets  # slow to import, and only this format needs it

    path = Path(config.path).expanduser()
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # written by save_to_disk
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.is_dir() else config.path)
    except Exception as e:  # the loaders raise many unrelated types (missing files, hub errors, bad formats)
        raise DataImportError(f"{config.path}: cannot load it with datasets: {type(e).__name__}: {e}") from None
    if isinstance(loaded, datasets.Dataset):
        if len(config.splits) > 1:
            raise DataImportError(f"{config.path} has no splits: name its one split in `splits`")
        loaded = datasets.DatasetDict({config.splits[0]: loaded})
    return {split: _hf_split(config, loaded, split) for split in config.splits}


def _hf_split(config: ImportConfig, loaded: Any, split: str) -> TaggedSplit:
    key = split if split in loaded else _HUB_SPLITS.get(split, split)
    if key not in loaded:
        raise DataImportError(f"{config.path}: no {split} split (it has {', '.join(loaded)})")
    dataset = loaded[key]
    source = f"{config.path}[{key}]"
    missing = [f for f in (config.tokens_field, config.tags_field) if f not in dataset.column_names]
    if missing:
        raise DataImportError(
            f"{source}: no column {', '.join(missing)} (tokens_field, tags_field); it has {dataset.column_names}"
        )
    names = getattr(getattr(dataset.features[config.tags_field], "feature", None), "names", None)
    sentences = []
    rows = zip(dataset[config.tokens_field], dataset[config.tags_field], strict=True)
    for row, (tokens, ids) in enumerate(rows, start=1):
        if len(tokens) != len(ids):
            raise DataImportError(f"{source}:{row}: {len(tokens)} tokens but {len(ids)} tags")
        if any(isinstance(t, int) for t in ids) and names is None:
            raise DataImportError(f"{source}:{row}: tags are numbers, but {config.tags_field!r} names no classes")
        tags = tuple(names[t] if isinstance(t, int) and names else str(t) for t in ids)
        if tokens:  # an empty row is no sentence, as a run of blank lines in a CoNLL file is none
            sentences.append(Tagged(tuple(tokens), tags, source, (row,) * len(tokens)))
    digest = sha256_hex(canonical_json([[s.tokens, s.tags] for s in sentences]))
    return TaggedSplit(sentences, source, digest)


def _from_tags(config: ImportConfig, tagged: dict[str, TaggedSplit]) -> dict[str, Split]:
    """Examples of tagged sentences; the dataset's schema is every entity type in any split, sorted."""
    spans = {split: [entity_spans(s, config.scheme) for s in t.sentences] for split, t in tagged.items()}
    schema = tuple(sorted({label for found in spans.values() for sentence in found for _, _, label in sentence}))
    return {
        split: Split(
            [
                _example(sentence, found, f"{config.dataset}-{split}-{i}", config.dataset, schema)
                for i, (sentence, found) in enumerate(zip(t.sentences, spans[split], strict=True))
            ],
            t.origin,
            t.digest,
            tokens=sum(len(s.tokens) for s in t.sentences),
        )
        for split, t in tagged.items()
    }


def entity_spans(sentence: Tagged, scheme: str) -> list[tuple[int, int, str]]:
    """(first token, end token, type) of every entity the tags mark; a malformed sequence names its line."""
    spans: list[tuple[int, int, str]] = []
    current: tuple[int, str] | None = None  # (first token, type) of the entity being read
    # A trailing "O" closes an entity still open at the end of the sentence like any other "O" would.
    for k, tag in enumerate((*sentence.tags, "O")):
        where = f"{sentence.source}:{sentence.lines[min(k, len(sentence.lines) - 1)]}"
        prefix, _, label = tag.partition("-")
        if tag != "O" and (prefix not in _OPENERS[scheme] or not label):
            raise DataImportError(f"{where}: {tag!r} is not a {scheme} tag (O or one of {scheme}-<type>)")
        if prefix in ("I", "E"):
            if current is None or current[1] != label:
                raise DataImportError(f"{where}: {tag} continues no B-{label} entity")
            if prefix == "E":
                spans.append((current[0], k + 1, label))
                current = None
            continue
        if current is not None:
            if scheme == "BIOES":
                raise DataImportError(f"{where}: the B-{current[1]} entity before it is not closed by E-{current[1]}")
            spans.append((current[0], k, current[1]))
        current = (k, label) if prefix == "B" else None
        if prefix == "S":
            spans.append((k, k + 1, label))
    return spans


def _example(
    sentence: Tagged, spans: list[tuple[int, int, str]], id_: str, dataset: str, schema: tuple[str, ...]
) -> NERExample:
    """The sentence as text (tokens joined by single spaces), its entities placed by character offsets."""
    starts = []
    offset = 0
    for token, line in zip(sentence.tokens, sentence.lines, strict=True):
        if not token.strip():
            raise DataImportError(f"{sentence.source}:{line}: empty token")
        starts.append(offset)
        offset += len(token) + 1
    try:
        entities = [
            Entity(
                text=" ".join(sentence.tokens[i:j]),
                label=label,
                start=starts[i],
                end=starts[j - 1] + len(sentence.tokens[j - 1]),
            )
            for i, j, label in spans
        ]
        # NERExample checks text[start:end] == entity text for every entity: the offsets are verified here.
        return NERExample(id=id_, text=" ".join(sentence.tokens), labels=schema, source=dataset, entities=entities)
    except ValidationError as e:
        raise DataImportError(f"{sentence.source}:{sentence.lines[0]}: {describe(e)}") from None


def _relabel(splits: dict[str, Split], label_map: dict[str, str]) -> dict[str, Split]:
    """Entity types renamed by ``label_map``; a key that is no type of the data is an error."""
    seen = {label for s in splits.values() for ex in s.examples for label in ex.labels}
    unknown = sorted(set(label_map) - seen)
    if unknown:
        raise DataImportError(f"label_map: {', '.join(unknown)} is no entity type of the data (it has {sorted(seen)})")
    if not label_map:
        return splits

    def rename(example: NERExample) -> NERExample:
        # Renaming keeps every entity in the (renamed) schema and every offset as it was: still a valid example.
        return example.model_copy(
            update={
                "labels": tuple(dict.fromkeys(label_map.get(label, label) for label in example.labels)),
                "entities": tuple(
                    e.model_copy(update={"label": label_map.get(e.label, e.label)}) for e in example.entities
                ),
            }
        )

    return {split: replace(s, examples=[rename(ex) for ex in s.examples]) for split, s in splits.items()}


def _take(config: ImportConfig, split: str, examples: list[NERExample]) -> list[NERExample]:
    """The examples of ``split`` to keep: ``fraction``/``count``/``ids`` of train, at most ``per_dataset_cap``."""
    if split == "train" and config.ids:
        examples = select_ids(examples, config.ids, "the train split", DataImportError)
    quota = len(examples)
    if split == "train" and config.count is not None:
        if config.count > quota:
            raise DataImportError(f"count {config.count}: the train split has only {quota} examples")
        quota = config.count
    elif split == "train" and config.fraction is not None:
        quota = min(quota, max(1, round(config.fraction * quota)))
    if config.per_dataset_cap is not None:
        quota = min(quota, config.per_dataset_cap)
    return examples if quota == len(examples) else draw(examples, quota, config.seed, f"{config.dataset}/{split}")


def _stats(config: ImportConfig, splits: dict[str, Split], kept: dict[str, list[NERExample]]) -> dict[str, Any]:
    per_split: dict[str, Any] = {}
    for split, s in splits.items():
        labels = Counter(e.label for ex in kept[split] for e in ex.entities)
        per_split[split] = {
            "origin": s.origin,
            "digest": s.digest,
            "available": len(s.examples),
            "examples": len(kept[split]),
            "sampled": len(kept[split]) < len(s.examples),
            "entities": sum(labels.values()),
            "labels": dict(sorted(labels.items())),
            "dropped_gold": s.dropped_gold,
            **({"tokens_read": s.tokens} if s.tokens is not None else {}),
        }
    return {
        "dataset": config.dataset,
        "format": config.format,
        "origin": config.path,
        "examples": sum(len(examples) for examples in kept.values()),
        "labels": sorted({label for examples in kept.values() for ex in examples for label in ex.labels}),
        "label_map": dict(config.label_map),
        "sampling": {
            "fraction": config.fraction,
            "count": config.count,
            "ids": len(config.ids),
            "per_dataset_cap": config.per_dataset_cap,
            "seed": config.seed,
        },
        "splits": per_split,
    }


main = stage_main(ImportConfig, run)

if __name__ == "__main__":
    main()
