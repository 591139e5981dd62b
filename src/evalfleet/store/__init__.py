"""The run store (SQLite), the judge cache, and what goes wrong with them, said plainly."""

from evalfleet.store.db import Store
from evalfleet.store.health import StoreDamaged, StoreReplaced, StoreUnwritable, quietly, store_errors
from evalfleet.store.hosts import network_filesystem, pid_alive
from evalfleet.store.judge_cache import JudgeCache

__all__ = ["JudgeCache", "Store", "StoreDamaged", "StoreReplaced", "StoreUnwritable", "network_filesystem",
           "pid_alive", "quietly", "store_errors"]
