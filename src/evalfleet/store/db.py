"""The run store: one SQLite database (WAL) per run folder.

Rows are keyed by (stage, dataset, sample id) and written with INSERT OR IGNORE, so several drivers
writing to one run can never produce two results for one sample; the first committed result wins.
Drivers of several `evalfleet run` processes on one run share the work through leases: a driver claims
samples before a worker gets them, renews its claims while it lives, and a claim that expires (or
whose process is gone, on the same host) may be taken by another. Stages share the samples table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from evalfleet.errors import UserError
from evalfleet.records import Result, Sample
from evalfleet.scoring.score import Score, score_from_json
from evalfleet.store.health import StoreReplaced, connect, describe
from evalfleet.store.hosts import pid_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, n_samples INTEGER, error TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS samples (
    dataset TEXT NOT NULL, id TEXT NOT NULL, position INTEGER NOT NULL, question TEXT, prompt TEXT,
    answers TEXT, source TEXT, error TEXT, metadata TEXT, context TEXT, PRIMARY KEY (dataset, id));
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL, dataset TEXT NOT NULL, sample_id TEXT NOT NULL, output TEXT, error TEXT,
    worker TEXT, seconds REAL, n_tokens INTEGER, created REAL NOT NULL, prompt TEXT,
    PRIMARY KEY (stage, dataset, sample_id));
CREATE TABLE IF NOT EXISTS leases (
    stage TEXT NOT NULL, dataset TEXT NOT NULL, sample_id TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (stage, dataset, sample_id));
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, device TEXT, pid INTEGER, state TEXT, started REAL, heartbeat REAL,
    done INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS drivers (
    owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, state TEXT NOT NULL, started REAL NOT NULL,
    heartbeat REAL NOT NULL, ended REAL);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS results_failed ON results (stage, dataset) WHERE error IS NOT NULL;
CREATE INDEX IF NOT EXISTS samples_failed ON samples (dataset) WHERE error IS NOT NULL;
CREATE INDEX IF NOT EXISTS results_made ON results (stage, created) WHERE worker IS NOT NULL AND worker != 'cache';
"""
"""What `status` counts without reading every row of a million-sample run: errors (few, so the indexes are small),
and when each result a worker made was stored (for the rate). Built when a store from before them is opened."""
ADDED_COLUMNS = {"samples": ["context TEXT", "images TEXT", "video TEXT"], "results": ["prompt TEXT", "score TEXT"]}
"""Columns newer than the first stores, added to an older store when it is opened."""


EMPTY_JSON = {"[]": list, "{}": dict, "null": lambda: None}


def sample_rows(samples: list[Sample], positions: list[int] | None = None) -> Iterator[tuple]:
    """The samples table's rows of `samples`, one at a time."""
    shared: dict[int, str] = {}  # a dataset's samples share one context (system prompt, few-shot turns) list
    texts: dict[tuple[str, ...], str] = {}  # answer lists repeat (yes, no, a few hundred organs): dumped once
    for i, s in zip(positions or range(len(samples)), samples):
        if not s.context:  # JSON text, never empty
            context = "[]"
        elif (context := shared.get(id(s.context))) is None:
            context = shared[id(s.context)] = json.dumps(s.context)
        answers = "[]"
        if s.answers and (answers := texts.get(key := tuple(s.answers))) is None:
            answers = json.dumps(s.answers)
            if len(texts) < 10_000:
                texts[key] = answers
        yield (s.dataset, s.id, i, s.question, s.prompt, answers, s.source, s.error,
               json.dumps(s.metadata) if s.metadata else "{}", context,
               json.dumps([{"where": r.where, "path": r.path} for r in s.images]) if s.images else "[]",
               json.dumps(dataclasses.asdict(s.video)) if s.video is not None else None)


