"""The commit protocol under races and faults (issue #17), on a local directory and on real S3 (SeaweedFS) behind a
fault-injecting proxy (``fault_proxy.py``) that loses replies after the write reached S3, resets connections and
delays writes.

A small model of what must hold whatever the interleaving: N writers (threads, and processes) publish, some the
same content, some different content, and afterwards

- there is exactly one version per distinct content, numbered 1..K without gaps;
- every version has its data (every file there, sha256 as recorded, every row readable);
- every writer got the version of its own content, and that is what the store holds (nothing lost);
- of the writers racing for one address, exactly one succeeded and every other was told ``AlreadyPublished`` by a
  manifest that is not its own (no false ``AlreadyPublished``, even when a writer's reply was lost).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fault_proxy import LOSE_REPLY, PASS, RESET, Delay, FaultProxy, faults

from schemas import ImportConfig, NERExample, ValidateConfig, config_hash, output_address
from tasks.data_import import run
from tasks.settings import Settings
from tasks.store import AlreadyPublished, Published, Store

WRITERS = 6
CONTENTS = 3
S3_BUCKET = "rner-test"  # the bucket of the session's SeaweedFS (conftest.py)


def _via(proxy: FaultProxy, retries: int = 3) -> Settings:
    """Settings of a client of the session's SeaweedFS that goes through ``proxy``."""
    values = {"RNER_S3_ENDPOINT": proxy.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
              "AWS_REGION": "us-east-1", "RNER_STORE_TIMEOUT_S": 15, "RNER_STORE_RETRIES": retries}  # fmt: skip
    return Settings(**values)  # type: ignore[arg-type]


def _tagged(n: int, offset: int) -> str:
    return "\n\n".join(f"Ada{offset + i} B-PER\nLovelace I-PER\nvisited O\nTurin B-LOC" for i in range(n)) + "\n"


def _configs(tmp_path: Path) -> list[ImportConfig]:
    """``CONTENTS`` different datasets under one name, each imported by ``WRITERS / CONTENTS`` writers."""
    configs = []
    for k in range(CONTENTS):
        folder = tmp_path / f"data{k}"
        folder.mkdir()
        (folder / "train.conll").write_text(_tagged(3 + k, 10 * k))
        configs.append(ImportConfig(dataset="race", format="conll", path=str(folder), splits=["train"]))
    return [configs[i % CONTENTS] for i in range(WRITERS)]


def _check_versions(store: Store, configs: list[ImportConfig], results: list[Published | BaseException]) -> None:
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures  # nothing lost: every writer's import went through
    manifests = sorted(p for p in store.list("datasets/race") if p.endswith("/manifest.json"))
    published = [store.load(p.removesuffix("/manifest.json")) for p in manifests]
    contents = [(p.manifest.config_hash, p.manifest.inputs, p.manifest.files) for p in published]
    assert len(set(contents)) == len(contents) == CONTENTS, [p.manifest.address for p in published]
    assert sorted(p.manifest.stats["version"] for p in published) == list(range(1, CONTENTS + 1))  # type: ignore[type-var]
    for p in published:  # no version without its data
        rows = list(store.records(p.manifest, role="train"))
        assert len(rows) == sum(f.rows or 0 for f in p.manifest.files)
    for config, result in zip(configs, results, strict=True):
        assert isinstance(result, Published)
        assert store.load(result.manifest.address) == result  # what the writer was given is what is there
        first = next(iter(store.records(result.manifest, role="train")))
        assert first.text.startswith(Path(config.path).joinpath("train.conll").read_text().split()[0])  # type: ignore[attr-defined]


def _in_threads(work: Callable[[int], object], n: int) -> list[object]:
    def guarded(i: int) -> object:
        try:
            return work(i)
        except Exception as e:  # collected: the invariants say which writer failed and how
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(guarded, range(n)))


def _race_for_one_address(stores: list[Store]) -> None:
    """Every writer commits a shard and publishes at the same address; exactly one may succeed."""
    address = output_address("validate", config_hash(ValidateConfig(input="race")), [uuid.uuid4().hex])
    barrier = threading.Barrier(len(stores), timeout=60)
    example = NERExample(id="e", text="Ada wrote.", labels=["person"], source="t",
                         entities=[{"text": "Ada", "label": "person", "start": 0, "end": 3}])  # fmt: skip

    def writer(i: int) -> object:
        out = stores[i].output(address)
        out.commit_shard("00000", [example], NERExample)
        barrier.wait()
        try:
            return out.publish(kind="ner", stage="validate", config=ValidateConfig(input="race"))
        except AlreadyPublished as e:
            return e

    outcomes = _in_threads(writer, len(stores))
    assert not [o for o in outcomes if not isinstance(o, Published | AlreadyPublished)], outcomes
    winners = [o for o in outcomes if isinstance(o, Published)]
    assert len(winners) == 1, outcomes  # a writer whose reply was lost still knows it won
    there = stores[0].load(address)
    assert there == winners[0] and there.manifest.writer == winners[0].manifest.writer
    for lost in outcomes:
        if isinstance(lost, AlreadyPublished):
            assert lost.existing == there  # told by the one manifest there, which another writer wrote
    assert [r.id for r in stores[0].records(there.manifest)] == ["e"]


@pytest.fixture
def proxied(seaweedfs: str) -> Iterator[tuple[FaultProxy, Callable[[], Store]]]:
    """A proxy in front of the session's SeaweedFS with seeded faults on the first attempt of every write, and
    a factory of stores (one client each, three retries) under one fresh prefix behind it."""
    prefix = uuid.uuid4().hex
    with FaultProxy(seaweedfs, faults()) as proxy:
        settings = _via(proxy)
        yield proxy, lambda: Store(f"s3://{S3_BUCKET}/{prefix}", settings)


