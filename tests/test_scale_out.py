"""Several `evalfleet run` processes on one run folder: leases share the work, a killed one is taken over."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import yaml
from conftest import DEMO_QUESTIONS

from evalfleet.datasets import Sample
from evalfleet.store import Result, Store


def test_leases_keep_samples_from_two_drivers_until_they_expire_or_their_process_is_gone(tmp_path):
    store = Store(tmp_path / "store.db")
    store.put_samples([Sample("d", f"s{i}", "q", "p") for i in range(4)])
    assert store.claim("gen", "d", ["s0", "s1"], "a", ttl=60) == {"s0", "s1"}
    assert store.claim("gen", "d", ["s0", "s1", "s2"], "b", ttl=60) == {"s2"}  # a holds s0, s1
    assert store.claim("gen", "d", ["s0"], "a", ttl=60) == {"s0"}  # its own lease again
    store.add_results("gen", [Result("d", "s3", "x")])
    assert store.claim("gen", "d", ["s3"], "b", ttl=60) == set()  # done
    # a's leases expire (it stopped renewing): b takes them.
    store.db.execute("UPDATE leases SET expires = 0 WHERE owner = 'a'")
    assert store.claim("gen", "d", ["s0", "s1"], "b", ttl=60) == {"s0", "s1"}
    # A lease of a process that no longer exists on this host is taken at once, live or not.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.db.execute("UPDATE leases SET owner = 'c', pid = ?, expires = ? WHERE sample_id = 's2'",
                     (dead.pid, time.time() + 60))
    assert store.claim("gen", "d", ["s2"], "a", ttl=60) == {"s2"}
    store.release("b")
    assert {r[0] for r in store.db.execute("SELECT owner FROM leases")} == {"a"}
    store.close()


def test_three_runs_on_one_folder_share_the_work_and_survive_a_kill(tmp_path, smollm2):
    n = 20
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]))
    cfg = {"name": "shared", "output_dir": str(tmp_path / "runs"), "workers": 1, "judge_cache": None,
           "model": {"path": str(smollm2), "dtype": "float32", "batch_size": 2, "generation": {"max_new_tokens": 8}},
           "datasets": [{"name": "qa", "path": str(data)}]}
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db_path = tmp_path / "runs" / "shared" / "store.db"
    procs = [subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "run", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    victim = procs[2]
    suffix = f"@{socket.gethostname()}:{victim.pid}"

    def progress() -> tuple[int, int]:
        """(results stored, results by the victim's worker)"""
        if not db_path.exists():
            return 0, 0
        db = sqlite3.connect(db_path, timeout=30)
        try:
            results = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            mine = db.execute("SELECT COALESCE(SUM(done), 0) FROM workers WHERE id LIKE ?", (f"%{suffix}",)).fetchone()[0]
            return results, mine
        except sqlite3.OperationalError:  # tables not created yet
            return 0, 0
        finally:
            db.close()

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        results, mine = progress()
        if mine >= 2 and results < n - 4:
            break
        assert victim.poll() is None, "the victim finished before it could be killed"
        time.sleep(0.2)
    else:
        raise AssertionError("the victim never did any work")
    os.kill(victim.pid, signal.SIGKILL)
    outputs = [p.communicate(timeout=400)[0] for p in procs[:2]]
    victim.wait()
    for p, out in zip(procs[:2], outputs):
        assert p.returncode == 0, out

    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT sample_id, output, error FROM results WHERE stage = 'generate'").fetchall()
    done = {r[0]: r[3] for r in db.execute("SELECT id, device, state, done FROM workers").fetchall()}
    leases = db.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
    db.close()
    assert len(rows) == n and all(out and err is None for _, out, err in rows)  # every sample once, answered
    assert len(done) == 3 and all(v > 0 for v in done.values())  # all three drivers worked
    # Work done twice: at most what the victim held when it died (two chunks of two).
    assert n <= sum(done.values()) <= n + 4
    assert leases == 0  # released at the end; the victim's were taken over
