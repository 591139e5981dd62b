"""Building many long-lived objects at once (100k samples read, stored)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bulk_objects() -> Iterator[None]:
    """No cyclic garbage collection while a block builds many long-lived objects (100k samples), and none of
    them walked by a later one: each collection of the oldest generation walks every object built so far (a third
    of reading 100k rows, `bench/driver_overhead.py`), and the first collections after the block would walk them
    all again. So what exists when the block ends is frozen (`gc.freeze`: out of the collector's sight; still
    freed by reference counting, as samples, which hold no cycles, are)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
