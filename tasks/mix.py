"""Mix CoT (or NER) datasets into one, e.g. a fresh NER-CoT version with other CoT data, for training.

Sources, in priority order: addresses of published ``cot``/``ner`` outputs (of a dataset with splits, such
as an import, its train split), or ``demo:cot`` (the hand-written reasoning shipped for the demo training
passages). All sources must hold the same record
type. An id present in several sources is an error, or with ``on_duplicate: first`` the first source's
record wins (and the others are counted as ``shadowed``).

Usage::

    python -m tasks.mix --config mix.yaml      # sources: [datasets/ner-cot/v3, demo:cot]
"""

from collections import Counter
from typing import Any

from schemas import CoTRecord, InputRef, MixConfig, Record, config_hash, output_address, sha256_hex
from tasks.demo import demo_cot_path
from tasks.errors import RnerError
from tasks.jsonl import parse_lines
from tasks.llm_stage import Progress
from tasks.stage_cli import stage_main
from tasks.store import Published, Store

DEMO_COT = "demo:cot"


class MixError(RnerError, ValueError):
    """Sources that cannot be mixed."""


def load_source(entry: str, store: Store) -> tuple[str, list[Record], InputRef]:
    """(kind, records, pin) of one source."""
    if entry == DEMO_COT:
        data = demo_cot_path().read_bytes()
        records: list[Record] = list(parse_lines(data.splitlines(), CoTRecord, str(demo_cot_path())))
        return "cot", records, InputRef(address="external/demo-cot.jsonl", digest=sha256_hex(data))
    published = store.load(entry)
    if published.manifest.kind not in ("cot", "ner"):
        raise MixError(f"{entry} is a {published.manifest.kind!r} output; mix takes cot or ner datasets")
    # A dataset with splits (an import) gives its train split: held-out examples never reach training data.
    return published.manifest.kind, list(store.split_records(published.manifest, "train")), published.ref


def run(config: MixConfig, store: Store, *, progress: Progress | None = None) -> Published:
    loaded = [load_source(entry, store) for entry in config.sources]
    kinds = {kind for kind, _, _ in loaded}
    types = {type(r) for _, records, _ in loaded for r in records}
    if len(kinds) > 1 or len(types) > 1:
        raise MixError(f"sources hold different record types ({', '.join(sorted(t.__name__ for t in types))})")
    refs = [ref for _, _, ref in loaded]
    out = store.output(output_address("mix", config_hash(config), [r.digest for r in refs], prefix="datasets"))
    if (published := out.published()) is not None:
        return published
    mixed: dict[str, Record] = {}
    per_source: dict[str, dict[str, Any]] = {}
    shadowed: Counter[str] = Counter()
    for entry, (_, records, _) in zip(config.sources, loaded, strict=True):
        for record in records:
            if record.id in mixed:  # type: ignore[attr-defined]
                if config.on_duplicate == "error":
                    raise MixError(f"id {record.id!r} is in {entry} and in an earlier source")  # type: ignore[attr-defined]
                shadowed[entry] += 1
            else:
                mixed[record.id] = record  # type: ignore[attr-defined]
        per_source[entry] = {"records": len(records), "shadowed": shadowed[entry]}
    if progress:
        progress(len(mixed), len(mixed))
    record_type = types.pop() if types else None
    if record_type is None:
        raise MixError(f"all sources are empty: {list(config.sources)}")
    files = [out.write("data", list(mixed.values()), record_type)]
    stats = {"records": len(mixed), "sources": per_source}
    return out.publish(kind=kinds.pop(), stage="mix", config=config, files=files, inputs=refs, stats=stats)


main = stage_main(MixConfig, run)

if __name__ == "__main__":
    main()
