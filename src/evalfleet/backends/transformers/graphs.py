"""The continuous engine's decode step at several widths, each captured once as a CUDA graph.

A decode step costs about what its width costs: every slot in it runs the model's matmuls, the LM head and the
sampler, busy or not. When the queue runs dry, the last requests decode while the slots around them empty (the
tail: up to max_new_tokens steps). The engine then moves its busy slots to the front (`SlotCache.move`) and
decodes only the first `width` slots, the smallest width of `decode_widths` that holds them.

Graphs are captured on first use and share one memory pool. A capture runs the step (two warm-ups on a side
stream) on the engine's live state, so the state it changes is saved first and put back after: the keys and
values it writes are at the busy slots' next positions, which the real step writes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("evalfleet")

SMALLEST_WIDTH = 8
"""Below this many slots a decode step costs about the same (the weights are read once either way)."""


def decode_widths(slots: int, smallest: int = SMALLEST_WIDTH) -> list[int]:
    """Widths from `slots` down, halving (rounded up), to `smallest`: 256 -> [256, 128, 64, 32, 16, 8]."""
    widths = [slots]
    while widths[-1] > smallest:
        widths.append(max(smallest, -(-widths[-1] // 2)))
    return widths


def width_for(widths: list[int], n: int) -> int:
    """The smallest width that holds `n` slots."""
    return min((w for w in widths if w >= n), default=widths[0])


class DecodeGraphs:
    """`run(width, step)` replays the graph of `step(width)` (capturing it first), or runs the step eagerly where
    graphs are off or a capture failed. The step is passed in, not kept: a bound method of the engine kept here
    would tie the engine and its cache (tens of GB) in a reference cycle, freed only when the collector runs."""

    def __init__(self, state: list[torch.Tensor], enabled: bool) -> None:
        self.state, self.enabled = state, enabled
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}
        self.pool = None

    def prepare(self, width: int, step: Callable[[int], None]) -> None:
        """Capture the graph for `width` now (at allocation, every slot idle)."""
        if width not in self.graphs:
            self._capture(width, step)

    def run(self, width: int, step: Callable[[int], None]) -> None:
        graph = self.graphs[width] if width in self.graphs else self._capture(width, step)
        if graph is not None:
            graph.replay()
        else:
            step(width)

    def clear(self) -> None:
        """Forget every graph (the model's kernels changed): each width is captured again on its next use."""
        if self.graphs and self.enabled:
            torch.cuda.synchronize()  # no replay in flight while its graph and memory pool go
        self.graphs, self.pool = {}, None
        if self.enabled:
            torch.cuda.empty_cache()

    @property
    def captured(self) -> bool:
        return any(g is not None for g in self.graphs.values())

    def _capture(self, width: int, step: Callable[[int], None]) -> torch.cuda.CUDAGraph | None:
        graph = None
        if self.enabled:
            saved = [t.clone() for t in self.state]
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(2):
                        step(width)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: the fused kernels may still be compiling in another thread (`fused.fuse_when_ready`)
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), \
                        torch.inference_mode():
                    step(width)
                self.pool = self.pool or graph.pool()
            except Exception as err:  # an op that cannot be captured: this width decodes eagerly
                log.warning("CUDA graph capture of %d slots failed (%s: %s); decoding them without a graph", width,
                            type(err).__name__, err)
                graph = None
            with torch.inference_mode():
                for t, s in zip(self.state, saved):
                    t.copy_(s)
        self.graphs[width] = graph
        return graph