class Store:
    """Thin typed access to the run database. Only the driver process writes results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = connect(path)
            self.db.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in have:
                        try:
                            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                        except sqlite3.OperationalError as err:  # another driver opening it added it first
                            if "duplicate column" not in str(err):
                                raise
            self.db.executescript(INDEXES)  # after the columns: an old store's are added first
        except sqlite3.Error as err:
            raise describe(err, path) from err
        self.file_id = self._file_id()

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check_same_file(self) -> None:
        """Raise StoreReplaced when the file at `path` is no longer the one this store opened (deleted, or
        replaced by `--fresh` from another shell): what is written here would reach no one."""
        if self._file_id() != self.file_id:
            raise StoreReplaced(
                f"{self.path} was deleted or replaced while this run was writing to it (`--fresh` from another shell?). "
                "This driver stopped without writing reports; its results since then are not in the new store")

    @classmethod
    def open_existing(cls, run_dir: Path) -> Store:
        path = run_dir / "store.db"
        if not path.is_file():
            raise UserError(f"no run found in {run_dir} (missing {path})")
        return cls(path)

    def close(self) -> None:
        self.db.close()

    def unused(self) -> bool:
        """Whether no result is stored and no driver is recorded (one that failed to start forgot its rows)."""
        return not any(self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                       for table in ("results", "drivers", "workers"))

    # -- run identity -------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def fingerprint_conflict(self, stage: str, fingerprint: str) -> str | None:
        """Why a stage may not resume here (its results were made with other model settings), or None. Reads only."""
        old = self.get_meta(f"fingerprint:{stage}")
        if old is None or old == fingerprint:
            return None
        return (f"{self.path} holds results of stage {stage!r} made with other model, generation or judge "
                f"settings (fingerprint {old}, now {fingerprint}); use --fresh to start over, --redo {stage} to "
                "compute that stage again, or another run name")

    def set_fingerprint(self, stage: str, fingerprint: str) -> None:
        self.set_meta(f"fingerprint:{stage}", fingerprint)

    # -- datasets and samples -----------------------------------------------------------------
    def set_dataset(self, name: str, status: str, n_samples: int | None = None, error: str | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?)", (name, status, n_samples, error, time.time())
        )

    def datasets(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT name, status, n_samples, error FROM datasets ORDER BY rowid")
        return [dict(zip(("name", "status", "n_samples", "error"), r)) for r in cur]

    def put_samples(self, samples: list[Sample], positions: list[int] | None = None) -> None:
        """Store samples in dataset order (`positions`: their places in the whole dataset, for a shard), in one
        transaction; their rows are made as SQLite takes them, not held all at once."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO samples (dataset, id, position, question, prompt, answers, "
                                "source, error, metadata, context, images, video) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                sample_rows(samples, positions))

    def changed_prompts(self, stage: str, samples: list[Sample]) -> list[str]:
        """Ids of `samples` answered at `stage` when their prompt or context (system, few-shot) was another."""
        if not samples:
            return []
        stored = self.db.execute(
            """SELECT s.id, s.prompt, s.context FROM samples s JOIN results r
                 ON r.stage = ? AND r.dataset = s.dataset AND r.sample_id = s.id WHERE s.dataset = ?""",
            (stage, samples[0].dataset)).fetchall()
        if not stored:  # nothing answered yet (a fresh run): no need to index the samples
            return []
        now = {s.id: (s.prompt, s.context) for s in samples}
        return [i for i, prompt, context in stored if i in now and now[i] != (prompt, json.loads(context or "[]"))]

    # -- results ------------------------------------------------------------------------------
    def done_ids(self, stage: str, dataset: str) -> set[str]:
        cur = self.db.execute("SELECT sample_id FROM results WHERE stage = ? AND dataset = ?", (stage, dataset))
        return {r[0] for r in cur}

    def add_results(self, stage: str, results: Iterable[Result]) -> int:
        """Insert results in one transaction; returns how many were new (duplicates are ignored)."""
        now = time.time()
        rows = [
            (stage, r.dataset, r.sample_id, r.output, r.error, r.worker, r.seconds, r.n_tokens, now, r.prompt,
             None if r.score is None else r.score.to_json())
            for r in results
        ]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO results (stage, dataset, sample_id, output, error, worker, "
                                "seconds, n_tokens, created, prompt, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                rows)
            return self.db.total_changes - before

    def set_scores(self, stage: str, dataset: str, scores: dict[str, Score | None]) -> None:
        """Store (or replace) the scores of results already stored: {sample id: score}."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE results SET score = ? WHERE stage = ? AND dataset = ? AND sample_id = ?",
                                [(None if v is None else v.to_json(), stage, dataset, k) for k, v in scores.items()])

    def forget_stage(self, stage: str) -> None:
        """Drop a stage's results and settings so that it runs again (the judge cache stays)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM results WHERE stage = ?", (stage,))
            self.db.execute("DELETE FROM meta WHERE key = ?", (f"fingerprint:{stage}",))

    def clear_errors(self, stage: str) -> int:
        """Forget failed results so that the next run retries them."""
        with self.db:
            return self.db.execute("DELETE FROM results WHERE stage = ? AND error IS NOT NULL", (stage,)).rowcount

    def rows(self, stage: str, dataset: str, ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Samples of a dataset in load order (or only `ids`), joined with their result at `stage` (if any)."""
        query = """SELECT s.id, s.question, NULLIF(s.prompt, s.question), s.answers, s.metadata, r.output,
                          COALESCE(r.error, s.error),
                          r.worker, r.seconds, r.n_tokens, r.sample_id IS NOT NULL OR s.error IS NOT NULL,
                          s.context, r.prompt, r.score, s.images
                   FROM samples s LEFT JOIN results r
                     ON r.stage = ? AND r.dataset = s.dataset AND r.sample_id = s.id
                   WHERE s.dataset = ?"""
        wanted = list(ids) if ids is not None else None
        parts = [(query + " ORDER BY s.position", [])] if wanted is None else [
            (query + f" AND s.id IN ({','.join('?' * len(wanted[i:i + 500]))}) ORDER BY s.position", wanted[i:i + 500])
            for i in range(0, len(wanted), 500)]
        keys = ("id", "question", "prompt", "answers", "metadata", "prediction", "error", "worker", "seconds",
                "n_tokens", "finished", "context", "rendered_prompt", "score", "images")
        lists: dict[str, list] = {}  # answers and contexts repeat (yes/no, a dataset's system prompt): decoded once
        for sql, args in parts:
            for r in self.db.execute(sql, (stage, dataset, *args)):
                row = dict(zip(keys, r))
                for key, empty in (("answers", "[]"), ("metadata", "{}"), ("context", "[]"), ("images", "null")):
                    text = row[key] or empty  # most rows' metadata, context and images are empty: nothing to decode
                    if made := EMPTY_JSON.get(text):
                        row[key] = made()
                    elif key in ("answers", "context"):
                        if (seen := lists.get(text)) is None:
                            seen = json.loads(text)
                            if len(lists) < 10_000:
                                lists[text] = seen
                        row[key] = list(seen)
                    else:
                        row[key] = json.loads(text)
                row["score"] = score_from_json(row["score"])  # a `Score` (scoring/score.py), or None
                if row["prompt"] is None:  # the question itself: one text, not two copies
                    row["prompt"] = row["question"]
                row["finished"] = bool(row["finished"])
                yield row

    def counts(self, stage: str, dataset: str) -> tuple[int, int, int]:
        """(samples, finished, errors) of a dataset at `stage`; a sample that failed to load counts as a finished error
        (it has no result). Counted from the keys and the error indexes: no row of text is read."""
        def count(where: str, table: str = "results") -> int:
            sql = f"SELECT COUNT(*) FROM {table} s WHERE {where}"
            return int(self.db.execute(sql, {"stage": stage, "ds": dataset}).fetchone()[0])

        samples = count("dataset = :ds", "samples")
        results = count("stage = :stage AND dataset = :ds")
        failed = count("stage = :stage AND dataset = :ds AND error IS NOT NULL")
        unloaded = count("dataset = :ds AND error IS NOT NULL AND NOT EXISTS (SELECT 1 FROM results r WHERE "
                         "r.stage = :stage AND r.dataset = :ds AND r.sample_id = s.id)", "samples")
        return samples, results + unloaded, failed + unloaded

    def finish_times(self, stage: str, since: float = 0.0) -> list[float]:
        """When each result of `stage` (made by a worker, not taken from the cache) was stored, oldest first."""
        cur = self.db.execute("SELECT created FROM results WHERE stage = ? AND created >= ? AND worker IS NOT NULL "
                              "AND worker != 'cache' ORDER BY created", (stage, since))
        return [r[0] for r in cur]

    def made_since(self, stage: str, since: float = 0.0) -> int:
        """How many results of `stage` workers made (not the cache) since `since` (`finish_times`, counted)."""
        return int(self.db.execute("SELECT COUNT(*) FROM results WHERE stage = ? AND created >= ? AND worker IS NOT "
                                   "NULL AND worker != 'cache'", (stage, since)).fetchone()[0])

    # -- leases: several drivers on one run -----------------------------------------------------
    def claim(self, stage: str, dataset: str, ids: list[str], owner: str, ttl: float) -> set[str]:
        """Lease the samples of `ids` that have no result and no live lease of another driver; returns them.

        A lease is live until it expires, except that one held by a process that no longer exists on
        this host is taken over at once.
        """
        now, host = time.time(), socket.gethostname()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            taken: set[str] = set()
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                done = {r[0] for r in self.db.execute(
                    f"SELECT sample_id FROM results WHERE stage = ? AND dataset = ? AND sample_id IN ({marks})",
                    (stage, dataset, *part))}
                for sid, other, other_host, pid, expires in self.db.execute(
                        f"SELECT sample_id, owner, host, pid, expires FROM leases WHERE stage = ? AND dataset = ? "
                        f"AND sample_id IN ({marks})", (stage, dataset, *part)):
                    alive = expires > now and not (other_host == host and not pid_alive(pid))
                    if other != owner and alive:
                        taken.add(sid)
                mine = [sid for sid in part if sid not in done and sid not in taken]
                self.db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    [(stage, dataset, sid, owner, host, os.getpid(), now + ttl) for sid in mine])
                taken |= done
        return set(ids) - taken

    def renew(self, owner: str, ttl: float) -> None:
        """Extend every lease of `owner`."""
        self.db.execute("UPDATE leases SET expires = ? WHERE owner = ?", (time.time() + ttl, owner))

    def release(self, owner: str) -> None:
        """Drop every lease of `owner` (its stage is done) and any lease on a sample that has its result."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            self.db.execute("""DELETE FROM leases WHERE EXISTS (SELECT 1 FROM results r WHERE r.stage = leases.stage
                               AND r.dataset = leases.dataset AND r.sample_id = leases.sample_id)""")

    # -- drivers: the `evalfleet run` processes working on this run ---------------------------------
    def driver_state(self, owner: str, state: str) -> None:
        """Record this process's driver (`owner` names it on its leases) as `state`; any state but `running` ends it."""
        now = time.time()
        ended = None if state == "running" else now
        self.db.execute(
            """INSERT INTO drivers (owner, host, pid, state, started, heartbeat, ended) VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(owner) DO UPDATE SET state = excluded.state, heartbeat = excluded.heartbeat,
                 ended = excluded.ended""",
            (owner, socket.gethostname(), os.getpid(), state, now, now, ended))

    def run_record(self) -> dict[str, list[tuple]]:
        """The rows a driver rewrites as it starts (the run's config, name, state and fingerprints, the datasets'
        states), as they are: `restore_run_record` puts them back when it fails to start."""
        return {"meta": self.db.execute("SELECT key, value FROM meta WHERE key IN ('config', 'name', 'state') "
                                        "OR key LIKE 'fingerprint:%'").fetchall(),
                "datasets": self.db.execute("SELECT * FROM datasets").fetchall()}

    def restore_run_record(self, record: dict[str, list[tuple]]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM meta WHERE key IN ('config', 'name', 'state') OR key LIKE 'fingerprint:%'")
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", record["meta"])
            self.db.execute("DELETE FROM datasets")
            self.db.executemany("INSERT INTO datasets VALUES (?, ?, ?, ?, ?)", record["datasets"])

    def forget_driver_if_idle(self, owner: str) -> bool:
        """Drop the rows of a driver that stored no result (it failed to start): True if it had none."""
        workers = f"%@{owner.rsplit(':', 1)[0]}"
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT COALESCE(SUM(done), 0) FROM workers WHERE id LIKE ?", (workers,)).fetchone()[0]:
                return False
            self.db.execute("DELETE FROM workers WHERE id LIKE ?", (workers,))
            self.db.execute("DELETE FROM drivers WHERE owner = ?", (owner,))
            self.db.execute("DELETE FROM leases WHERE owner = ?", (owner,))
        return True

    def driver_heartbeat(self, owner: str) -> None:
        self.db.execute("UPDATE drivers SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def drivers(self) -> list[dict[str, Any]]:
        keys = ("owner", "host", "pid", "state", "started", "heartbeat", "ended")
        return [dict(zip(keys, r)) for r in self.db.execute(f"SELECT {', '.join(keys)} FROM drivers ORDER BY rowid")]

    def live_drivers(self, stale_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """Drivers recorded as running that still live: on this host, their process exists; on another host,
        their heartbeat is younger than `stale_s`."""
        now, host = time.time() if now is None else now, socket.gethostname()
        return [d for d in self.drivers() if d["state"] == "running" and (
            pid_alive(d["pid"]) if d["host"] == host else now - d["heartbeat"] < stale_s)]

    # -- workers ------------------------------------------------------------------------------
    def worker_state(self, worker_id: str, *, device: str, pid: int | None, state: str) -> None:
        now = time.time()
        self.db.execute(
            """INSERT INTO workers (id, device, pid, state, started, heartbeat, done) VALUES (?, ?, ?, ?, ?, ?, 0)
               ON CONFLICT(id) DO UPDATE SET device = excluded.device, pid = excluded.pid,
                 state = excluded.state, heartbeat = excluded.heartbeat""",
            (worker_id, device, pid, state, now, now),
        )

    def worker_progress(self, worker_id: str, n_done: int) -> None:
        self.db.execute(
            "UPDATE workers SET done = done + ?, heartbeat = ? WHERE id = ?", (n_done, time.time(), worker_id)
        )

    def workers(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, device, pid, state, started, heartbeat, done FROM workers ORDER BY rowid")
        return [dict(zip(("id", "device", "pid", "state", "started", "heartbeat", "done"), r)) for r in cur]
