"""A worker's side of the pipe, below its entry points (`worker.worker_main`, `sessions.session`): the chunks it
receives, its heartbeat, and the CPU stage of a batch (images decoded, `Backend.prepare`) on a prefetch thread.
The stream loop (`streaming.run_stream`) takes the prepared batches from here."""

from __future__ import annotations

import threading
import traceback
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from evalfleet.data.images import open_image, source_key
from evalfleet.engine.messages import FromWorker, GivenBack, Heartbeat, Stop, TakeBack, Work
from evalfleet.records import SOURCE_KEY, ImageRef, Result, Sample

if TYPE_CHECKING:
    from evalfleet.backends import Backend, Prepared, Stream

HEARTBEAT_S = 2.0
"""Seconds between a worker's heartbeats: a worker silent for much longer is hung (stopped, or stuck holding the
interpreter) and is replaced by its driver."""


@dataclass
class ReadyBatch:
    """A batch after the CPU stage: images decoded, inputs prepared (or why that failed)."""

    batch: Work
    """Samples of one chunk to answer together."""
    errors: list[Result]
    """Samples whose images could not be read."""
    samples: list[Sample]
    """Samples going to the device."""
    prepared: Prepared | None = None
    failure: tuple[str, str] | None = None
    """(message, traceback) when preparing raised."""


class DecodedImages:
    """The pictures a worker decoded last, by file path or embedded bytes: the samples of one picture come together
    (`queue.make_chunks`), so a picture asked eleven questions is read and decoded once. Bounded; a picture that
    could not be read is not kept (each sample's error names its own row). `threads` > 1: a batch's new pictures
    are decoded that many at once (`batch`)."""

    def __init__(self, keep: int = 64, threads: int = 1) -> None:
        self.keep = keep
        self.images: OrderedDict[tuple[str | None, bytes | None], Any] = OrderedDict()
        self.decoded = 0
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None

    def open(self, ref: ImageRef) -> Any:
        key = (ref.path, ref.data)
        if key in self.images:
            self.images.move_to_end(key)
            return self.images[key]
        self.decoded += 1
        return self._keep(key, self._decode(ref))

    def _keep(self, key: tuple[str | None, bytes | None], image: Any) -> Any:
        """Keep `image` as the most recent, dropping the oldest beyond `keep`."""
        self.images[key] = image
        self.images.move_to_end(key)
        if len(self.images) > self.keep:
            self.images.popitem(last=False)
        return image

    @staticmethod
    def _decode(ref: ImageRef) -> Any:
        image = open_image(ref)
        image.info[SOURCE_KEY] = source_key(ref)
        return image

    def batch(self, refs: list[ImageRef]) -> Callable[[ImageRef], Any]:
        """A batch's opener: its pictures not kept yet decoded in `threads` threads first (their errors raised
        when a sample opens them), each later `open` of the batch finding them, however many there are."""
        new = list({(r.path, r.data): r for r in refs if (r.path, r.data) not in self.images}.values())
        if self.threads <= 1 or len(new) < 2:
            return self.open
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")

        def attempt(ref: ImageRef) -> Any:
            try:
                return self._decode(ref)
            except ValueError as err:
                return err

        ready = dict(zip(((r.path, r.data) for r in new), self.pool.map(attempt, new)))
        self.decoded += sum(not isinstance(v, ValueError) for v in ready.values())

        def open_(ref: ImageRef) -> Any:
            got = ready.get((ref.path, ref.data))
            if isinstance(got, ValueError):
                raise got
            return self.open(ref) if got is None else self._keep((ref.path, ref.data), got)

        return open_


def prepare_batch(backend: Backend, batch: Work, decoded: DecodedImages | None = None) -> ReadyBatch:
    """CPU stage of a batch: decode images (through `decoded`, if given) and let the backend tokenize and
    preprocess."""
    from evalfleet.backends import Request

    ready = ReadyBatch(batch, [], [])
    requests = []
    decode = decoded.batch([ref for s in batch.samples for ref in s.images]) if decoded is not None else open_image
    for s in batch.samples:
        try:
            images = [decode(ref) for ref in s.images]
        except ValueError as err:
            ready.errors.append(Result(s.dataset, s.id, None, str(err)))
            continue
        name = f"{s.dataset}/{s.id}"
        requests.append(Request(s.prompt, images, batch.seed ^ zlib.crc32(name.encode()), name, s.context))
        ready.samples.append(s)
    if requests:
        try:
            ready.prepared = backend.prepare(requests)
        except Exception as err:
            ready.failure = (f"{type(err).__name__}: {err}", traceback.format_exc())
    return ready


