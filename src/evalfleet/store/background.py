"""A run's samples stored while its driver goes on: on a connection of their own, in a thread, in transactions of
`BATCH` rows, while the driver plans its stage and starts its workers (storing a million samples takes ~5 s on a
2-core CPU, `bench/million.py`; the first results need only the samples in memory).

Nothing reads the samples table before `wait` returns: the judge's inputs and the report wait for it, and `status`
counts a dataset's samples from its record meanwhile. A dataset's samples key (`preflight.samples_key`) is set once
all of its samples are stored: a run stopped before that stores them again when resumed."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from evalfleet.records import Sample
from evalfleet.store.db import Store

BATCH = 50_000
"""Samples a transaction: the driver's own writes (leases, results) wait for one such transaction at most."""


@dataclass
class ToStore:
    """One dataset's samples to store: their places in the whole dataset, and the key that says they are stored."""

    name: str
    samples: list[Sample]
    positions: list[int]
    key: str


class SampleWriter:
    """Stores datasets' samples in a thread; `wait` for them (it raises what storing raised), or `stop` it."""

    def __init__(self, path: Path, todo: list[ToStore], batch: int = BATCH) -> None:
        self.path, self.todo, self.batch = path, todo, batch
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="evalfleet-samples", daemon=True)
        if todo:
            self._thread.start()

    def _write(self) -> None:
        try:
            store = Store(self.path)
            try:
                for ds in self.todo:
                    for i in range(0, len(ds.samples), self.batch):
                        if self._stop.is_set():
                            return
                        store.put_samples(ds.samples[i:i + self.batch], ds.positions[i:i + self.batch])
                    store.set_meta(f"samples:{ds.name}", ds.key)
            finally:
                store.close()
        except BaseException as err:  # raised again by `wait`, in the driver's thread
            self.error = err

    @property
    def busy(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        """Until every sample is stored; raises the error that stopped the storing, if one did."""
        if self._thread.is_alive():
            self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop after the transaction under way (what is stored stays; its key is not set)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
