"""A backend that answers whole batches (`Backend.generate`: transformers' `generate`, diffusers, endpoints) as a
`Stream`, so that a worker runs every backend through one loop (`engine/streaming.py`).

`add` queues a prepared batch and `step` answers the oldest one. Out of memory, a batch is answered in halves,
prepared again from its requests, down to single requests; a request that does not fit even alone gets an error.
The halved size holds for the batches after it (`batch`: the worker prepares them at that size) until
GROW_AFTER batches in a row have fitted, then doubles back. Any other error fails that batch's requests, with its
traceback in `log`; a lost replica (`ReplicaLost`) ends the worker.
"""

from __future__ import annotations

import traceback
from collections import Counter, deque
from typing import Any

from evalfleet.backends.base import Backend, Generation, Prepared, ReplicaLost, free_memory, is_out_of_memory

GROW_AFTER = 8
"""Batches in a row that fitted after which a batch size halved by out-of-memory doubles again."""


class BatchSizer:
    """Batch size that halves on out-of-memory (down to 1) and doubles back after GROW_AFTER successes."""

    def __init__(self, start: int) -> None:
        self.max = self.size = start
        self.streak = 0

    def shrink(self, failed: int) -> None:
        """A batch of `failed` requests ran out of memory: try half of it."""
        self.size, self.streak = max(1, min(self.size, failed) // 2), 0

    def succeeded(self) -> None:
        self.streak += 1
        if self.streak >= GROW_AFTER and self.size < self.max:
            self.size, self.streak = min(self.max, self.size * 2), 0


class WholeBatches:
    """`backend.generate` as a Stream of batches of at most `rows` requests."""

    def __init__(self, backend: Backend, rows: int) -> None:
        self.backend = backend
        self.sizer = BatchSizer(rows)
        self.queue: deque[tuple[Prepared, list[Any]]] = deque()
        self.log: list[str] = []
        self.counts: Counter[str] = Counter()  # whole batches share no prefix

    busy = property(lambda self: bool(self.queue))
    hungry = property(lambda self: not self.queue)
    batch = property(lambda self: self.sizer.size, doc="Requests per prepared batch: the size that fits now.")

    def add(self, prepared: Prepared, keys: list[Any]) -> None:
        self.queue.append((prepared, keys))

    def step(self) -> list[tuple[Any, Generation]]:
        prepared, keys = self.queue.popleft()
        return list(zip(keys, self._answer(prepared)))

    def _answer(self, prepared: Prepared) -> list[Generation]:
        requests = prepared.requests
        n = self.sizer.size
        if len(requests) > n:  # larger than what fits now (prepared before a halving)
            parts = [requests[i : i + n] for i in range(0, len(requests), n)]
            return [g for part in parts for g in self._answer(self.backend.prepare(part))]
        try:
            gens = self.backend.generate(prepared)
            self.sizer.succeeded()
            return gens
        except ReplicaLost:
            raise
        except Exception as err:
            if not is_out_of_memory(err):
                self.log.append(f"batch of {len(requests)} starting at {requests[0].name} failed:\n"
                                f"{traceback.format_exc()}")
                return [Generation("", 0, f"{type(err).__name__}: {err}") for _ in requests]
        free_memory()
        if len(requests) == 1:
            r = requests[0]
            self.log.append(f"{r.name} does not fit in memory even alone")
            return [Generation("", 0, "out of memory even in a batch of 1 "
                                      f"({len(r.prompt)} prompt characters, {len(r.images)} image(s))")]
        self.sizer.shrink(len(requests))
        self.log.append(f"out of memory at batch size {len(requests)}: halving to {self.sizer.size}")
        return self._answer(prepared)
