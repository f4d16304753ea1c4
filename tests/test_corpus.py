"""The demo corpus written for this project: valid, six domains in both splits, the tricky cases present."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from tasks.demo import DEMO_SPLITS, load_demo

DOMAINS = {"demo-news", "demo-science", "demo-music", "demo-food", "demo-tech", "demo-sports"}


@pytest.mark.parametrize("split", DEMO_SPLITS)
def test_split_is_valid_and_balanced(split: str) -> None:
    examples = load_demo(split)
    per_domain = Counter(ex.source for ex in examples)
    assert set(per_domain) == DOMAINS
    assert len(set(per_domain.values())) == 1
    for ex in examples:
        spans = sorted((e.start, e.end) for e in ex.entities)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), ex.id


def test_ids_unique_across_splits_and_tricky_cases_present() -> None:
    examples = [ex for split in DEMO_SPLITS for ex in load_demo(split)]
    assert len({ex.id for ex in examples}) == len(examples)
    texts = {e.text for ex in examples for e in ex.entities}
    assert any(t.startswith("The ") for t in texts)
    assert any(not t.isascii() for t in texts)
    assert any(ex.entities == () for ex in examples)
    assert any(len([e for e in ex.entities if e.text == other.text]) > 1 for ex in examples for other in ex.entities)
