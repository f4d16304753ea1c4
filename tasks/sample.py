"""RE data: a stratified sample of labelled NER sets, the prompts GRPO trains on.

Sources (``SampleConfig.sources``), read at ``split``:

- an InstructUIE folder: ``<name>/<split>.json`` (a JSON list of ``{"sentence", "entities": [{"name",
  "type", "pos"}]}``) with ``<name>/labels.json`` (its entity types), or a folder of such folders; each is
  one dataset named after its folder, converted as ``tasks.eval_sets.instructuie_set`` converts eval sets;
- a ``.jsonl`` file of ``NERExample`` lines, or ``demo:<split>`` (the packaged demo corpus);
- the address of a published ``ner`` output in the store.

A dataset is a ``source`` value of the examples (a store output or a file may hold several). ``datasets``
picks some of them, in an order; without it every dataset of the sources takes part, in name order. How
``total`` is split over them is ``allocation``:

- ``even`` (the default): as evenly as their sizes allow. Smallest first, each takes its fair share of what
  is left, at most ``per_dataset_cap`` and at most what it has, so what a small dataset cannot give goes to
  the larger ones and the sample has exactly ``total`` examples. Within a dataset, which examples are taken
  is drawn from a generator seeded with ``seed`` and the dataset's name, and they keep their order.
- ``proportional`` (the released ``sample_grpo.py``, the ``paper`` preset): each dataset's size is capped at
  ``per_dataset_cap`` (its ``--max_count``), and it gives ``int(total * (size / sum of sizes))`` examples;
  the floors leave the sample short of ``total`` by less than one example per dataset. The draw is the
  released one: one generator seeded with ``seed``, the datasets in order, each dataset's examples
  shuffled whole and the first ones taken, so on the same data (the InstructUIE files, in the order of the
  released ``config/dataset/in_domain.json``) the same examples are picked, in the same order.

``shuffle`` shuffles the whole sample at the end (in ``proportional``, with the same generator, as the
released ``--shuffle``). A ``total`` over what the datasets have (capped) is an error in either mode.

``ids`` take a given subset instead of a draw (as ``ImportConfig.ids`` does, with the same
``tasks.eval_sets.select_ids``): exactly the examples with those ids, dataset by dataset in the order above,
each dataset's in their order (then shuffled if ``shuffle``). An id that no example of the datasets sampled
has, or that several have, is an error naming it; ``total`` (other than the number of ids),
``per_dataset_cap`` and ``allocation: proportional`` describe a draw and are refused beside ``ids``. The same
sources and config give the same bytes, on any machine (the sources are pinned by content digests, not by
where they were read from).

Output (``datasets/re/sample/<hash>``): a ``ner`` dataset of ``NERExample`` rows, with a manifest whose stats
record the allocation, the total asked for, the number of ids given and the examples taken, and per dataset
where it came from (origin, digest), how many examples it had and how many were taken; datasets of the sources
left out by ``datasets`` are listed. The inputs list every source by digest.

Usage::

    python -m tasks.sample --config sample.yaml
    published = run(SampleConfig(sources=["/data/IE_INSTRUCTIONS/NER"], total=4703, per_dataset_cap=500), store)
    published = run(SampleConfig.preset("paper", sources=["/data/IE_INSTRUCTIONS/NER"]), store)  # proportional
    published = run(SampleConfig(sources=["demo:train"], ids=["news-train-02", "tech-train-01"]), store)  # a subset
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from schemas import NERExample, SampleConfig, config_hash, output_address
from tasks.errors import RnerError
from tasks.eval_sets import EvalSet, InstructUIERow, draw, instructuie_set, load_entry, select_ids
from tasks.jsonl import describe, without_bom
from tasks.llm_stage import Progress
from tasks.stage_cli import stage_main
from tasks.store import Published, Store

_ROWS = TypeAdapter(list[InstructUIERow])
_LABELS = TypeAdapter(list[str])


class SampleError(RnerError, ValueError):
    """Sources that cannot be read or sampled as configured."""


def load_source(entry: str, store: Store, split: str) -> list[EvalSet]:
    """The labelled sets an entry of ``sources`` names (see the module docstring), read at ``split``."""
    path = Path(entry).expanduser()
    if path.is_dir():
        folders = (
            [path] if (path / f"{split}.json").is_file() else [f.parent for f in sorted(path.glob(f"*/{split}.json"))]
        )
        if not folders:
            raise SampleError(f"{entry}: no {split}.json in it or in its subfolders (InstructUIE layout)")
        return [load_instructuie(folder, split) for folder in folders]
    loaded = load_entry(entry, store, split)  # the packaged demo, a .jsonl file, a published output: as eval reads them
    if isinstance(loaded, str):
        raise SampleError(f"{entry}: {loaded}")
    return [loaded]


def load_instructuie(folder: Path, split: str) -> EvalSet:
    """``folder/<split>.json`` with ``folder/labels.json`` as one dataset named after the folder."""
    try:
        rows = _ROWS.validate_json(without_bom((folder / f"{split}.json").read_bytes()))
        labels = _LABELS.validate_json(without_bom((folder / "labels.json").read_bytes()))
    except (OSError, ValidationError) as e:
        detail = describe(e) if isinstance(e, ValidationError) else str(e)
        raise SampleError(f"{folder}: not an InstructUIE dataset folder: {detail}") from None
    return instructuie_set(folder.name, rows, labels, str(folder), split)


def _limits(sizes: dict[str, int], total: int, cap: int | None) -> dict[str, int]:
    """Each dataset's size capped at ``cap``; an error when together they cannot give ``total``."""
    limits = {name: min(n, cap) if cap else n for name, n in sizes.items()}
    if sum(limits.values()) < total:
        have = ", ".join(f"{name}: {n}" for name, n in sorted(limits.items()))
        raise SampleError(f"total {total} is more than the {sum(limits.values())} examples available ({have})")
    return limits


