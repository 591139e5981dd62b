"""Claims that had no test (issue 17): leases expire and are renewed by the clock, a merge names a missing
shard, the judge cache keys on image bytes."""

from __future__ import annotations

import time

from evalfleet.config import StageConfig
from evalfleet.records import ImageRef, Result, Sample
from evalfleet.store import Store


def test_a_lease_holds_while_renewed_and_is_taken_once_it_expires(tmp_path):
    store = Store(tmp_path / "store.db")
    ids = ["s0", "s1"]
    assert store.claim("gen", "d", ids, "a", ttl=1.0) == set(ids)
    for _ in range(3):  # 1.8 s in all, past the 1 s lease: renewed every 0.6 s, it holds
        time.sleep(0.6)
        store.renew("a", ttl=1.0)
        assert store.claim("gen", "d", ids, "b", ttl=1.0) == set(), "a renewed lease was taken"
    time.sleep(1.2)  # `a` stops renewing (its process still lives: only the clock frees them)
    assert store.claim("gen", "d", ids, "b", ttl=1.0) == set(ids)
    assert store.claim("gen", "d", ids, "a", ttl=1.0) == set()  # now b's
    store.close()


def test_merge_names_a_missing_and_an_unfinished_shard(tmp_path):
    from evalfleet.cluster.shards import in_shard, merge_shards, shard_dir

    run_dir = tmp_path / "run"
    samples = [Sample("d", f"s{i}", "q", "p", ["a"]) for i in range(30)]
    for index, state in ((0, "done"), (2, "interrupted")):  # shard 1 of 3 never ran
        store = Store(shard_dir(run_dir, index, 3) / "store.db")
        mine = [s for s in samples if in_shard("d", s.id, index, 3)]
        store.set_meta("config", {"name": "run", "shard": f"{index}/3"})
        store.set_meta("fingerprint:gen", "f")
        store.set_meta("state", {"state": state})
        store.put_samples(mine)
        store.set_dataset("d", "done", len(mine))
        store.add_results("gen", [Result("d", s.id, "a") for s in mine])
        store.close()
    store, notes = merge_shards(run_dir)
    try:
        assert notes == ["shard 1-of-3 is missing", "shard 2-of-3 is not done (interrupted)"]
        assert store.get_meta("state")["state"].startswith("partial: shard 1-of-3 is missing")
        merged = store.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        assert merged == sum(in_shard("d", s.id, i, 3) for s in samples for i in (0, 2))
    finally:
        store.close()


def test_judge_cache_key_changes_with_image_bytes_not_with_batch_size(tmp_path):
    from evalfleet.stages.judge import _cache_key

    (tmp_path / "a.png").write_bytes(b"\x89PNG one")
    (tmp_path / "b.png").write_bytes(b"\x89PNG two")
    stage = StageConfig(name="judge", kind="judge", prompt="{answer}", model={"path": "m", "batch_size": 4})
    other_batch = StageConfig(name="judge", kind="judge", prompt="{answer}", model={"path": "m", "batch_size": 32})

    def sample(path: str) -> Sample:
        return Sample("d", "1", "q", "rate this", images=[ImageRef("x", path=str(tmp_path / path))])

    assert _cache_key(stage, sample("a.png")) == _cache_key(other_batch, sample("a.png"))
    assert _cache_key(stage, sample("a.png")) != _cache_key(stage, sample("b.png"))
    inline = Sample("d", "1", "q", "rate this", images=[ImageRef("x", data=b"\x89PNG one")])
    assert _cache_key(stage, inline) == _cache_key(stage, sample("a.png"))  # the bytes count, not where they live


def test_the_demo_command_runs_and_prints_its_table(tmp_path, smollm2):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "evalfleet.cli", "demo", "--limit", "4", "--workers", "1", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo-questions" in out.stdout and "lenient_match judges the first line" in out.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())["datasets"]["demo-questions"]
    assert (summary["samples"], summary["finished"], summary["errors"]) == (4, 4, 0)
