"""The judge cache: judge replies by request key, shared by run folders."""

from __future__ import annotations

from pathlib import Path

from evalfleet.store.health import connect


class JudgeCache:
    """Judge replies by request key (judge model and settings + rendered prompt + image bytes), in one SQLite
    file that any number of run folders (and processes) share: re-scoring the same outputs costs nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, output TEXT NOT NULL)")

    def get(self, keys: list[str]) -> dict[str, str]:
        """Replies already made for these keys."""
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[i : i + 500]
            cur = self.db.execute(f"SELECT key, output FROM judge_cache WHERE key IN ({','.join('?' * len(part))})", part)
            out.update(dict(cur.fetchall()))
        return out

    def put(self, entries: list[tuple[str, str]]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR IGNORE INTO judge_cache VALUES (?, ?)", entries)

    def empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM judge_cache LIMIT 1").fetchone() is None

    def close(self) -> None:
        self.db.close()
