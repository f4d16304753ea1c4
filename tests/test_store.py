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