class WorkerLoop:
    """Receives chunks, cuts them into batches of the size its stream takes, and prepares the next batch on a thread
    while the device works on the ones before (the stream loop, `streaming.run_stream`, feeds them to the backend).

    A daemon thread reads the pipe as messages come (the driver's sends never wait for this worker): chunks go
    into `pending`, from which the prefetch thread takes the next batch, waiting for the driver if need be, and
    prepares it while the main thread generates: the next batch is ready however late the driver's chunk arrives.
    A `TakeBack` is answered from that thread at once: the later half of the chunk's samples not yet taken into a
    batch go back to the driver (`GivenBack`), for a worker that has gone idle (issue 40)."""

    backend: Backend
    """Set by `start`."""

    def __init__(self, conn: Connection, batch_size: int) -> None:
        self.conn = conn
        self.batch_size = batch_size
        self.stream: Stream | None = None
        """Set by the stream loop: its `batch` is the size of the batches taken from then on."""
        self.pending: deque[Work] = deque()
        """Chunks received and not yet taken into batches (the head one perhaps in part); under `arrived`."""
        self.arrived = threading.Condition()
        self.gone: EOFError | None = None
        """Set when the pipe closed: the driver is gone."""
        self.log: list[str] = []  # lines for the driver's log, sent with the next results
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self.decoded = DecodedImages()
        self.stopping = False
        self.keep = False
        """The driver's stop said to stay loaded for a later stage (`Stop.keep`)."""
        self.stop_said = threading.Event()
        """The driver said stop. It says so at the end only once every result is in, so a batch still queued or
        prepared then was cut short by a signal or an error: it is not started."""
        self.preparing = threading.Lock()
        self.sending = threading.Lock()  # the main thread's results and the heartbeat thread share the pipe
        self.ended = threading.Event()
        threading.Thread(target=self._receive, name="receive", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def send(self, msg: FromWorker) -> None:
        with self.sending:
            self.conn.send(msg)

    def _heartbeat(self) -> None:
        while not self.ended.wait(HEARTBEAT_S):
            try:
                self.send(Heartbeat())
            except (OSError, ValueError):  # the driver is gone, or the pipe closed
                return

    def _receive(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError) as err:  # the driver is gone
                with self.arrived:
                    self.gone = EOFError(str(err))
                    self.arrived.notify_all()
                return
            if isinstance(msg, TakeBack):
                self._give_back(msg.chunk_id)
                continue
            with self.arrived:
                if isinstance(msg, Stop):
                    self.keep = msg.keep
                    self.stop_said.set()
                    self.stopping = True
                else:
                    self.pending.append(msg)
                self.arrived.notify_all()
            if isinstance(msg, Stop):
                return

    def _give_back(self, chunk_id: int) -> None:
        """Hand the later half of chunk `chunk_id`'s samples not yet taken into a batch back to the driver."""
        with self.arrived:
            at = next((i for i, w in enumerate(self.pending) if w.chunk_id == chunk_id), None)
            given: list[str] = []
            if at is not None:
                work = self.pending[at]
                keep = (len(work.samples) + 1) // 2
                given = [s.id for s in work.samples[keep:]]
                if keep:
                    self.pending[at] = Work(work.chunk_id, work.samples[:keep], work.seed)
                else:
                    del self.pending[at]
        try:
            self.send(GivenBack(chunk_id, given))
        except (OSError, ValueError):  # the driver is gone
            pass

    def take(self) -> Work | None:
        """The next batch, waiting for the driver's next chunk if none is queued; None once the driver said stop."""
        with self.arrived:
            while not self.pending and not self.stopping and self.gone is None:
                self.arrived.wait()
            if self.stopping or self.stop_said.is_set():
                return None
            if not self.pending and self.gone is not None:
                raise self.gone
            head = self.pending[0]
            n = self.stream.batch if self.stream is not None else self.batch_size
            if len(head.samples) > n:
                self.pending[0] = Work(head.chunk_id, head.samples[n:], head.seed)
            else:
                self.pending.popleft()
            return Work(head.chunk_id, head.samples[:n], head.seed)

    def _prepare(self, batch: Work) -> ReadyBatch:
        with self.preparing:  # tokenizers set their padding per call: one batch at a time
            return prepare_batch(self.backend, batch, self.decoded)

    def next_batch(self) -> Future[ReadyBatch | None]:
        """The next batch, taken and prepared on the prefetch thread."""
        return self.prefetch.submit(lambda: None if (b := self.take()) is None else self._prepare(b))

    def start(self, backend: Backend) -> Future[ReadyBatch | None]:
        """Prepare the first batch with `backend` on the prefetch thread (the driver sends a worker its first
        chunk as it starts it), while the main thread loads the model."""
        self.backend = backend
        self.decoded.threads = backend.picture_threads
        return self.next_batch()

    def close(self) -> None:
        """Stop the heartbeat; release a prefetch thread waiting for a chunk (the worker is ending on an error)."""
        self.ended.set()
        with self.arrived:
            self.stopping = True
            self.arrived.notify_all()
        self.prefetch.shutdown(wait=False, cancel_futures=True)


