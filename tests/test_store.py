"""The store's commit protocol, on a local directory and on real S3 (SeaweedFS)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from schemas import CoTRecord, NERExample, ValidateConfig, config_hash, output_address
from tasks.jsonl import RecordError, read_jsonl
from tasks.settings import Settings
from tasks.store import AlreadyPublished, IntegrityError, NotPublished, Store, StoreUnavailable

CFG = ValidateConfig(input="cot/raw/x")


def example(i: int) -> NERExample:
    return NERExample(
        id=f"ex-{i}",
        text=f"Ada Lovelace wrote note {i}.",
        labels=["person"],
        entities=[{"text": "Ada Lovelace", "label": "person", "start": 0, "end": 12}],
        source="demo",
    )


def address(tag: str = "") -> str:
    return output_address("validate", config_hash(CFG), [tag] if tag else [], prefix="cot/valid")


def test_nothing_visible_until_publish(store: Store) -> None:
    out = store.output(address())
    out.commit_shard("00000", [example(0), example(1)], NERExample)
    assert out.published() is None
    with pytest.raises(NotPublished, match="nothing is published"):
        store.load(out.address)
    published = out.publish(kind="ner", stage="validate", config=CFG, stats={"kept": 2})
    again = store.load(out.address)
    assert again == published
    assert again.manifest.rows == 2
    assert again.manifest.config_hash == config_hash(CFG)
    assert [r.id for r in store.records(again.manifest)] == ["ex-0", "ex-1"]


def test_second_writer_gets_already_published(store: Store) -> None:
    first, second = store.output(address()), store.output(address())
    for out in (first, second):
        out.commit_shard("00000", [example(0)], NERExample)
    first.publish(kind="ner", stage="validate", config=CFG)
    with pytest.raises(AlreadyPublished, match="already published"):
        second.publish(kind="ner", stage="validate", config=CFG)


def test_racing_publishers_exactly_one_wins(store: Store) -> None:
    out = store.output(address("race"))
    out.commit_shard("00000", [example(0)], NERExample)
    results: list[str] = []

    def publish() -> None:
        try:
            store.output(out.address).publish(kind="ner", stage="validate", config=CFG)
            results.append("won")
        except AlreadyPublished:
            results.append("lost")

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "lost", "lost", "won"]


def test_committed_shards_survive_a_crash_and_are_not_rewritten(store: Store) -> None:
    out = store.output(address("resume"))
    out.commit_shard("00000", [example(0)], NERExample)
    out.commit_shard("00001", [example(1)], NERExample)
    # A new attempt (a new process after a crash) sees the finished shards ...
    resumed = store.output(out.address)
    done = resumed.committed_shards()
    assert sorted(done) == ["00000", "00001"]
    # ... and a late duplicate of a committed shard with other content does not replace it.
    kept = resumed.commit_shard("00001", [example(7)], NERExample)
    assert kept == done["00001"]
    resumed.commit_shard("00002", [example(2)], NERExample)
    published = resumed.publish(kind="ner", stage="validate", config=CFG)
    assert [r.id for r in store.records(published.manifest)] == ["ex-0", "ex-1", "ex-2"]


def test_sha256_mismatch_is_refused(store: Store) -> None:
    out = store.output(address("tamper"))
    entry = out.commit_shard("00000", [example(0)], NERExample)
    published = out.publish(kind="ner", stage="validate", config=CFG)
    store.put(f"{out.address}/{entry.path}", b'{"tampered": true}\n')
    with pytest.raises(IntegrityError, match="sha256"):
        list(store.records(published.manifest))


def test_records_are_validated_on_write_with_field_paths(store: Store) -> None:
    out = store.output(address("bad"))
    bad = example(0).model_dump()
    bad["entities"][0].update(start=3, end=15)  # right length, wrong place
    with pytest.raises(RecordError, match=r":2: .*text\[3:15\]"):
        out.commit_shard("00000", [example(1), bad], NERExample)
    assert out.committed_shards() == {}
    with pytest.raises(RecordError, match="expected NERExample, got CoTRecord"):
        out.write("x", [_cot()], NERExample)


def test_corrupt_shard_names_file_and_line(store: Store) -> None:
    out = store.output(address("corrupt"))
    good = example(0).model_dump_json().encode()
    data = good + b"\n" + b'{"id": "broken", "text": ' + b"\n"
    entry = out.put_file("00000", data, suffix=".jsonl", rows=2, record_type=NERExample)
    published = out.publish(kind="ner", stage="validate", config=CFG, files=[entry])
    with pytest.raises(RecordError, match=rf"{entry.path}:2: invalid JSON"):
        list(store.records(published.manifest))


def test_output_address_is_deterministic() -> None:
    a = output_address("judge", config_hash(CFG), ["b" * 64, "a" * 64], prefix="cot/judged")
    b = output_address("judge", config_hash(CFG), ["a" * 64, "b" * 64], prefix="cot/judged")
    c = output_address("judge", config_hash(ValidateConfig(input="other")), ["a" * 64], prefix="cot/judged")
    assert a == b != c
    assert a.startswith("cot/judged/judge/")


def test_volatile_fields_do_not_change_the_hash() -> None:
    from schemas import JudgeConfig

    base = JudgeConfig.preset("smoke")
    assert config_hash(base) == config_hash(base.model_copy(update={"concurrency": 3, "request_timeout_s": 1.0}))
    assert config_hash(base) != config_hash(JudgeConfig.preset("smoke", sampling={"temperature": 0.7}))


def test_unreachable_s3_is_a_clear_error_and_publishes_nothing(tmp_path: Path) -> None:
    settings = Settings(
        RNER_S3_ENDPOINT="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        RNER_STORE_TIMEOUT_S=3,
        RNER_STORE_RETRIES=0,
    )  # type: ignore[call-arg]
    store = Store("s3://nowhere/prefix", settings)
    out = store.output(address("down"))
    with pytest.raises(StoreUnavailable, match=r"cannot write s3://nowhere/prefix/cot/valid/.*"):
        out.commit_shard("00000", [example(0)], NERExample)
    with pytest.raises(StoreUnavailable, match="cannot"):
        out.publish(kind="ner", stage="validate", config=CFG, files=[])


def test_local_store_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot use"):
        Store(tmp_path / "file")


def test_store_from_settings_uses_rner_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNER_STORE", str(tmp_path / "elsewhere"))
    assert Store.from_settings().url == str(tmp_path / "elsewhere")
    monkeypatch.delenv("RNER_STORE")
    monkeypatch.setenv("RNER_HOME", str(tmp_path / "home"))
    assert Store.from_settings().url == str(tmp_path / "home" / "store")


def test_read_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(example(0).model_dump_json() + "\n\n" + '{"id": "x", "text": "t", "entities": 3}\n')
    with pytest.raises(RecordError, match=rf"{path}:3: entities: Input should be a valid array"):
        read_jsonl(path, NERExample)
    path.write_text("not json\n")
    with pytest.raises(RecordError, match=rf"{path}:1: invalid JSON"):
        read_jsonl(path, NERExample)


def _cot() -> CoTRecord:
    return CoTRecord(
        id="c",
        text="Ada wrote.",
        reasoning="Ada is a person.",
        completion="...",
        teacher={"model": "m", "sampling": {}, "request_key": "k"},
    )


# -- reliability (issue #17): lost replies, sealed manifests, damaged markers, crashed writes -----------------------


def _lose_first_reply(store: Store, monkeypatch: pytest.MonkeyPatch, then: str) -> list[str]:
    """The first create-if-absent write of a manifest reaches the store, but its reply is lost: the client then
    either retries (``then="retry"``: the retry finds the object, as S3 answers 412 to a conditional retry) or
    gives up (``then="error"``). Returns the paths whose reply was lost."""
    from obstore.exceptions import AlreadyExistsError

    real = Store.put
    lost: list[str] = []

    def put(self: Store, path: str, data: bytes, *, create: bool = False) -> None:
        real(self, path, data, create=create)
        if create and path.endswith("/manifest.json") and not lost:
            lost.append(path)
            if then == "retry":
                real(self, path, data, create=create)  # raises AlreadyExistsError: the first write landed
                raise AssertionError("the retry should have found the object")
            raise StoreUnavailable(f"cannot write {self.uri(path)}: connection reset by peer")

    monkeypatch.setattr(Store, "put", put)
    assert AlreadyExistsError  # the retry's error type
    return lost


@pytest.mark.parametrize("then", ["retry", "error"])
def test_a_lost_reply_to_the_manifest_write_is_recognised_as_success(
    store: Store, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    out = store.output(address(f"lost-{then}"))
    out.commit_shard("00000", [example(0)], NERExample)
    lost = _lose_first_reply(store, monkeypatch, then)
    published = out.publish(kind="ner", stage="validate", config=CFG)
    assert lost == [f"{out.address}/manifest.json"]
    assert store.load(out.address) == published  # its own manifest: a success, not AlreadyPublished
    with pytest.raises(AlreadyPublished):  # another writer still loses
        store.output(out.address).publish(kind="ner", stage="validate", config=CFG)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["stats"].update(kept=3),
        lambda m: m["files"][0].update(rows=5),
        lambda m: m.update(created_at="2020-01-01T00:00:00Z"),
        lambda m: m.pop("seal"),
    ],
    ids=["stats", "rows", "created_at", "seal-removed"],
)
def test_an_edited_manifest_is_refused_naming_its_path(store: Store, edit: object) -> None:
    import json

    out = store.output(address("edited"))
    out.commit_shard("00000", [example(0)], NERExample)
    out.publish(kind="ner", stage="validate", config=CFG, stats={"kept": 1})
    path = f"{out.address}/manifest.json"
    manifest = json.loads(store.get(path))
    edit(manifest)  # type: ignore[operator]
    store.put(path, json.dumps(manifest, indent=2).encode())  # still valid JSON, still a valid Manifest
    with pytest.raises(IntegrityError, match=rf"{store.uri(path)}: .*seal"):
        store.load(out.address)


def test_a_reader_that_pins_a_digest_gets_that_manifest_or_an_error(store: Store) -> None:
    out = store.output(address("pinned"))
    out.commit_shard("00000", [example(0)], NERExample)
    published = out.publish(kind="ner", stage="validate", config=CFG)
    assert store.load_ref(published.ref) == published
    with pytest.raises(IntegrityError, match=rf"{store.uri(out.address)}/manifest.json: .*digest"):
        store.load_ref(published.ref.model_copy(update={"digest": "0" * 64}))


@pytest.mark.parametrize("damage", [b'{"path": "data/00000.', b"", b'{"not": "an entry"}'])
def test_a_damaged_shard_marker_is_reported_once_and_redone(
    store: Store, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    out = store.output(address("marker"))
    out.commit_shard("00000", [example(0)], NERExample)
    out.commit_shard("00001", [example(1)], NERExample)
    marker = f"{out.address}/_shards/00001.json"
    store.put(marker, damage)  # a crash mid-write on a store without atomic writes
    resumed = store.output(out.address)
    with caplog.at_level("WARNING"):
        assert sorted(resumed.committed_shards()) == ["00000"]  # the damaged one is to be done again
        assert sorted(resumed.committed_shards()) == ["00000"]
    warnings = [r.getMessage() for r in caplog.records if store.uri(marker) in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # reported once, naming the path
    resumed.commit_shard("00001", [example(1)], NERExample)
    published = resumed.publish(kind="ner", stage="validate", config=CFG)
    assert [r.id for r in store.records(published.manifest)] == ["ex-0", "ex-1"]


def test_a_marker_whose_shard_is_damaged_is_redone(store: Store) -> None:
    out = store.output(address("orphan-marker"))
    entry = out.commit_shard("00000", [example(0)], NERExample)
    store.put(f"{out.address}/{entry.path}", b'{"id": "ex-0", "te')  # the shard itself damaged
    assert out.committed_shards() == {}
    redone = out.commit_shard("00000", [example(5)], NERExample)  # done again, here with other content
    assert out.committed_shards() == {"00000": redone}
    published = out.publish(kind="ner", stage="validate", config=CFG)
    assert [r.id for r in store.records(published.manifest)] == ["ex-5"]


_CRASHING_WRITER = """
import os, sys, threading
from tasks.store import Store
store = Store(sys.argv[1])
threading.Timer(float(sys.argv[2]), lambda: os.kill(os.getpid(), 9)).start()
data = b"x" * (64 << 20)
for i in range(1000):
    store.put(f"out/data/big{i}", data)
