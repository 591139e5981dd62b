from evalfleet.engine.queue import WorkQueue, make_chunks
from evalfleet.records import Sample


def samples(n: int) -> list[Sample]:
    return [Sample("d", f"s{i}", "q", "x" * (i % 5)) for i in range(n)]


def test_chunks_are_length_sorted_and_stable_when_resuming():
    full = make_chunks(samples(10), set(), 3)
    assert [len(c.samples) for c in full] == [3, 3, 3, 1]
    lengths = [len(s.prompt) for c in full for s in c.samples]
    assert lengths == sorted(lengths)
    # Finishing the first chunk leaves the others cut exactly as before.
    done = {s.id for s in full[0].samples}
    resumed = make_chunks(samples(10), done, 3)
    assert [[s.id for s in c.samples] for c in resumed] == [[s.id for s in c.samples] for c in full[1:]]


def test_samples_with_load_errors_are_not_queued():
    ss = samples(4)
    ss[1].error = "bad row"
    assert "s1" not in {s.id for c in make_chunks(ss, set(), 2) for s in c.samples}


def test_free_workers_take_next_chunk_and_dead_workers_give_back_theirs():
    q = WorkQueue.of(make_chunks(samples(8), set(), 2), max_in_flight=2)
    a1, a2 = q.assign("a"), q.assign("a")
    assert q.assign("a") is None  # holds enough
    b1 = q.assign("b")
    assert (a1.id, a2.id, b1.id) == (0, 1, 2)
    q.finish_samples("a", a1.id, {s.id for s in a1.samples})
    half = a2.samples[0].id
    q.finish_samples("a", a2.id, {half})
    back = q.release("a")
    assert [c.id for c in back] == [1] and back[0].attempts == 1
    assert [s.id for s in back[0].samples] != [] and half not in {s.id for s in back[0].samples}
    assert q.assign("b").id == 1  # requeued at the front
    assert q.remaining() == 1 + 2 + 2
    assert not q.finished
    c = q.assign("c")  # handed to a worker as it starts; it dies loading its model
    assert q.release("c", answering=False)[0].attempts == c.attempts == 0


def test_early_workers_leave_scarce_chunks_to_workers_still_loading():
    q = WorkQueue.of(make_chunks(samples(8), set(), 2), max_in_flight=2)  # 4 chunks
    for w in "abcd":
        q.register(w)
    assert q.assign("a") is not None and q.assign("a") is None  # 3 pending, 3 workers without a chunk
    assert q.assign("b") is not None and q.assign("b") is None
    assert q.assign("c") is not None and q.assign("d") is not None
    assert q.assign("a") is None  # nothing left
    big = WorkQueue.of(make_chunks(samples(20), set(), 2), max_in_flight=2)  # 10 chunks, 2 workers
    big.register("a")
    big.register("b")
    assert big.assign("a") and big.assign("a") and big.assign("a") is None  # plenty: prefetch allowed


def test_an_open_queue_takes_more_chunks_and_finishes_only_once_closed():
    q = WorkQueue.of(make_chunks(samples(4), set(), 2), closed=False)  # chunks 0 and 1
    for _ in range(2):
        c = q.assign("a")
        q.finish_samples("a", c.id, {s.id for s in c.samples})
    assert not q.finished  # empty, but more may come
    q.add([samples(3)[:1], samples(3)[1:]])
    c = q.assign("a")
    assert c.id == 2 and [s.id for s in c.samples] == ["s0"]
    q.close()
    q.finish_samples("a", 2, {"s0"})
    assert not q.finished and q.assign("a").id == 3
    q.finish_samples("a", 3, {"s1", "s2"})
    assert q.finished


def test_samples_of_one_picture_share_a_chunk_in_any_order():
    from evalfleet.records import ImageRef

    pics = ["a.png", "b.png", "c.png"]
    ss = [Sample("d", f"s{i}", "q", "x" * (7 - i % 7), images=[ImageRef(f"row {i}", path=pics[i % 3])])
          for i in range(12)]
    ss.append(Sample("d", "e", "q", "x", images=[ImageRef("row e", data=b"png bytes")]))
    chunks = make_chunks(ss, set(), 5)
    by_chunk = [[s.images[0].path for s in c.samples] for c in chunks]
    assert all(len(c.samples) <= 5 for c in chunks)
    assert all(sum(p in c for c in by_chunk) == 1 for p in pics), by_chunk  # each picture's 4 samples in one chunk
    seen = [s.images[0].path for c in chunks for s in c.samples]
    assert all(seen.count(p) == 4 and seen[seen.index(p) : seen.index(p) + 4] == [p] * 4 for p in pics)
    assert make_chunks(list(reversed(ss)), set(), 5)[0].samples == chunks[0].samples  # not the file's order
    # Resuming cuts the same chunks.
    done = {s.id for s in chunks[1].samples}
    assert [c.samples for c in make_chunks(ss, done, 5)] == [c.samples for i, c in enumerate(chunks) if i != 1]
    # More samples of one picture than a chunk holds: cut into full chunks.
    many = [Sample("d", f"m{i}", "q", "x", images=[ImageRef("r", path="a.png")]) for i in range(11)]
    assert [len(c.samples) for c in make_chunks(many, set(), 5)] == [5, 5, 1]
