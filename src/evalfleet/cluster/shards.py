"""Deterministic shards of a run: task i of N takes the samples whose stable hash falls in its share, writes
its own store under RUN_DIR/shards/, and `evalfleet merge` unites the shard stores into the run's store.

No coordination is needed between shards (Slurm array tasks on a network filesystem whose locking
cannot be trusted): the split depends only on the dataset name and sample id, after `limit`/`shuffle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from evalfleet.errors import UserError
from evalfleet.store import Store


def parse_shard(text: str) -> tuple[int, int]:
    """`i/N` (0 <= i < N), or `slurm`: the array task's index among SLURM_ARRAY_TASK_COUNT tasks."""
    if text == "slurm":
        try:
            task, first = int(os.environ["SLURM_ARRAY_TASK_ID"]), int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UserError("--shard slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set "
                            "(not inside a Slurm job array?)") from None
        text = f"{task - first}/{count}"
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/N (e.g. 0/4) or `slurm`") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: the index must be in 0..{count - 1}")
    return index, count


def in_shard(dataset: str, sample_id: str, index: int, count: int) -> bool:
    """Whether the sample belongs to shard `index` of `count` (a stable hash of dataset and id)."""
    digest = hashlib.sha256(f"{dataset}\0{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def shard_dir(run_dir: Path, index: int, count: int) -> Path:
    return run_dir / "shards" / f"{index}-of-{count}"


def merge_shards(run_dir: Path) -> tuple[Store, list[str]]:
    """Unite RUN_DIR/shards/*/store.db into RUN_DIR/store.db (results already there are kept); returns the
    store and notes on shards that are missing or unfinished.

    Raises:
        UserError: no shard found, or shards of different counts or with other settings.
    """
    shards = sorted(p for p in (run_dir / "shards").glob("*-of-*") if (p / "store.db").is_file())
    if not shards:
        raise UserError(f"no shard stores under {run_dir / 'shards'} (runs made with --shard i/N)")
    counts = {p.name.split("-of-")[1] for p in shards}
    if len(counts) != 1:
        raise UserError(f"{run_dir / 'shards'} holds shards of different counts ({', '.join(sorted(counts))})")
    count = int(counts.pop())
    store = Store(run_dir / "store.db")
    notes = [f"shard {i}-of-{count} is missing" for i in range(count)
             if not (shard_dir(run_dir, i, count) / "store.db").is_file()]
    fingerprints: dict[str, str] = {}
    for path in shards:
        src = sqlite3.connect(path / "store.db")
        try:
            meta = dict(src.execute("SELECT key, value FROM meta"))
            for key, value in meta.items():
                if key.startswith("fingerprint:") and fingerprints.setdefault(key, value) != value:
                    raise UserError(f"shard {path.name} was made with other {key.split(':')[1]} settings than the "
                                    "shards before it")
            state = json.loads(meta.get("state", "{}"))
            if state.get("state") != "done":
                notes.append(f"shard {path.name} is not done ({state.get('state', 'not started')})")
            with store.db:
                store.db.execute("BEGIN IMMEDIATE")
                for table in ("datasets", "samples", "results"):
                    # by name: a shard made by an older evalfleet may lack newer columns
                    columns = [r[1] for r in store.db.execute(f"PRAGMA table_info({table})")]
                    have = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
                    rows = src.execute(f"SELECT {', '.join(c if c in have else 'NULL' for c in columns)} "
                                       f"FROM {table}").fetchall()
                    verb = "INSERT OR REPLACE" if table == "datasets" else "INSERT OR IGNORE"
                    store.db.executemany(f"{verb} INTO {table} VALUES ({','.join('?' * len(columns))})", rows)
                store.db.executemany("INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [(f"{path.name}/{r[0]}", *r[1:]) for r in src.execute("SELECT * FROM workers")])
                for key, value in meta.items():
                    if key == "config":
                        cfg = json.loads(value)
                        cfg["shard"] = None
                        store.set_meta("config", cfg)
                    elif key.startswith("performance:"):
                        store.set_meta(f"{key}:{path.name}", json.loads(value))
                    elif key.startswith("fingerprint:") or key == "name":
                        store.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        finally:
            src.close()
    _merge_performance(store)
    for ds in store.datasets():  # counts of the whole run
        n = store.db.execute("SELECT COUNT(*) FROM samples WHERE dataset = ?", (ds["name"],)).fetchone()[0]
        store.set_dataset(ds["name"], ds["status"], n, ds["error"])
    store.set_meta("state", {"state": "done" if not notes else "partial: " + "; ".join(notes)})
    return store, notes


def _merge_performance(store: Store) -> None:
    """Per stage, the shards' figures as parallel tasks: the longest wall and load times, summed rates and
    GPU-hours, every worker (named by its shard)."""
    by_stage: dict[str, list[dict]] = {}
    for key, value in store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'performance:%:%'"):
        _, stage, shard = key.split(":", 2)
        perf = json.loads(value)
        perf["workers"] = {f"{shard}/{w}": u for w, u in perf.get("workers", {}).items()}
        by_stage.setdefault(stage, []).append(perf)
    for stage, perfs in by_stage.items():
        merged: dict = {"shards": len(perfs), "workers": {w: u for p in perfs for w, u in p["workers"].items()}}
        for k in ("wall_s", "load_wall_s", "unload_wall_s"):
            merged[k] = max((p[k] for p in perfs if p.get(k) is not None), default=None)
        for k in ("samples_per_s", "generated_tokens_per_s", "gpu_hours", "samples", "generated_tokens"):
            merged[k] = round(sum(p.get(k) or 0 for p in perfs), 4)
        store.set_meta(f"performance:{stage}", merged)
