"""Faults injected from outside into real `evalfleet run` processes (SmolLM2 on CPU): signals, kills, stopped
workers, a second driver, a full disk, a failing filesystem, bad files. Each scenario runs the real CLI and checks
what a user would check; it returns an `Outcome` (raising AssertionError, with what was seen, when a check fails).

Used by tests/test_faults.py (the scenarios of the fixes) and bench/chaos.py (all of them, as a table).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEMO_QUESTIONS = Path(__file__).parents[1] / "src" / "evalfleet" / "data" / "demo_questions.jsonl"
EXIT_PREEMPTED, EXIT_INTERRUPTED = 75, 130


@dataclass
class Outcome:
    """What one scenario saw."""

    scenario: str
    lost: int | None = None
    """Samples without an answer once the run was resumed to its end."""
    recomputed: int | None = None
    """Samples answered more than once by workers (work done twice: what a killed process held)."""
    resume_s: float | None = None
    """From the resuming command's start to its first new stored result (or to its exit, when nothing was left)."""
    stop_s: float | None = None
    """From the fault (a signal) to the driver's exit."""
    notes: list[str] = field(default_factory=list)
    passed: bool = True
    answers: dict[str, str] | None = None
    """The answers at the end, where the scenario ran to the end (compared with an uninterrupted run's)."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := cond():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Lab:
    """A run of SmolLM2 over the first `n` demo questions, driven through the CLI in subprocesses."""

    def __init__(self, root: Path, model: Path, *, n: int = 12, workers: int = 1, batch: int = 2,
                 new_tokens: int = 6, name: str = "chaos", out: Path | None = None, **over: object) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.n = root, n
        self.data = root / "qa.jsonl"
        self.data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]))
        self.cfg: dict = {
            "name": name, "output_dir": str(out or root / "runs"), "workers": workers, "judge_cache": None,
            "metrics": ["lenient_match", "exact_match"],
            "model": {"path": str(model), "dtype": "float32", "batch_size": batch,
                      "generation": {"max_new_tokens": new_tokens}},
            "datasets": [{"name": "qa", "path": str(self.data)}], **over}
        self.config = root / f"{name}.yaml"
        self.write()
        self.run_dir = Path(self.cfg["output_dir"]) / name
        self.db = self.run_dir / "store.db"

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.cfg))

    # -- processes ------------------------------------------------------------------------------
    def command(self, *args: str, verb: str = "run") -> list[str]:
        return [sys.executable, "-m", "evalfleet.cli", verb, *(args or (str(self.config),))]

    def start(self, *args: str, prefix: tuple[str, ...] = (), verb: str = "run", **kw) -> subprocess.Popen:
        return subprocess.Popen([*prefix, *self.command(*args, verb=verb)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)

    def cli(self, *args: str, prefix: tuple[str, ...] = (), verb: str = "run", timeout: float = 300) -> tuple[int, str]:
        p = subprocess.run([*prefix, *self.command(*args, verb=verb)], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
        out = proc.communicate(timeout=timeout)[0]
        return proc.returncode, out

    # -- the store, read as another process would -----------------------------------------------
    def query(self, sql: str, *args: object) -> list[tuple]:
        if not self.db.exists():
            return []
        db = sqlite3.connect(self.db, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # created, schema not written yet
            return []
        finally:
            db.close()

    def results(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM results")  # none while the store is created, its schema not yet written
        return rows[0][0] if rows else 0

    def answers(self) -> dict[str, str]:
        return dict(self.query("SELECT sample_id, output FROM results WHERE error IS NULL"))

    def lost(self) -> int:
        return self.n - len(self.answers())

    def recomputed(self) -> int:
        done = self.query("SELECT COALESCE(SUM(done), 0) FROM workers")
        return max(0, (done[0][0] if done else 0) - self.n)

    def leases(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM leases")
        return rows[0][0] if rows else 0

    def worker_pids(self, state: str | None = None) -> list[int]:
        rows = self.query("SELECT pid, state FROM workers")
        return [pid for pid, st in rows if state is None or st == state]

    def state(self) -> dict:
        rows = self.query("SELECT value FROM meta WHERE key = 'state'")
        return json.loads(rows[0][0]) if rows else {}

    def dump(self) -> list[str]:
        """Every row of the store as SQL, to compare a store before and after a command."""
        db = sqlite3.connect(self.db)
        try:
            return list(db.iterdump())
        finally:
            db.close()

    def wait_results(self, k: int, proc: subprocess.Popen | None = None, timeout: float = 240) -> int:
        def enough() -> int:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {proc.returncode}) before {k} results:\n{proc.stdout.read()}")
            return self.results() >= k and self.results()
        return int(wait_for(enough, timeout, f"{k} results"))

    def resume(self, outcome: Outcome, *args: str, prefix: tuple[str, ...] = ()) -> str:
        """Run the same command again to its end; records the time to its first new result, lost and recomputed."""
        before, t0 = self.results(), time.monotonic()
        proc = self.start(*args, prefix=prefix)
        first = None
        while proc.poll() is None:
            if first is None and self.results() > before:
                first = time.monotonic() - t0
            time.sleep(0.05)
        out = proc.stdout.read()
        assert proc.returncode == 0, f"resume exited {proc.returncode}:\n{out}"
        outcome.resume_s = round(first if first is not None else time.monotonic() - t0, 1)
        outcome.lost, outcome.recomputed, outcome.answers = self.lost(), self.recomputed(), self.answers()
        assert outcome.lost == 0, f"{outcome.lost} samples lost"
        return out


def no_traceback(out: str) -> None:
    assert "Traceback" not in out, f"a traceback reached the console:\n{out}"


class Mount:
    """A private mount namespace holding a small filesystem at `path` (tmpfs, or ext4 on a loop device), kept by
    a sleeping holder process; commands run inside with `prefix`. Needs root (CI and the dev machines run as root)."""

    def __init__(self, path: Path, kind: str = "tmpfs", size_mb: int = 4) -> None:
        self.path, self.kind = path, kind
        path.mkdir(parents=True, exist_ok=True)
        if kind == "ext4":
            self.image = path.parent / f"{path.name}.img"
            with open(self.image, "wb") as f:
                f.truncate(size_mb << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
            mount = f"mount -o loop {self.image} {path}"
        else:
            mount = f"mount -t tmpfs -o size={size_mb}m tmpfs {path}"
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                        f"{mount} && echo ready && exec sleep 3600"], stdout=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        assert line.strip() == "ready", f"could not mount a {kind} at {path} (needs root)"
        self.prefix = ("nsenter", "-t", str(self.holder.pid), "-m", "--")

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, "sh", "-c", command], capture_output=True, text=True, check=check)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()
        if self.kind == "ext4":
            self.image.unlink(missing_ok=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()

