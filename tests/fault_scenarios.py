"""The fault scenarios: each takes a fresh folder and the SmolLM2 folder, injects one fault into real `evalfleet`
processes and checks the outcome a user would check (see faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from faults import EXIT_INTERRUPTED, EXIT_PREEMPTED, Lab, Mount, Outcome, alive, no_traceback, wait_for

Scenario = Callable[[Path, Path], Outcome]


def _stop_by_signal(func: str, name: str, sig: int, code: int, state: str, resume: bool = True,
                    **popen) -> Scenario:
    def scenario(tmp: Path, model: Path) -> Outcome:
        o = Outcome(name)
        lab = Lab(tmp, model, n=24, workers=2)
        proc = lab.start(**popen)
        lab.wait_results(4, proc)
        workers = lab.worker_pids()
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc, out = lab.finish(proc, timeout=60)
        o.stop_s = round(time.monotonic() - t0, 1)
        assert rc == code, f"exit {rc}, expected {code}:\n{out}"
        no_traceback(out)
        assert o.stop_s < 20, f"took {o.stop_s} s to stop"
        assert lab.state()["state"] == state, lab.state()
        assert [s for (s,) in lab.query("SELECT state FROM drivers")] == [state]
        assert lab.leases() == 0, "leases left behind"
        wait_for(lambda: not any(alive(p) for p in workers), 10, "the workers to end")
        stored = lab.results()
        assert stored < lab.n, "the run ended before the signal: the scenario proves nothing"
        if resume:
            out = lab.resume(o)
            assert f"{stored} already done, {lab.n - stored} to do" in out, out
        o.notes.append(f"exit {rc} after {o.stop_s} s; {stored} stored, state {state}, no lease or worker left")
        return o

    scenario.__name__ = func
    return scenario


sigterm = _stop_by_signal("sigterm", "SIGTERM: stop, save, exit 75, resume", signal.SIGTERM, EXIT_PREEMPTED, "preempted")
sigint_ignored = _stop_by_signal("sigint_ignored", "Ctrl-C when started with SIGINT ignored (&)", signal.SIGINT,
                                 EXIT_INTERRUPTED, "interrupted", resume=False,  # resuming: as after SIGTERM
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def slurm_requeue(tmp: Path, model: Path) -> Outcome:
    """SIGUSR1 before the time limit (`--signal=B:USR1@N`) to the array task's batch shell: the run stops cleanly,
    the task requeues itself, and its second start resumes."""
    o = Outcome("Slurm: SIGUSR1 before the time limit, requeue, resume")
    lab = Lab(tmp, model, n=16, workers=1)
    rc, out = lab.cli(str(lab.config), "--array", "1", verb="slurm")
    assert rc == 0, out
    script = lab.run_dir / "slurm" / "array.sbatch"
    text = script.read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@120" in text, text
    shim = tmp / "bin"
    shim.mkdir()
    (shim / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp / "scontrol.log"}\n')
    for f in shim.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "1"}
    task = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lab.db = lab.run_dir / "shards" / "0-of-1" / "store.db"
    lab.wait_results(2, task)
    t0 = time.monotonic()
    task.send_signal(signal.SIGUSR1)  # to the batch shell only, as `--signal=B:USR1` does
    rc, out = lab.finish(task, timeout=60)
    o.stop_s = round(time.monotonic() - t0, 1)
    assert rc == EXIT_PREEMPTED, f"exit {rc}:\n{out}"
    no_traceback(out)
    assert (tmp / "scontrol.log").read_text().split() == ["requeue", "4242"], "the task did not requeue itself"
    stored = lab.results()
    assert stored < lab.n
    t0 = time.monotonic()
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    o.resume_s = round(time.monotonic() - t0, 1)
    o.lost, o.recomputed = lab.lost(), lab.recomputed()
    assert o.lost == 0 and f"{stored} already done" in again.stdout
    o.notes.append(f"exit 75 after {o.stop_s} s, `scontrol requeue 4242`, the requeued task finished")
    return o


def fresh_while_running(tmp: Path, model: Path) -> Outcome:
    """`--fresh` from a second shell while a driver works is refused, naming it; when the run folder is deleted
    under the driver anyway (an older evalfleet's --fresh, or rm -r), it stops without writing reports from the
    store it opened."""
    o = Outcome("--fresh while another driver works")
    lab = Lab(tmp, model, n=48, workers=1)  # still running after the second command's start (on one core, too)
    first = lab.start()
    lab.wait_results(2, first)
    rc, out = lab.cli(str(lab.config), "--fresh")
    assert rc == 2 and "--fresh refused" in out and f"pid {first.pid}" in out, out
    assert first.poll() is None and lab.results() >= 2, "the refused --fresh deleted or stopped the run"
    shutil.rmtree(lab.run_dir)
    rc, out = lab.finish(first, timeout=120)
    assert rc == 1 and "was deleted or replaced while this run was writing" in out, f"exit {rc}:\n{out}"
    no_traceback(out)
    assert not (lab.run_dir / "summary.json").exists() and not (lab.run_dir / "predictions").exists()
    o.notes.append("refused naming the pid; a driver whose store was deleted exits 1 without reports")
    return o


def refused_run_changes_nothing(tmp: Path, model: Path) -> Outcome:
    o = Outcome("a refused run leaves the store as it was")
    lab = Lab(tmp, model, n=4, workers=1)
    rc, out = lab.cli()
    assert rc == 0, out
    before = lab.dump()
    refusals = {"generation": ({"max_new_tokens": 3}, "other model, generation or judge settings"),
                "prompt": (None, "had another prompt")}
    for what, (generation, says) in refusals.items():
        cfg = {**lab.cfg, "metrics": ["exact_match"]}
        if generation:
            cfg["model"] = {**cfg["model"], "generation": generation}
        else:
            cfg["datasets"] = [{**cfg["datasets"][0], "prompt": "{question} Be brief."}]
        lab.config.write_text(yaml.safe_dump(cfg))
        rc, out = lab.cli()
        assert rc == 2 and says in out, f"{what}: exit {rc}:\n{out}"
        no_traceback(out)
        assert lab.dump() == before, f"the refused run ({what}) changed the store"
    # A run that fails to start (no GPU here) leaves the run's record as it was: still done, same config.
    lab.write()
    record = lab.query("SELECT * FROM meta WHERE key IN ('config', 'name', 'state') OR key LIKE 'fingerprint:%' "
                       "ORDER BY key") + lab.query("SELECT * FROM datasets")
    rc, out = lab.cli(str(lab.config), "--gpus", "0")
    assert rc == 2 and "--gpus 0" in out, out
    after = lab.query("SELECT * FROM meta WHERE key IN ('config', 'name', 'state') OR key LIKE 'fingerprint:%' "
                      "ORDER BY key") + lab.query("SELECT * FROM datasets")
    assert after == record and lab.state()["state"] == "done", "a run that failed to start changed the record"
    assert lab.query("SELECT COUNT(*) FROM drivers")[0][0] == 1, "the failed driver left its row"
    rc, out = lab.cli(str(lab.run_dir), verb="report")
    summary = json.loads((lab.run_dir / "summary.json").read_text())
    assert rc == 0 and "lenient_match" in summary["datasets"]["qa"], "report scored with the refused settings"
    o.notes.append("changed generation settings and changed prompts refused (exit 2); store rows identical; "
                   "a run failing to start (--gpus 0 without a GPU) leaves state, config and datasets as they were; "
                   "report keeps the stored metrics")
    return o


def status_two_drivers(tmp: Path, model: Path) -> Outcome:
    """Two drivers on one run, one SIGKILLed: the run is still running, and each driver has its own state."""
    from evalfleet.reporting.status import read_status

    o = Outcome("status: two drivers, one killed")
    lab = Lab(tmp, model, n=16, workers=1)
    a, b = lab.start(), lab.start()

    def both_work() -> bool:
        owners = {w.rsplit("@", 1)[1] for (w,) in lab.query("SELECT id FROM workers WHERE done > 0")}
        return len(owners) == 2

    wait_for(both_work, 240, "both drivers to store results")
    b.kill()
    b.wait()
    st = read_status(lab.run_dir)
    states = {d["pid"]: d["state"] for d in st.drivers}
    assert st.state == "running", f"run state {st.state} while driver {a.pid} works"
    assert states == {a.pid: "running", b.pid: "stopped (process gone)"}, states
    rc, out = lab.finish(a)
    assert rc == 0, out
    o.lost, o.recomputed = lab.lost(), lab.recomputed()
    assert o.lost == 0
    assert read_status(lab.run_dir).state == "done"
    o.notes.append(f"run running while one driver lives; drivers: {sorted(states.values())}")
    return o


def hung_worker(tmp: Path, model: Path) -> Outcome:
    """A worker SIGSTOPped while it holds work is found by its missing heartbeat, killed and replaced; `status`
    tells it from the healthy worker, idle meanwhile (nothing else is left to do)."""
    from evalfleet.reporting.status import read_status

    o = Outcome("a hung worker (SIGSTOP) is replaced")
    lab = Lab(tmp, model, n=8, workers=2, hang_seconds=6)  # 4 chunks: each worker is fed 2 as it starts
    proc = lab.start()
    victim = wait_for(lambda: next((pid for (pid, wid) in lab.query("SELECT pid, id FROM workers WHERE state = "
                                                                    "'running'") if "cpu1.0" in wid), None),
                      120, "worker cpu1 ready")
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            seen |= {w["state"].split(" (")[0] for w in read_status(lab.run_dir).workers}
            time.sleep(0.3)
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)
    rc, out = proc.returncode, proc.stdout.read()
    recovered = round(time.monotonic() - t0, 1)
    assert rc == 0, out
    assert "is hung (no heartbeat for" in out, out
    o.lost, o.recomputed = lab.lost(), lab.recomputed()
    assert o.lost == 0
    states = [s for (s,) in lab.query("SELECT state FROM workers")]
    assert any(s.startswith("hung") and s.endswith("replaced") for s in states), states
    assert {"hung", "idle"} <= seen, f"status showed {seen}"
    o.notes.append(f"stopped worker replaced, run done {recovered} s after the SIGSTOP; status showed {sorted(seen)}")
    return o


def stalled_worker(tmp: Path, model: Path) -> Outcome:
    """A worker whose heartbeat goes on but that finishes nothing for `stall_seconds` (as one stuck in a kernel)
    is replaced; a batch that stalls two workers is recorded as failed, and the run ends."""
    o = Outcome("a stalled worker (alive, no progress) is replaced")
    lab = Lab(tmp, model, n=2, workers=1, new_tokens=2000, stall_seconds=2)  # a batch far longer than 2 s
    lab.cfg["model"]["engine"] = "generate"  # whole batches: neither answer ends before the other (EOS) and is stored
    lab.write()
    rc, out = lab.cli()
    assert rc == 1 and "generate: 100.0 % of its 2 samples ended in an error" in out, out  # max_error_rate
    assert out.count("is stalled (no result for") == 2, out
    errors = [e for (e,) in lab.query("SELECT error FROM results")]
    assert len(errors) == 2 and all("2 workers died while answering this batch" in e for e in errors), errors
    o.notes.append("killed twice as stalled; its batch recorded as failed after the second; exit 1 (every sample an "
                   "error)")
    return o


def bad_files(tmp: Path, model: Path) -> Outcome:
    """Empty and non-UTF-8 files, output_dir a file, a read-only filesystem, a damaged store: one clear line each,
    no traceback."""
    o = Outcome("bad files: empty, not UTF-8, output_dir a file, read-only, damaged store")
    cases = []
    lab = Lab(tmp / "empty", model)
    lab.data.write_text("")
    cases.append(("empty dataset", lab.cli(), 1, "holds no samples"))
    lab = Lab(tmp / "latin1", model)
    tsv = lab.data.with_suffix(".tsv")
    tsv.write_bytes("id\tquestion\tanswer\n1\tcaf\xe9?\tyes\n".encode("latin-1"))
    lab.cfg["datasets"] = [{"name": "qa", "path": str(tsv)}]
    lab.write()
    cases.append(("latin-1 TSV", lab.cli(), 1, f"{tsv}: not UTF-8 text (byte 0xe9 at line 2, column 6)"))
    lab = Lab(tmp / "config", model)
    lab.config.write_bytes(lab.config.read_bytes().replace(b"chaos", "cha\xe9s".encode("latin-1")))
    cases.append(("latin-1 config", lab.cli(), 2, f"config {lab.config}: not UTF-8 text"))
    lab = Lab(tmp / "outfile", model, out=tmp / "outfile" / "runs")
    (tmp / "outfile" / "runs").write_text("not a folder")
    cases.append(("output_dir a file", lab.cli(), 2, "is a file, not a folder"))
    lab = Lab(tmp / "garbage", model)
    lab.run_dir.mkdir(parents=True)
    lab.db.write_bytes(b"this is no database" * 200)
    for verb, args in (("run", ()), ("status", (str(lab.run_dir),)), ("report", (str(lab.run_dir),))):
        cases.append((f"garbage store: {verb}", lab.cli(*args, verb=verb), 2, "is damaged"))
    lab = Lab(tmp / "truncated", model)
    truncated_store(lab.db)
    for verb in ("status", "report"):
        cases.append((f"truncated store: {verb}", lab.cli(str(lab.run_dir), verb=verb), 2, "integrity_check"))
    mount = Mount(tmp / "ro", size_mb=1)
    try:
        mount.sh(f"mount -o remount,ro {mount.path}")
        lab = Lab(tmp / "readonly", model, out=mount.path / "runs")
        cases.append(("read-only filesystem", lab.cli(prefix=mount.prefix), 2, "Read-only file system"))
    finally:
        mount.close()
    for what, (rc, out), code, says in cases:
        assert rc == code and says in out, f"{what}: exit {rc} (expected {code}), no {says!r} in:\n{out}"
        no_traceback(out)
    o.notes.append(f"{len(cases)} cases, each one line naming the file, exit 1 or 2")
    return o


def truncated_store(db: Path) -> None:
    """A real store of 2,000 samples with results, cut to half its size (a copy interrupted, a disk fault)."""
    from evalfleet.records import Result, Sample
    from evalfleet.store import Store

    store = Store(db)
    store.set_meta("config", {"name": "x"})
    store.put_samples([Sample("qa", f"s{i}", "q" * 200, "p" * 200, ["a"]) for i in range(2000)])
    store.add_results("generate", [Result("qa", f"s{i}", "answer " * 20) for i in range(2000)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)


def disk_full(tmp: Path, model: Path) -> Outcome:
    """The disk of the run folder fills up mid-run: a clear message, what was stored survives, and the run
    resumes once space is freed."""
    o = Outcome("disk full mid-run, then freed")
    mount = Mount(tmp / "disk", size_mb=2)
    try:
        lab = Lab(tmp, model, n=16, workers=1, out=mount.path)
        proc = lab.start(prefix=mount.prefix)
        wait_for(lambda: _count_inside(mount, lab) >= 2, 240, "2 results")  # the mount is seen only inside
        mount.sh(f"dd if=/dev/zero of={mount.path}/filler bs=64k", check=False)
        rc, out = lab.finish(proc, timeout=120)
        assert rc == 1 and "is full" in out and str(lab.db) in out, f"exit {rc}:\n{out}"
        no_traceback(out)
        mount.sh(f"rm {mount.path}/filler")
        stored = _count_inside(mount, lab)
        assert stored >= 2, "results stored before the disk filled were lost"
        out = _resume_inside(o, mount, lab)
        o.notes.append(f"exit 1 naming the store; {stored} results kept; resumed after freeing space")
        return o
    finally:
        mount.close()


def failing_filesystem(tmp: Path, model: Path, resume: bool = False) -> Outcome:
    """The filesystem of the run folder fails mid-run (ext4 shut down: every write gives EIO); with `resume`, the
    run resumes after a remount (bench/chaos.py; resuming is tested after a full disk)."""
    o = Outcome("filesystem fails mid-run (EIO)" + (", then remounted" if resume else ""))
    mount = Mount(tmp / "disk", kind="ext4", size_mb=16)
    try:
        lab = Lab(tmp, model, n=16, workers=1, out=mount.path)
        proc = lab.start(prefix=mount.prefix)
        wait_for(lambda: _count_inside(mount, lab) >= 2, 240, "2 results")
        shutdown = ("import fcntl, os, struct; fd = os.open(%r, os.O_RDONLY); "
                    "fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))" % str(mount.path))  # EXT4_IOC_SHUTDOWN
        mount.sh(f'{sys.executable} -c "{shutdown}"')
        rc, out = lab.finish(proc, timeout=120)
        assert rc == 1 and "the filesystem failed" in out and str(lab.db) in out, f"exit {rc}:\n{out}"
        no_traceback(out)
        o.notes.append("exit 1 naming the store and the filesystem")
        if resume:
            mount.sh(f"umount {mount.path} && mount -o loop {mount.image} {mount.path}")
            _resume_inside(o, mount, lab)
            o.notes.append("resumed after a remount")
        return o
    finally:
        mount.close()


def read_only_run_folder(tmp: Path, model: Path) -> Outcome:
    """The run folder turns read-only mid-run (`chattr +i`: no new file in it, even for root; the store's files,
    open already, stay writable): every result is stored, and the report that cannot be written is one line naming
    the folder, after the scores, with exit 1."""
    o = Outcome("run folder read-only mid-run: results stored, one line for the report")
    mount = Mount(tmp / "disk", kind="ext4", size_mb=16)
    try:
        lab = Lab(tmp, model, n=8, workers=1, out=mount.path)
        proc = lab.start(prefix=mount.prefix)
        wait_for(lambda: _count_inside(mount, lab) >= 1, 240, "a result")
        mount.sh(f"chattr +i {lab.run_dir}")
        rc, out = lab.finish(proc, timeout=240)
        assert rc == 1 and f"cannot write the report in {lab.run_dir}" in out, f"exit {rc}:\n{out}"
        assert "lenient_match" in out, f"no scores on the console:\n{out}"
        no_traceback(out)
        stored = _count_inside(mount, lab)
        assert stored == lab.n, f"{stored} of {lab.n} results stored"
        mount.sh(f"chattr -i {lab.run_dir}")
        o.lost = 0
        o.notes.append(f"all {stored} results stored; exit 1 with one line naming the folder, after the tables")
        return o
    finally:
        mount.close()


def _count_inside(mount: Mount, lab: Lab) -> int:
    q = f"import sqlite3; print(sqlite3.connect('{lab.db}').execute('SELECT COUNT(*) FROM results').fetchone()[0])"
    try:
        return int(mount.sh(f'{sys.executable} -c "{q}"', check=False).stdout.strip() or 0)
    except ValueError:
        return 0


def _resume_inside(o: Outcome, mount: Mount, lab: Lab) -> str:
    t0 = time.monotonic()
    rc, out = lab.cli(prefix=mount.prefix)
    assert rc == 0, f"resume exited {rc}:\n{out}"
    o.resume_s = round(time.monotonic() - t0, 1)
    q = (f"import sqlite3; db = sqlite3.connect('{lab.db}'); print(db.execute('SELECT COUNT(*) FROM results WHERE "
         f"error IS NULL').fetchone()[0], db.execute('SELECT SUM(done) FROM workers').fetchone()[0])")
    answered, done = map(int, mount.sh(f'{sys.executable} -c "{q}"').stdout.split())
    o.lost, o.recomputed = lab.n - answered, max(0, done - lab.n)
    assert o.lost == 0, f"{o.lost} lost"
    o.notes.append("resume s: the whole resuming command (the store is seen only inside the mount namespace)")
    return out


def driver_killed_mid_batch(tmp: Path, model: Path) -> Outcome:
    """Only the driver is SIGKILLed while its workers (forked from the fork server, not its children) are in the
    middle of long batches: they die with it within a second or two, not when their batch ends."""
    o = Outcome("driver SIGKILLed mid-batch: its workers die with it")
    lab = Lab(tmp, model, n=16, workers=2, batch=4, new_tokens=400)  # batches of ~10 s or more on CPU
    lab.cfg["model"]["engine"] = "generate"  # whole batches: no result comes back before the batch ends
    lab.write()
    proc = lab.start()
    wait_for(lambda: len(lab.worker_pids("running")) == 2, 240, "both workers loaded")
    time.sleep(1)  # each holds a chunk now, its batch started
    workers = lab.worker_pids()
    assert lab.results() == 0, "a batch ended before the kill: the scenario proves nothing"
    t0 = time.monotonic()
    proc.kill()
    proc.wait()
    try:
        wait_for(lambda: not any(alive(p) for p in workers), 2, "the workers to die with their driver")
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    o.stop_s = round(time.monotonic() - t0, 2)
    o.notes.append(f"both workers gone {o.stop_s} s after the driver's SIGKILL, mid-batch")
    return o


def every_worker_dies(tmp: Path, model: Path) -> Outcome:
    """Every worker killed as soon as it starts, again and again: the run gives up with one clear line."""
    o = Outcome("every worker dies repeatedly")
    lab = Lab(tmp, model, n=8, workers=1)
    proc = lab.start()
    killed: set[int] = set()
    while proc.poll() is None:
        for pid in lab.worker_pids():
            if pid not in killed and alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)
    out = proc.stdout.read()
    assert proc.returncode == 1 and "every worker of stage generate died" in out, f"exit {proc.returncode}:\n{out}"
    no_traceback(out)
    lab.resume(o)
    o.notes.append(f"{len(killed)} workers killed; exit 1 with one line; resumed to the end")
    return o


FIXES: list[Scenario] = [sigterm, sigint_ignored, slurm_requeue, fresh_while_running, refused_run_changes_nothing,
                         status_two_drivers, hung_worker, stalled_worker, bad_files, disk_full, failing_filesystem, every_worker_dies,
                         driver_killed_mid_batch, read_only_run_folder]
"""The scenarios of issue 16's fixes and issue 38's (tests/test_faults.py runs each)."""
