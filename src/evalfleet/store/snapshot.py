"""An existing run folder's store and log as they were before a driver started on it (issue 38, item 4): a driver
that stores nothing (its model fails to load, say) puts the folder back byte for byte. The store is copied only up
to `LIMIT` bytes (a resume should not copy a large store each time) and only while no other driver is recorded
as running on it; otherwise the driver's own rows are taken out again (`Store.restore_run_record`) and the files'
bytes may differ."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

LIMIT = 256 * 2**20
STORE_FILES = ("store.db", "store.db-wal", "store.db-shm")


@dataclass
class Snapshot:
    run_dir: Path
    copies: dict[str, Path | None]
    """Each store file: its copy, or None where it did not exist."""
    log_size: int | None
    """run.log's size (None: there was none)."""
    folder: Path
    rows: tuple[int, int]
    """(results, drivers) in the store then: a store that holds others since (another driver came) is not put back."""

    @classmethod
    def before(cls, run_dir: Path) -> Snapshot | None:
        """A copy of the run's store files, if the run folder holds a store of at most LIMIT bytes."""
        files = {name: run_dir / name for name in STORE_FILES}
        if not files["store.db"].exists() or sum(p.stat().st_size for p in files.values() if p.exists()) > LIMIT:
            return None
        folder = Path(tempfile.mkdtemp(prefix="evalfleet-snapshot-"))
        copies: dict[str, Path | None] = {}
        for name, path in files.items():
            copies[name] = None
            if path.exists():
                copies[name] = folder / name
                shutil.copy2(path, copies[name])
        log = run_dir / "run.log"
        snapshot = cls(run_dir, copies, log.stat().st_size if log.exists() else None, folder, _rows(files["store.db"]))
        if _running(files["store.db"]):  # another driver may be writing: its work is not put back
            snapshot.drop()
            return None
        return snapshot

    def restore(self, log_path: Path) -> Path | None:
        """Put the store files back and cut run.log to its old size (this driver's lines go to a log in the
        temporary folder, whose path is returned, or None where `log_path` is not the run's log). Nothing is put
        back where the store's results or drivers changed meanwhile (another driver works on the run)."""
        if _rows(self.run_dir / "store.db") != self.rows:
            return None
        for name, copy in self.copies.items():
            target = self.run_dir / name
            if copy is None:
                target.unlink(missing_ok=True)
            else:
                shutil.copy2(copy, target)
        kept = None
        log = self.run_dir / "run.log"
        if log_path == log and log.exists():
            kept = Path(tempfile.gettempdir()) / f"evalfleet-{self.run_dir.name}-{os.getpid()}.log"
            with open(log, "rb") as f:
                f.seek(self.log_size or 0)
                kept.write_bytes(f.read())
            if self.log_size is None:
                log.unlink()
            else:
                os.truncate(log, self.log_size)
        return kept

    def drop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _rows(path: Path) -> tuple[int, int]:
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:  # (read-write: the last connection to
            return (db.execute("SELECT count(*) FROM results").fetchone()[0],
                    db.execute("SELECT count(*) FROM drivers").fetchone()[0])  # close removes -wal and -shm)
    except sqlite3.Error:
        return (-1, -1)


def _running(path: Path) -> bool:
    """Whether a driver is recorded as running on the store (or it cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM drivers WHERE state = 'running'").fetchone()[0] > 0
    except sqlite3.Error:
        return True
