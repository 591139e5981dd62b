"""The stage driver against stand-in workers (real processes speaking the protocol, no model): a chunk that kills
two workers, the restart cap, a worker on another protocol, and samples another driver leased and gave up."""

from __future__ import annotations

import time

import pytest
from conftest import make_config, quiet_console
from standin import StandInLauncher

from evalfleet.engine.driver import MAX_CHUNK_ATTEMPTS, MAX_RESTARTS, StageDriver
from evalfleet.engine.loop import execute
from evalfleet.engine.messages import PROTOCOL
from evalfleet.engine.queue import WorkQueue, make_chunks
from evalfleet.errors import RunError, UserError
from evalfleet.observe.progress import RunProgress
from evalfleet.records import Sample, WorkerSpec
from evalfleet.store import Store


def samples(n: int) -> list[Sample]:
    return [Sample("d", f"s{i}", f"question {i}", f"question {i}") for i in range(n)]


def driver(tmp_path, items: list[Sample], launcher: StandInLauncher, *, workers: int = 1, chunk: int = 2,
           store: Store | None = None, lease_s: float = 120.0) -> StageDriver:
    cfg = make_config(tmp_path, tmp_path, [{"name": "d", "path": "unused.jsonl"}], lease_seconds=lease_s)
    store = store or Store(tmp_path / "store.db")
    store.put_samples(items)
    queue = WorkQueue.of(make_chunks(items, set(), chunk), closed=False)
    progress = RunProgress(len(items), 0, console=quiet_console(), every=10**6, seconds=10**6)
    specs = [WorkerSpec(f"cpu{i}", (), 1) for i in range(workers)]
    return StageDriver(cfg, cfg.pipeline()[0], store, queue, progress, launcher, chunk, chunk, specs, {"d": items},
                       "host:1:me")


def outcomes(store: Store) -> dict[str, tuple[str | None, str | None]]:
    return {r["id"]: (r["prediction"], r["error"]) for r in store.rows("generate", "d")}


def test_a_chunk_that_kills_two_workers_is_recorded_as_errors_and_the_rest_is_answered(tmp_path):
    launcher = StandInLauncher(die_on="s3")
    d = driver(tmp_path, samples(6), launcher)
    execute([d], lambda line: None)
    out = outcomes(d.store)
    assert {k: v[0] for k, v in out.items() if k not in ("s2", "s3")} == {
        "s0": "QUESTION 0", "s1": "QUESTION 1", "s4": "QUESTION 4", "s5": "QUESTION 5"}
    for sid in ("s2", "s3"):  # the chunk [s2, s3]
        assert out[sid][0] is None and f"{MAX_CHUNK_ATTEMPTS} workers died while answering this batch" in out[sid][1]
    assert launcher.started == 1 + MAX_CHUNK_ATTEMPTS  # the first worker and one replacement per death
    states = {w["state"] for w in d.store.workers()}
    assert "died (3)" in states and "stopped" in states


def test_workers_that_always_die_stop_the_run_after_the_restart_cap(tmp_path):
    launcher = StandInLauncher(die_before_ready=True)
    d = driver(tmp_path, samples(4), launcher)
    with pytest.raises(RunError, match=f"every worker of stage generate died \\({MAX_RESTARTS} replacements each"):
        execute([d], lambda line: None)
    assert launcher.started == 1 + MAX_RESTARTS
    assert outcomes(d.store) == {f"s{i}": (None, None) for i in range(4)}  # nothing stored as answered or failed


def test_a_worker_on_another_protocol_version_is_refused(tmp_path):
    d = driver(tmp_path, samples(2), StandInLauncher(protocol=0))
    with pytest.raises(UserError, match=f"speaks protocol 0, this driver {PROTOCOL}"):
        execute([d], lambda line: None)


def test_samples_leased_by_another_driver_are_answered_once_its_lease_expires(tmp_path):
    """Another driver holds s0-s3 with a 3 s lease and then goes away: this driver answers the rest, finds its
    queue dry, and takes the abandoned samples once the lease has expired (its refill, not its first pass)."""
    items = samples(8)
    store = Store(tmp_path / "store.db")
    store.put_samples(items)
    assert store.claim("generate", "d", [s.id for s in items[:4]], "other:2:x", 3.0) == {"s0", "s1", "s2", "s3"}
    t0 = time.monotonic()
    d = driver(tmp_path, items, StandInLauncher(), store=store, workers=2)
    execute([d], lambda line: None)
    assert time.monotonic() - t0 >= 2.5  # it had to wait for the lease
    assert {k: v[0] for k, v in outcomes(store).items()} == {s.id: s.question.upper() for s in items}
    assert d.perf.data["samples"] == 8  # each sample answered once
