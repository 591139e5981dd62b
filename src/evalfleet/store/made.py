"""What a run makes before it stores anything (its folder, the folders above it, the judge cache), and taking it
away again when the run stored nothing: `run.py` removes a folder it made, and puts back an existing one byte for
byte with `store/snapshot.py`."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from evalfleet.errors import RunError, UserError
from evalfleet.store.db import Store
from evalfleet.store.judge_cache import JudgeCache


@dataclass
class Made:
    """What a run is about to make: its folder and the folders above it that do not exist yet, and the judge cache.
    A run that stores nothing (refused by a worker that cannot load its model, stopped while loading) removes them
    again, so that nothing is left for `status` to list."""

    run_dir: Path
    folders: list[Path]
    """The run folder and the folders above it that do not exist yet (none when the run folder exists)."""
    cache: Path | None
    """The judge cache, if it does not exist yet."""

    @classmethod
    def before(cls, run_dir: Path, cache: Path | None) -> Made:
        """What is not there yet of the run folder `run_dir` and the judge cache `cache`."""
        folders = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        return cls(run_dir, folders, cache if cache is not None and not cache.exists() else None)

    def discard_if_unused(self, log_path: Path) -> Path | None:
        """Remove what this run made if it stored nothing and no other driver came: the new path of the log (moved
        out of the run folder to the temporary folder), or None where nothing was removed."""
        if not self.folders or not _unused(self.run_dir / "store.db"):
            return None
        if log_path.is_relative_to(self.run_dir) and log_path.exists():
            kept = Path(tempfile.gettempdir()) / f"evalfleet-{self.run_dir.name}-{os.getpid()}.log"
            shutil.move(log_path, kept)
            log_path = kept
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for folder in self.folders[1:]:  # the run folder's parents made for it, unless another run uses them now
            with contextlib.suppress(OSError):
                folder.rmdir()
        if self.cache is not None and self.cache.exists() and _unused(self.cache, judge_cache=True):
            for path in (self.cache, *(self.cache.with_name(self.cache.name + end) for end in ("-wal", "-shm"))):
                path.unlink(missing_ok=True)
        return log_path


def _unused(path: Path, judge_cache: bool = False) -> bool:
    """Whether the store (or judge cache) at `path` holds nothing of a run: absent, or without results and drivers."""
    if not path.exists():
        return True
    try:
        opened = JudgeCache(path) if judge_cache else Store(path)
    except (UserError, RunError, sqlite3.Error, OSError):  # damaged or unreadable: not ours to delete
        return False
    try:
        return opened.empty() if isinstance(opened, JudgeCache) else opened.unused()
    finally:
        opened.close()