def allocate(sizes: dict[str, int], total: int, cap: int | None) -> dict[str, int]:
    """How many examples each dataset gives: ``total`` spread evenly, smallest first, within the limits."""
    limits = _limits(sizes, total, cap)
    quotas: dict[str, int] = {}
    left = total
    order = sorted(limits, key=lambda name: (limits[name], name))
    for i, name in enumerate(order):
        quotas[name] = min(limits[name], left // (len(order) - i))
        left -= quotas[name]
    return dict(sorted(quotas.items()))


def allocate_proportional(sizes: dict[str, int], total: int, cap: int | None) -> dict[str, int]:
    """How many examples each dataset gives in proportion to its size capped at ``cap``, as the released
    ``sample_for_grpo`` computes it: ``int(total * (size / sum of sizes))``, in the order of ``sizes``."""
    limits = _limits(sizes, total, cap)
    available = sum(limits.values())
    return {name: int(total * (limit / available)) for name, limit in limits.items()}


def draw_proportional(
    datasets: dict[str, list[NERExample]], quotas: dict[str, int], rng: random.Random
) -> list[NERExample]:
    """The released draw with ``rng`` (seeded with ``seed``): dataset by dataset, in the order of ``quotas``,
    the examples shuffled whole (a permutation that depends only on their number and the generator) and the
    first ``quota`` taken, in shuffled order."""
    sample: list[NERExample] = []
    for name, quota in quotas.items():
        order = list(range(len(datasets[name])))
        rng.shuffle(order)
        sample.extend(datasets[name][i] for i in order[:quota])
    return sample


def run(config: SampleConfig, store: Store, *, progress: Progress | None = None) -> Published:
    sets = [s for entry in config.sources for s in load_source(entry, store, config.split)]
    refs = list({ref.digest: ref for ref in (s.ref for s in sets)}.values())
    out = store.output(output_address("sample", config_hash(config), [r.digest for r in refs], prefix="datasets/re"))
    if (published := out.published()) is not None:
        return published

    datasets: dict[str, list[NERExample]] = defaultdict(list)
    origins: dict[str, EvalSet] = {}
    for s in sets:
        for example in s.examples:
            if origins.setdefault(example.source, s) is not s:
                raise SampleError(
                    f"dataset {example.source!r} is in two sources: {origins[example.source].origin} and {s.origin}"
                )
            datasets[example.source].append(example)
    names = select_datasets(list(datasets), config.datasets)
    sizes = {name: len(datasets[name]) for name in names}
    if config.ids:
        pool = [ex for name in names for ex in datasets[name]]
        where = f"the {config.split} split of {', '.join(names)}"
        sample = select_ids(pool, config.ids, where, SampleError)
        taken = Counter(ex.source for ex in sample)
        quotas = {name: taken[name] for name in names}
    elif config.allocation == "proportional":
        assert config.total is not None  # SampleConfig requires it without ids
        quotas = allocate_proportional(sizes, config.total, config.per_dataset_cap)
        rng = random.Random(config.seed)
        sample = draw_proportional(datasets, quotas, rng)
        if config.shuffle:  # the same generator, on after the draw, as the released --shuffle
            rng.shuffle(sample)
    else:
        assert config.total is not None  # SampleConfig requires it without ids
        quotas = allocate(sizes, config.total, config.per_dataset_cap)
        quotas = {name: quotas[name] for name in names}
        sample = [ex for name, quota in quotas.items() for ex in draw(datasets[name], quota, config.seed, name)]
    if config.shuffle and config.allocation == "even":  # proportional shuffles with its own generator, above
        random.Random(f"{config.seed}/shuffle").shuffle(sample)
    if progress:
        progress(len(sample), len(sample))
    stats = {
        "split": config.split,
        "allocation": config.allocation,
        "total": config.total,
        "ids": len(config.ids),
        "examples": len(sample),
        "left_out": sorted(set(datasets) - set(names)),
        "datasets": {
            name: {
                "origin": origins[name].origin,
                "digest": origins[name].ref.digest,
                "available": len(datasets[name]),
                "taken": quotas[name],
                "dropped_gold": origins[name].dropped_gold,
            }
            for name in quotas
        },
    }
    files = [out.write("data", sample, NERExample)]
    return out.publish(kind="ner", stage="sample", config=config, files=files, inputs=refs, stats=stats)


def select_datasets(present: list[str], wanted: tuple[str, ...]) -> list[str]:
    """The datasets to sample from, in order: ``wanted`` (each must be there), or every one in name order."""
    if not wanted:
        return sorted(present)
    missing = [name for name in wanted if name not in present]
    if missing:
        raise SampleError(
            f"datasets not in the sources: {', '.join(missing)} (they hold: {', '.join(sorted(present))})"
        )
    return list(wanted)


main = stage_main(SampleConfig, run)

if __name__ == "__main__":
    main()