def test_racing_imports_on_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, delays = Store.put, itertools.cycle([0.0, 0.01, 0.002, 0.03, 0.005])
    lock = threading.Lock()

    def slow_put(self: Store, path: str, data: bytes, *, create: bool = False) -> None:
        with lock:
            delay = next(delays)
        time.sleep(delay)  # a slow disk: the writers overlap as they do on a busy machine
        real(self, path, data, create=create)

    monkeypatch.setattr(Store, "put", slow_put)
    configs = _configs(tmp_path)
    stores = [Store(tmp_path / "store") for _ in configs]
    results = _in_threads(lambda i: run(configs[i], stores[i]), WRITERS)
    _check_versions(stores[0], configs, results)  # type: ignore[arg-type]
    _race_for_one_address([Store(tmp_path / "store") for _ in range(WRITERS)])
    assert not [p for p in (tmp_path / "store").rglob("*") if "#" in p.name]  # no staging file left behind


def test_racing_imports_on_s3_with_lost_replies_resets_and_delays(
    proxied: tuple[FaultProxy, Callable[[], Store]], tmp_path: Path
) -> None:
    proxy, store = proxied
    configs = _configs(tmp_path)
    stores = [store() for _ in configs]
    results = _in_threads(lambda i: run(configs[i], stores[i]), WRITERS)
    _check_versions(stores[0], configs, results)  # type: ignore[arg-type]
    _race_for_one_address([store() for _ in range(WRITERS)])
    assert proxy.applied[LOSE_REPLY] >= 5 and proxy.applied[RESET] >= 3 and proxy.applied["delay"] >= 3, proxy.applied


def test_every_lost_manifest_reply_on_s3_is_still_a_success(seaweedfs: str) -> None:
    """The worst case for a writer: the reply to each of its manifest writes is lost (the write landed)."""

    def script(method: str, path: str, attempt: int) -> str | Delay:
        return LOSE_REPLY if method == "PUT" and path.endswith("/manifest.json") else PASS

    prefix = uuid.uuid4().hex
    with FaultProxy(seaweedfs, script) as proxy:
        _race_for_one_address([Store(f"s3://{S3_BUCKET}/{prefix}", _via(proxy, retries=1)) for _ in range(3)])
        assert proxy.applied[LOSE_REPLY] >= 3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overlapping_import_processes_publish_one_version(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What a user does: the same `rner data import` started twice at once (here through the stage's own command
    line, in separate processes)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.conll").write_text(_tagged(4, 0))
    config = tmp_path / "import.yaml"
    config.write_text(json.dumps({"dataset": "same", "format": "conll", "path": str(folder), "splits": ["train"]}))
    env = dict(os.environ)
    if where == "local":
        url = str(tmp_path / "store")
        check = Store(url)
        proxy = None
    else:
        seaweedfs = request.getfixturevalue("seaweedfs")
        proxy = FaultProxy(seaweedfs, faults())
        url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
        env |= {"RNER_S3_ENDPOINT": proxy.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1", "RNER_STORE_RETRIES": "3"}  # fmt: skip
        check = Store(url, request.getfixturevalue("s3_settings"))  # straight to S3, not through the proxy
    command = [sys.executable, "-m", "tasks.data_import", "--config", str(config), "--store", url]
    try:
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        if proxy is not None:
            proxy.close()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    addresses = {json.loads(out.strip().splitlines()[-1])["address"] for out, _ in outs}
    assert addresses == {"datasets/same/v1"}
    assert [p for p in check.list("datasets/same") if p.endswith("manifest.json")] == ["datasets/same/v1/manifest.json"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_racing_cg_publishes_give_one_version_per_content(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CG publish under the same race: every writer looked for an existing version before any published one."""
    from test_cg_steps import _published_cg_outputs

    from schemas import PublishConfig
    from tasks import publish
    from tasks.store import Output

    if where == "local":
        stores = [Store(tmp_path / "store") for _ in range(WRITERS)]
    else:
        _, make = request.getfixturevalue("proxied")
        stores = [make() for _ in range(WRITERS)]
    cot, verdicts = _published_cg_outputs(stores[0], [9, 8, 9.5])
    scores = [9.0, 8.0] * (WRITERS // 2)
    barrier, waited, real = threading.Barrier(WRITERS, timeout=60), set(), Output.publish

    def publish_after_all_looked(self: Output, **kwargs: object) -> Published:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Output, "publish", publish_after_all_looked)
    config = PublishConfig(cot=cot, verdicts=verdicts)
    results = _in_threads(lambda i: publish.run(config.model_copy(update={"min_score": scores[i]}), stores[i]), WRITERS)
    assert not [r for r in results if not isinstance(r, Published)], results
    by_score = {r.manifest.config["min_score"]: r.manifest.address for r in results}  # type: ignore[union-attr]
    assert sorted(by_score.values()) == ["datasets/ner-cot/v1", "datasets/ner-cot/v2"]
    assert all(r.manifest.address == by_score[r.manifest.config["min_score"]] for r in results)  # type: ignore[union-attr]
    manifests = [p for p in stores[0].list("datasets/ner-cot") if p.endswith("/manifest.json")]
    assert len(manifests) == 2
    for r in results:
        assert stores[0].load(r.manifest.address) == r  # type: ignore[union-attr]
        assert len(list(stores[0].records(r.manifest))) == r.manifest.stats["records"]  # type: ignore[union-attr]
