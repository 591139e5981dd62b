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
    c, d = q.assign("c"), q.assign("d")  # 4 then 3 left for 4 workers: a share of 1 each
    assert [len(c.samples), len(d.samples)] == [1, 1] and q.remaining() == 8
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


def test_chunks_shrink_to_a_share_of_what_is_left_as_the_queue_runs_dry():
    """Guided self-scheduling (issue 40): a chunk larger than a worker's share of the pending samples is cut, the
    rest put back at the front; the cut keeps a picture's samples together where it can."""
    q = WorkQueue.of(make_chunks(samples(1000), set(), 256))  # 256, 256, 256, 232
    for w in "ab":
        q.register(w)
    sizes = []
    while (c := q.assign("a" if len(sizes) % 2 == 0 else "b")) is not None or q.pending:
        if c is None:  # both hold two: one of them finishes its oldest
            w = "a" if q.held["a"] else "b"
            done = q.held[w][0]
            q.finish_samples(w, done.id, {s.id for s in done.samples})
            continue
        sizes.append(len(c.samples))
    assert sum(sizes) == 1000 and q.remaining() == sum(len(c.samples) for h in q.held.values() for c in h)
    assert sizes[:2] == [256, 256] and sizes[-1] <= 2, sizes  # whole chunks while plenty is left; tiny at the end
    assert max(sizes[2:]) <= 244 and max(sizes[-4:]) <= 8, sizes  # (without the cut: 256, 256, 256, 232)
    from evalfleet.records import ImageRef  # 3 pictures x 10 questions: the cut falls between two pictures

    ss = [Sample("d", f"p{i}", "q", "x", images=[ImageRef("r", path=f"{i // 10}.png")]) for i in range(30)]
    q = WorkQueue.of(make_chunks(ss, set(), 30))
    for w in "ab":
        q.register(w)
    first = q.assign("a")  # a share of 15: cut back to the boundary at 10
    assert [s.id for s in first.samples] == [f"p{i}" for i in range(10)] and len(q.pending[0].samples) == 20


def test_samples_given_back_go_to_the_front_for_an_idle_worker():
    q = WorkQueue.of(make_chunks(samples(6), set(), 6))
    q.register("a")
    c = q.assign("a")
    q.take_back("a", c.id, {"s4", "s5"})  # a gave back two it had not started
    assert [s.id for s in q.held["a"][0].samples] == [s.id for s in c.samples] and len(c.samples) == 4
    back, rest = q.assign("b"), q.assign("b")  # (a share of what is pending each: one and one)
    assert {s.id for c in (back, rest) for s in c.samples} == {"s4", "s5"} and c.id not in (back.id, rest.id)
    assert q.remaining() == 6
    q.take_back("b", back.id, {s.id for s in back.samples})  # all of a chunk: it is no longer held
    assert q.held["b"] == [rest] and len(q.pending) == 1


def test_the_worker_asked_to_give_back_is_the_fullest_ready_one():
    q = WorkQueue.of(make_chunks(samples(30), set(), 3))  # 10 chunks of 3: none cut below
    for w in "abc":
        q.register(w)
    a1, b1, c1 = q.assign("a"), q.assign("b"), q.assign("c")
    a2 = q.assign("a")
    assert q.to_ask({"a", "b", "c"}, set()) == ("a", a2.id)  # a holds the most: its last chunk
    assert q.to_ask({"b", "c"}, set()) in {("b", b1.id), ("c", c1.id)}  # a still loading: not asked
    assert q.to_ask({"a", "b", "c"}, {("a", a2.id)}) == ("a", a1.id)  # gave nothing from its last: the one before
    q.finish_samples("a", a1.id, {s.id for s in a1.samples[:2]})  # one sample left in a1: too few to split
    assert q.to_ask({"a"}, {("a", a2.id)}) is None
