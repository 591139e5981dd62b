"""The dynamic work queue: pure bookkeeping of chunks, with no processes or I/O (testable alone).

Chunks are cut from the full, length-sorted sample list of each dataset, so a chunk (and so the batch
the model sees) is the same whatever the number of workers and however often the run was resumed. Samples that
show the same pictures stay together, in one chunk where they fit: one worker then holds the picture's prefix and
encodes it once (issue 37).
Whichever worker is free takes the next chunk, cut to its share of what is left as the queue runs dry
(`WorkQueue.assign`); a dead worker's unfinished samples go back to the front.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from evalfleet.records import Sample


@dataclass
class Chunk:
    """Samples of one dataset handed to one worker at a time."""

    id: int
    samples: list[Sample]
    attempts: int = 0
    """How many workers died while holding this chunk."""


def picture_key(sample: Sample) -> tuple[str, ...]:
    """The pictures a sample shows, by file path or by the hash of their embedded bytes (no file is read here: the
    engine matches prompts by the pictures' content in any case)."""
    return tuple(ref.path if ref.path is not None else hashlib.blake2b(ref.data or b"", digest_size=16).hexdigest()
                 for ref in sample.images)


def make_chunks(samples: list[Sample], done: set[str], chunk_size: int, start_id: int = 0) -> list[Chunk]:
    """Cut one dataset into chunks of similar prompt length, leaving out finished samples. The samples of one
    picture (`picture_key`) come together, ordered among the others by their shortest prompt, and a chunk ends
    before a picture's samples that would not fit in it (more than a chunk's worth are cut into chunks of their
    own). Text samples are one group: plain length order.

    Cutting happens before finished samples are removed, so resumed chunks match the original ones.
    """
    groups: dict[tuple[str, ...], list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (len(s.prompt), s.id)):
        groups.setdefault(picture_key(s), []).append(s)
    parts: list[list[Sample]] = [[]]
    for group in groups.values():
        if parts[-1] and len(parts[-1]) + len(group) > chunk_size:
            parts.append([])
        for s in group:
            if len(parts[-1]) == chunk_size:
                parts.append([])
            parts[-1].append(s)
    chunks = []
    for part in parts:
        todo = [s for s in part if s.id not in done and s.error is None]
        if todo:
            chunks.append(Chunk(start_id + len(chunks), todo))
    return chunks


@dataclass
class WorkQueue:
    """Hands chunks to free workers; tracks what each worker holds."""

    pending: deque[Chunk]
    max_in_flight: int = 2
    """Chunks a worker may hold: one running, one waiting, so it never idles on a round trip."""
    held: dict[str, list[Chunk]] = field(default_factory=dict)
    closed: bool = True
    """False while chunks may still be added (a judge fed by a stage that is still answering)."""
    next_id: int = 0

    @classmethod
    def of(cls, chunks: list[Chunk], max_in_flight: int = 2, closed: bool = True) -> WorkQueue:
        return cls(deque(chunks), max_in_flight, closed=closed, next_id=max((c.id for c in chunks), default=-1) + 1)

    def add(self, parts: list[list[Sample]]) -> None:
        """More work for an open queue: each part becomes a chunk."""
        assert not self.closed, "chunks added to a closed queue"
        for samples in parts:
            self.pending.append(Chunk(self.next_id, samples))
            self.next_id += 1

    def close(self) -> None:
        """No more chunks will be added: the queue is finished once these are."""
        self.closed = True

    def register(self, worker: str) -> None:
        """A worker was started (it may still be loading its model)."""
        self.held.setdefault(worker, [])

    def assign(self, worker: str) -> Chunk | None:
        """The next chunk for `worker`, or None if it holds enough already or nothing is left.

        A worker that holds a chunk gets a second one (to prefetch) only while more chunks are pending
        than there are workers holding none: early workers must not take what late ones need.
        """
        holding = self.held.setdefault(worker, [])
        if len(holding) >= self.max_in_flight or not self.pending:
            return None
        if holding and len(self.pending) <= sum(1 for h in self.held.values() if not h):
            return None
        chunk = self._fair(self.pending.popleft())
        holding.append(chunk)
        return chunk

    def _fair(self, chunk: Chunk) -> Chunk:
        """`chunk`, or its first part when it holds more than a worker's share of what is pending (guided
        self-scheduling: as the queue runs dry its chunks shrink, so that no worker is left with a long queue of
        its own while the others idle at the end). The rest goes back to the front as a chunk of its own. The cut
        falls between two pictures' samples where one lies in the second half of the part (the samples of a
        picture stay together, `make_chunks`)."""
        size, workers = len(chunk.samples), max(1, len(self.held))
        pending = size
        for c in self.pending:  # counted only as far as it takes to know the chunk fits (a million samples queued)
            if -(-pending // workers) >= size:
                return chunk
            pending += len(c.samples)
        share = -(-pending // workers)
        if size <= share:
            return chunk
        keys = [picture_key(s) for s in chunk.samples[: share + 1]]
        cut = next((k for k in range(share, share // 2, -1) if keys[k] != keys[k - 1]), share)
        self._to_front(chunk.samples[cut:])
        chunk.samples = chunk.samples[:cut]
        return chunk

    def _to_front(self, samples: list[Sample]) -> None:
        """`samples` at the front of the queue, as a chunk of their own."""
        self.pending.appendleft(Chunk(self.next_id, samples))
        self.next_id += 1

    def finish_samples(self, worker: str, chunk_id: int, sample_ids: set[str]) -> None:
        """Record finished samples of a held chunk; a chunk with none left is dropped."""
        for chunk in self.held.get(worker, []):
            if chunk.id == chunk_id:
                chunk.samples = [s for s in chunk.samples if s.id not in sample_ids]
                if not chunk.samples:
                    self.held[worker].remove(chunk)
                return

    def take_back(self, worker: str, chunk_id: int, sample_ids: set[str]) -> None:
        """`worker` gave back these samples of its chunk `chunk_id` (not started): they go to the front of the
        queue as a chunk of their own, for an idle worker."""
        for chunk in self.held.get(worker, []):
            if chunk.id == chunk_id:
                given = [s for s in chunk.samples if s.id in sample_ids]
                chunk.samples = [s for s in chunk.samples if s.id not in sample_ids]
                if not chunk.samples:
                    self.held[worker].remove(chunk)
                if given:
                    self._to_front(given)
                return

    def to_ask(self, ready: set[str], exhausted: set[tuple[str, int]]) -> tuple[str, int] | None:
        """(worker, chunk) to ask for samples back for an idle worker: of the `ready` workers, the one holding the
        most samples, its last chunk of at least two that has not given nothing back before (`exhausted`)."""
        holders = sorted(((sum(len(c.samples) for c in held), name) for name, held in self.held.items()
                          if held and name in ready), reverse=True)
        for _, name in holders:
            for c in reversed(self.held[name]):
                if len(c.samples) >= 2 and (name, c.id) not in exhausted:
                    return name, c.id
        return None

    def release(self, worker: str, *, answering: bool = True) -> list[Chunk]:
        """A worker died: its unfinished chunks go back to the front of the queue, oldest first. Only the oldest,
        the one it was answering (a worker answers its chunks in order), counts the attempt, and only if it died
        `answering` (not while loading its model): a chunk queued behind one that kills workers is not blamed."""
        chunks = self.held.pop(worker, [])
        if chunks:
            chunks[0].attempts += answering
        self.pending.extendleft(reversed(chunks))
        return chunks

    def drop(self, chunk: Chunk) -> None:
        """Remove a pending chunk (e.g. one that keeps killing workers)."""
        self.pending.remove(chunk)

    @property
    def finished(self) -> bool:
        return self.closed and not self.pending and not any(self.held.values())

    def remaining(self) -> int:
        return sum(len(c.samples) for c in self.pending) + sum(len(c.samples) for cs in self.held.values() for c in cs)
