"""What went wrong with a store, said so that a user can act on it: a damaged file, a full disk, a read-only or
failing filesystem, or a store replaced under a running driver."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evalfleet.errors import RunError, UserError


def connect(path: Path) -> sqlite3.Connection:
    """A WAL-mode connection that waits (up to a minute) for other writers instead of failing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    deadline = time.monotonic() + 60
    while True:  # the switch to WAL can fail at once, without waiting, while another process makes it
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=60000")
    return db


class StoreDamaged(UserError):
    """The store file is not a readable SQLite database."""


class StoreUnwritable(RunError):
    """The store cannot be written (full disk, read-only or failing filesystem); what was committed is kept."""


class StoreReplaced(RunError):
    """The store file this driver opened was deleted or replaced by another (`--fresh` from another shell)."""


def integrity_verdict(path: Path) -> str:
    """`PRAGMA integrity_check`'s first lines on a fresh read-only connection, or why it could not run."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchmany(3)]
        finally:
            db.close()
    except sqlite3.Error as err:
        return f"integrity_check could not run: {err}"
    return "integrity_check: " + "; ".join(rows)


def describe(err: sqlite3.Error, path: Path) -> UserError | RunError:
    """A user-facing error for a SQLite failure on the store at `path`."""
    text = str(err)
    low = text.lower()
    resume = "Results committed before are kept; run the same command again to resume."
    if "disk is full" in low or "database or disk is full" in low:
        return StoreUnwritable(f"the disk holding {path} is full ({text}). Free some space there. {resume}")
    if "readonly" in low or "read-only" in low:
        return StoreUnwritable(f"cannot write to {path}: its folder or filesystem is read-only ({text}). Make it "
                               f"writable, or point output_dir (--out) elsewhere. {resume}")
    if "disk i/o error" in low or "unable to open" in low:
        return StoreUnwritable(f"cannot read or write {path}: the filesystem failed ({text}). Check the disk or "
                               f"mount holding it. {resume}")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreDamaged(
            f"the store {path} is damaged ({text}; {integrity_verdict(path)}). Move it aside and start over with "
            f"--fresh, or try to rescue its rows: sqlite3 {path} .recover | sqlite3 {path.with_name('recovered.db')}")
    return StoreUnwritable(f"the store {path} failed: {text}. {resume}")


@contextmanager
def store_errors(path: Path) -> Iterator[None]:
    """Turn SQLite errors raised on the store at `path` into errors that name it and the way out."""
    try:
        yield
    except sqlite3.Error as err:
        raise describe(err, path) from err


def quietly(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call a store write while stopping; a failing store is logged (its error was already raised once)."""
    try:
        return fn(*args, **kw)
    except (sqlite3.Error, RunError) as err:
        logging.getLogger("evalfleet").warning("while stopping: %s failed: %s", getattr(fn, "__name__", fn), err)
        return None
