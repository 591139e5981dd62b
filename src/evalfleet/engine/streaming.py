"""A worker's one loop: requests go into its backend's Stream (`backends.stream_of`: the continuous engine, or
whole batches through `generate`) as it has room for them, answers go back as they end.

The prefetch thread prepares the next batch while the stream works (`worker_loop.py`); a prepared batch is added
whenever the stream is `hungry` and it is ready, or at once when the stream has nothing else to do.
Answers are sent grouped by chunk, every FLUSH_ROWS answers or FLUSH_S seconds, so the driver's progress, store
and leases see them as they come without a message per sample.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from evalfleet.engine.messages import Results
from evalfleet.records import Result, Sample

if TYPE_CHECKING:
    from evalfleet.backends import Stream
    from evalfleet.engine.worker_loop import ReadyBatch, WorkerLoop

FLUSH_ROWS = 64
FLUSH_S = 0.5


class Outbox:
    """Answers waiting to be sent, by chunk."""

    def __init__(self, loop: WorkerLoop) -> None:
        self.loop = loop
        self.by_chunk: dict[int, list[Result]] = {}
        self.count = 0
        self.sent = time.perf_counter()

    def put(self, chunk_id: int, results: list[Result]) -> None:
        if not results:
            return
        self.by_chunk.setdefault(chunk_id, []).extend(results)
        self.count += len(results)

    def flush(self, force: bool = False) -> None:
        if self.loop.stream is not None and self.loop.stream.log:  # the stream's lines for the run log
            self.loop.log += self.loop.stream.log
            self.loop.stream.log.clear()
        if not self.count or not (force or self.count >= FLUSH_ROWS or time.perf_counter() - self.sent >= FLUSH_S):
            return
        counts = {}
        if self.loop.stream is not None:  # what its prefills did meanwhile, sent once
            counts = dict(self.loop.stream.counts)
            self.loop.stream.counts.clear()
        for chunk_id, results in self.by_chunk.items():
            self.loop.send(Results(chunk_id, results, self.loop.log[:], counts))
            self.loop.log.clear()
            counts = {}
        self.by_chunk.clear()
        self.count = 0
        self.sent = time.perf_counter()


def run_stream(loop: WorkerLoop, stream: Stream, first: Future[ReadyBatch | None]) -> None:
    """Feed `stream` from the worker's chunks until the driver says stop or no chunk is left, sending answers as
    they end. (`first`: the first batch, prepared while the model loaded.)"""
    loop.stream = stream  # the batches taken from now on are the size it takes
    owners: dict[int, tuple[int, Sample, str]] = {}  # key -> (chunk, sample, the prompt it was given)
    outbox = Outbox(loop)
    job: Future[ReadyBatch | None] | None = first
    next_key = 0
    mark = time.perf_counter()
    while not loop.stop_said.is_set():
        if job is not None and stream.hungry and (job.done() or not stream.busy):
            if not job.done():  # the engine has nothing to do: send every answer before waiting for work
                outbox.flush(force=True)
            ready = job.result()
            job = None if ready is None else loop.next_batch()
            if ready is not None:
                outbox.put(ready.batch.chunk_id, ready.errors)
                if ready.failure is not None or ready.prepared is None:
                    message, tb = ready.failure or ("nothing prepared", "")
                    first_id = f"{ready.samples[0].dataset}/{ready.samples[0].id}" if ready.samples else "?"
                    loop.log.append(f"batch of {len(ready.samples)} starting at {first_id} failed:\n{tb}")
                    outbox.put(ready.batch.chunk_id, [Result(s.dataset, s.id, None, message) for s in ready.samples])
                else:
                    keys = list(range(next_key, next_key + len(ready.samples)))
                    next_key += len(keys)
                    owners.update((k, (ready.batch.chunk_id, s, p))
                                  for k, s, p in zip(keys, ready.samples, ready.prepared.prompts))
                    stream.add(ready.prepared, keys)
        if not stream.busy:
            outbox.flush(force=True)
            if job is None:
                break
            mark = time.perf_counter()  # waiting for work is not the answers' time
            continue
        ended = stream.step()
        if ended:
            now = time.perf_counter()
            per_sample = (now - mark) / len(ended)  # the engine's time since the last answers, shared out
            mark = now
            for key, g in ended:
                chunk_id, s, prompt = owners.pop(key)
                outbox.put(chunk_id, [Result(s.dataset, s.id, None if g.error else g.text, g.error, None, per_sample,
                                             g.n_tokens, prompt)])
        outbox.flush()
    outbox.flush(force=True)
    loop.prefetch.shutdown()
