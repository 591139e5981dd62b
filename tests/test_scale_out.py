"""Several `evalfleet run` processes on one run folder: leases share the work, a killed one is taken over."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import DEMO_QUESTIONS
from require_all import require

from evalfleet.records import Result, Sample
from evalfleet.store import Store


def smol_run(tmp_path, smollm2, name: str, n: int, workers: int) -> tuple[Path, Path]:
    """A config of SmolLM2 on `n` questions (batches of 2) and the path its store will have."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]))
    cfg = {"name": name, "output_dir": str(tmp_path / "runs"), "workers": workers, "judge_cache": None,
           "model": {"path": str(smollm2), "dtype": "float32", "batch_size": 2, "generation": {"max_new_tokens": 8}},
           "datasets": [{"name": "qa", "path": str(data)}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "runs" / name / "store.db"


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
    path, db_path = smol_run(tmp_path, smollm2, "shared", n, workers=1)
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


def test_shards_split_every_sample_once_and_read_slurm_variables(monkeypatch):
    import pytest

    from evalfleet.cluster.shards import in_shard, parse_shard
    from evalfleet.errors import UserError

    ids = [f"s{i}" for i in range(300)]
    owners = [[i for i in range(4) if in_shard("d", sid, i, 4)] for sid in ids]
    assert all(len(o) == 1 for o in owners)  # a partition
    assert all(40 < sum(o == [i] for o in owners) < 110 for i in range(4))  # and a fair one
    assert parse_shard("2/4") == (2, 4)
    with pytest.raises(UserError, match="index must be in 0..3"):
        parse_shard("4/4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("slurm") == (2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    with pytest.raises(UserError, match="not inside a Slurm job array"):
        parse_shard("slurm")


def test_slurm_array_scripts_run_shard_by_shard_then_merge(tmp_path, smollm2):
    import json

    n = 9
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]) + "{broken\n")
    cfg = {"name": "arr", "output_dir": str(tmp_path / "runs"), "workers": 1, "judge_cache": None,
           "metrics": ["lenient_match"], "max_error_rate": 0.5,  # a shard holds the broken row: up to 1 in 3
           "model": {"path": str(smollm2), "dtype": "float32", "batch_size": 4, "generation": {"max_new_tokens": 8}},
           "datasets": [{"name": "qa", "path": str(data)}]}
    path = tmp_path / "arr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "evalfleet.cli", "slurm", str(path), "--array", "3",
                          "--gpus-per-task", "1", "--time", "02:00:00", "--partition", "gpu"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    folder = tmp_path / "runs" / "arr" / "slurm"
    array, merge = folder / "array.sbatch", folder / "merge.sbatch"
    assert str(array) in out and "sbatch --dependency=afterany:JOBID" in out
    text = array.read_text()
    for line in ("#SBATCH --array=0-2", "#SBATCH --gpus-per-task=1", "#SBATCH --time=02:00:00",
                 "#SBATCH --partition=gpu", f"#SBATCH --output={folder}/%A_%a.out"):
        assert line in text.splitlines()
    assert "--shard slurm" in text and "#SBATCH --array" not in merge.read_text()
    for script in (array, merge):
        subprocess.run(["bash", "-n", str(script)], check=True)  # syntax, as sbatch would read it

    # Run the tasks here as Slurm would: its variables set, `srun` running the step in place.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_COUNT": "3",
           "SLURM_ARRAY_TASK_MIN": "0"}
    for task in range(3):
        subprocess.run(["bash", str(array)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, check=True,
                       capture_output=True)
    shards = sorted(p.name for p in (tmp_path / "runs" / "arr" / "shards").iterdir())
    assert shards == ["0-of-3", "1-of-3", "2-of-3"]
    sizes = [Store.open_existing(tmp_path / "runs" / "arr" / "shards" / s).db.execute(
        "SELECT COUNT(*) FROM samples").fetchone()[0] for s in shards]
    assert sum(sizes) == n + 1 and all(sizes)
    merged = subprocess.run(["bash", str(merge)], env=env, capture_output=True, text=True, check=True).stdout
    assert "warning" not in merged
    run_dir = tmp_path / "runs" / "arr"
    lines = [json.loads(x) for x in (run_dir / "predictions" / "qa.jsonl").read_text().splitlines()]
    expected = [json.loads(x)["id"] for x in DEMO_QUESTIONS.read_text().splitlines()[:n]] + [f"line{n + 1}"]
    assert [x["id"] for x in lines] == expected  # one line per sample, in dataset order
    assert all(x["prediction"] for x in lines[:n]) and lines[n]["error"]  # the broken row: its error, once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["datasets"]["qa"]["samples"] == n + 1 and summary["performance"]["generate"]["shards"] == 3


def test_network_filesystems_are_recognised_by_their_mount():
    from pathlib import Path

    from evalfleet.store import network_filesystem

    mounts = "rootfs / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\ntmpfs /shared/tmp tmpfs rw 0 0\n"
    assert network_filesystem(Path("/shared/runs/a"), mounts) == "nfs4"
    assert network_filesystem(Path("/shared/tmp/x"), mounts) is None  # the longest mount point wins
    assert network_filesystem(Path("/home/me"), mounts) is None


def test_ray_runs_replicas_as_actors_and_replaces_a_killed_one(tmp_path, smollm2):

    require("ray", "pip install 'evalfleet[ray]'")
    n = 24
    path, db_path = smol_run(tmp_path, smollm2, "ray", n, workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def victim() -> int | None:
        if not db_path.exists():
            return None
        db = sqlite3.connect(db_path, timeout=30)
        try:
            if db.execute("SELECT COUNT(*) FROM results").fetchone()[0] < 4:
                return None
            row = db.execute("SELECT pid FROM workers WHERE id LIKE 'generate/cpu1.0@%' AND state = 'running'").fetchone()
            return row[0] if row else None
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()

    deadline = time.monotonic() + 180
    while (pid := victim()) is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no running actor seen"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)  # the actor's process, as when its node goes down
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert re.search(r"worker cpu0 ready on CPU x\d+ \[continuous\] on \S+", out)  # workers report their node
    assert "worker cpu1.0 died" in out
    db = sqlite3.connect(db_path)
    answered = db.execute("SELECT COUNT(*) FROM results WHERE output IS NOT NULL AND error IS NULL").fetchone()[0]
    states = {r[0].split("@")[0]: r[1] for r in db.execute("SELECT id, state FROM workers")}
    db.close()
    assert answered == n
    assert states["generate/cpu1.0"].startswith("died") and "generate/cpu1.1" in states  # replaced


def test_slurm_ray_cluster_script(tmp_path):
    cfg = {"name": "big", "output_dir": str(tmp_path / "runs"), "model": {"path": "/models/x"},
           "datasets": [{"name": "d", "path": "d.jsonl"}]}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "slurm", str(path), "--ray-nodes", "4", "--gpus-per-task",
                    "8", "--time", "24:00:00"], check=True, capture_output=True, cwd=tmp_path)
    script = tmp_path / "runs" / "big" / "slurm" / "ray.sbatch"
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --time=24:00:00"):
        assert line in lines
    assert any("ray.scripts.scripts start --head" in x for x in lines)
    assert lines[-1].endswith('--ray-address "$address"') and "evalfleet.cli run" in lines[-1]
    subprocess.run(["bash", "-n", str(script)], check=True)
    bad = subprocess.run([sys.executable, "-m", "evalfleet.cli", "slurm", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "give --array N" in bad.stdout


def test_a_killed_driver_not_yet_reaped_holds_no_leases():
    """A killed process stays a zombie until its parent reaps it; its leases must not wait for expiry."""
    from evalfleet.store import pid_alive

    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(proc.pid) and proc.poll() is not None  # dead to evalfleet, now reaped
    finally:
        proc.kill()
        proc.wait()
