"""The continuous engine as a backend's `Stream`: a worker's prepared batches in (their `Row`s keyed), the answers out
as they end, decoded to text; the fused kernels switched in between two steps once compiled (`fuse_when_ready`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from evalfleet.backends.base import Generation, Prepared
from evalfleet.backends.transformers.engine import ContinuousEngine


class TokenStream:
    """The engine as a backend's `Stream`: prepared batches are lists of `Row`s (their keys unset); `decode` turns
    an answer's tokens into its Generation."""

    def __init__(self, engine: ContinuousEngine, decode: Callable[[list[int]], Generation],
                 kernels_changed: Callable[[], bool] = lambda: False) -> None:
        self.engine, self.decode, self.kernels_changed = engine, decode, kernels_changed
        self.log = engine.log
        self.counts = engine.counts

    busy = property(lambda self: self.engine.busy)
    hungry = property(lambda self: self.engine.hungry)
    batch = property(lambda self: self.engine.slots)

    def add(self, prepared: Prepared, keys: list[Any]) -> None:
        self.engine.add([replace(row, key=key) for key, row in zip(keys, prepared.inputs)])

    def step(self) -> list[tuple[Any, Generation]]:
        if self.kernels_changed():  # fused kernels switched in (`fused.fuse_when_ready`)
            self.engine.graphs.clear()
        return [(d.key, Generation("", 0, d.error) if d.error else self.decode(d.tokens)) for d in self.engine.step()]