"""


def test_a_crashed_local_write_leaves_no_temp_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "store"
    for delay in (0.3, 0.6):  # killed while writing
        subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(root), str(delay)], check=False, timeout=60)
    assert [p for p in (root / "out" / "data").iterdir() if "#" in p.name]  # what the crashes left
    # The next writer in that folder (a resumed stage) cleans up what the crashed ones left ...
    store = Store(root)
    out = store.output("out")
    out.commit_shard("00000", [example(0)], NERExample)
    out.publish(kind="ner", stage="validate", config=CFG)
    leftovers = [p.name for p in root.rglob("*") if p.is_file() and "#" in p.name]
    assert leftovers == []
    # ... and what a crashed writer left is never a visible object
    assert all(not p.endswith("#") for p in store.list("out"))


def test_a_live_writers_staging_file_is_never_swept(tmp_path: Path) -> None:
    import os

    from tasks.store import _staging_file, sweep_staging

    target = tmp_path / "x.json"
    fd, staging = _staging_file(target)  # a writer in the middle of its write: the file is locked
    try:
        assert sweep_staging(tmp_path) == 0 and staging.exists()
    finally:
        os.close(fd)  # the writer dies without cleaning up
    (tmp_path / "y.json#12").write_bytes(b"")  # also what an older obstore writer left
    (tmp_path / "keep#me").write_bytes(b"")  # not a staging file's name
    assert sweep_staging(tmp_path) == 2 and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep#me"]
