"""What `status` and reports read of a store without reading every row of a million-sample run (issue 40, item 3):
counts from keys and error indexes, workers' results since a time, rows whose prompt is their question."""

from __future__ import annotations

import sqlite3

from evalfleet.records import Result, Sample
from evalfleet.store import Store


def _store(tmp_path) -> Store:
    store = Store(tmp_path / "store.db")
    samples = [Sample("d", f"s{i}", f"question {i}", f"question {i}", answers=["yes"]) for i in range(5)]
    samples[1].prompt = "another prompt"
    samples[4].error = "d.jsonl:5: missing question"  # never answered: a finished error
    store.put_samples(samples)
    store.add_results("generate", [Result("d", "s0", "yes", worker="w0"), Result("d", "s1", None, "boom", worker="w0"),
                                   Result("d", "s2", "no", worker="cache")])
    store.add_results("judge", [Result("d", "s0", "5", worker="w1")])
    return store


def test_counts_take_unloaded_samples_and_errors_into_account(tmp_path):
    store = _store(tmp_path)
    assert store.counts("generate", "d") == (5, 4, 2)  # s0, s1, s2 answered and s4 unloaded; s1 and s4 failed
    assert store.counts("judge", "d") == (5, 2, 1)
    assert store.made_since("generate") == 2  # the cache's answer is not a worker's
    assert store.made_since("generate", since=2e9) == 0
    assert store.made_since("judge") == len(store.finish_times("judge")) == 1


def test_an_older_store_gets_the_indexes_when_opened(tmp_path):
    _store(tmp_path).close()
    con = sqlite3.connect(tmp_path / "store.db")
    for name in ("results_failed", "samples_failed", "results_made"):
        con.execute(f"DROP INDEX {name}")
    con.commit()
    con.close()
    store = Store(tmp_path / "store.db")
    names = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"results_failed", "samples_failed", "results_made"} <= names
    plan = " ".join(str(r) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM results WHERE stage = 'generate' AND dataset = 'd' "
        "AND error IS NOT NULL"))
    assert "results_failed" in plan


def test_rows_give_each_prompt_and_share_one_equal_to_its_question(tmp_path):
    rows = {r["id"]: r for r in _store(tmp_path).rows("generate", "d")}
    assert rows["s1"]["prompt"] == "another prompt" and rows["s1"]["error"] == "boom"
    assert rows["s0"]["prompt"] == "question 0" and rows["s0"]["prompt"] is rows["s0"]["question"]
    assert rows["s0"]["answers"] == ["yes"] and rows["s0"]["answers"] is not rows["s2"]["answers"]  # own copies
    assert rows["s4"]["finished"] and rows["s4"]["error"].endswith("missing question")
    assert rows["s3"]["metadata"] == {} and rows["s3"]["images"] == [] and not rows["s3"]["finished"]


def test_status_counts_a_datasets_samples_from_its_record_while_they_are_still_being_stored(tmp_path):
    from evalfleet.config import parse_config
    from evalfleet.reporting.status import read_status

    cfg = parse_config({"name": "t", "output_dir": str(tmp_path), "model": {"path": str(tmp_path)},
                        "datasets": [{"name": "d", "path": str(tmp_path / "d.jsonl")}]})
    store = Store(cfg.run_dir / "store.db")
    store.set_meta("config", cfg.model_dump(mode="json"))
    store.set_dataset("d", "running", 1_000)  # read: a thousand; stored so far (`store/background.py`): three
    store.put_samples([Sample("d", f"s{i}", "q", "q") for i in range(3)])
    store.add_results("generate", [Result("d", "s0", "a", worker="w0")])
    store.close()
    (row,) = read_status(cfg.run_dir).rows
    assert (row.dataset, row.expected, row.done) == ("d", 1_000, 1)
