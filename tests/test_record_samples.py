"""A run stores its samples once: a resume that reads the same files with the same settings does not rewrite them
(100k samples cost ~2 s to store, `bench/driver_overhead.py`), and an edited file or setting is stored again."""

import json

import pytest

from evalfleet.config import parse_config
from evalfleet.preflight import read_datasets, refusals
from evalfleet.run import samples_to_store
from evalfleet.store import Store
from evalfleet.store.background import SampleWriter


def record_samples(store: Store, data) -> None:
    SampleWriter(store.path, samples_to_store(store, data)).wait()


def stored(store: Store) -> dict[str, tuple[int, str]]:
    return {i: (rowid, answers) for rowid, i, answers in store.db.execute("SELECT rowid, id, answers FROM samples")}


def test_unchanged_samples_are_not_rewritten_and_changed_ones_are(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "answer": "a"}) + "\n" for i in range(5)))

    def config(prompt: str = "{question}"):
        return parse_config({"name": "t", "output_dir": str(tmp_path / "out"), "model": {"path": str(tmp_path)},
                             "datasets": [{"name": "q", "path": str(data), "prompt": prompt}]})

    def record(cfg) -> dict[str, tuple[int, str]]:
        store = Store(cfg.run_dir / "store.db")
        try:
            loaded = read_datasets(cfg)
            assert not refusals(cfg, store, loaded, [])
            record_samples(store, loaded)
            return stored(store)
        finally:
            store.close()

    first = record(config())
    assert record(config()) == first  # same rows, not deleted and inserted again
    data.write_text(data.read_text().replace('"answer": "a"}', '"answer": "b, edited"}', 1))
    edited = record(config())
    assert edited["q0"][1] == '["b, edited"]' and edited != first
    prompt = record(config("{question} Answer briefly."))  # another setting: stored again
    assert prompt["q1"][0] != edited["q1"][0]


def test_an_image_gone_since_is_stored_as_an_error_though_the_data_file_is_unchanged(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "q0", "question": "Q?", "answer": "a", "image": "a.png"}) + "\n")
    cfg = parse_config({"name": "t", "output_dir": str(tmp_path / "out"), "model": {"path": str(tmp_path)},
                        "datasets": [{"name": "q", "path": str(data)}]})
    for gone in (False, True):
        if gone:
            (tmp_path / "a.png").unlink()
        store = Store(cfg.run_dir / "store.db")
        record_samples(store, read_datasets(cfg))
        (error,) = store.db.execute("SELECT error FROM samples").fetchone()
        store.close()
        assert (error is not None and "image file not found" in error) == gone


def test_bulk_objects_restores_the_collector_even_when_the_block_fails():
    import gc

    from evalfleet.bulk import bulk_objects

    before = gc.get_freeze_count()
    with pytest.raises(ValueError), bulk_objects():
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]  # noqa: F841  # long-lived objects built in the block
        raise ValueError("a bad row")
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + 1000  # out of the collector's sight from now on
    gc.unfreeze()


def _samples(n: int, dataset: str = "q"):
    from evalfleet.records import Sample

    return [Sample(dataset, f"q{i}", f"Q{i}?", f"Q{i}? Answer.", answers=["a"]) for i in range(n)]


def test_the_writer_stores_in_batches_and_sets_the_key_once_all_are_stored(tmp_path):
    from evalfleet.store.background import ToStore

    store = Store(tmp_path / "store.db")
    samples = _samples(23)
    writer = SampleWriter(store.path, [ToStore("q", samples, list(range(100, 123)), "key-1")], batch=5)
    writer.wait()
    assert not writer.busy
    rows = store.db.execute("SELECT id, position, prompt, answers FROM samples ORDER BY position").fetchall()
    assert rows[0] == ("q0", 100, "Q0? Answer.", '["a"]') and len(rows) == 23 and rows[-1][:2] == ("q22", 122)
    assert store.get_meta("samples:q") == "key-1"
    store.close()


def test_a_stopped_writer_leaves_the_key_unset_so_a_resume_stores_them_again(tmp_path):
    from evalfleet.store.background import ToStore

    store = Store(tmp_path / "store.db")
    writer = SampleWriter(store.path, [ToStore("q", _samples(30_000), list(range(30_000)), "key-1")], batch=1_000)
    writer.stop()
    writer.wait()  # stopped, not failed: nothing to raise
    n = store.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert n % 1_000 == 0 and n <= 30_000  # whole transactions only
    assert store.get_meta("samples:q") is None or n == 30_000
    store.close()


def test_a_writer_that_fails_raises_in_the_waiting_thread(tmp_path):
    import sqlite3

    from evalfleet.store import StoreUnwritable
    from evalfleet.store.background import ToStore

    path = tmp_path / "store.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE samples")
    con.execute("CREATE TABLE samples (dataset TEXT)")  # a store whose samples table is not evalfleet's
    con.commit()
    con.close()
    writer = SampleWriter(path, [ToStore("q", _samples(3), [0, 1, 2], "key-1")])
    with pytest.raises(StoreUnwritable, match="no such column"):
        writer.wait()
    assert not writer.busy
