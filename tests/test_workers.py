"""Batch-size adaptation: pure rules, and out-of-memory recovery under a real memory limit."""

import json

import pytest
from conftest import make_config, quiet_console

from evalfleet.backends import stream_of
from evalfleet.backends.batched import GROW_AFTER, BatchSizer
from evalfleet.engine.messages import Heartbeat, Results, Stop, Work
from evalfleet.engine.streaming import run_stream
from evalfleet.run import run
from evalfleet.store import Store


def test_batch_size_halves_down_to_one_and_grows_back_after_a_streak():
    b = BatchSizer(8)
    b.shrink(8)
    b.shrink(4)
    assert b.size == 2
    for _ in range(GROW_AFTER - 1):
        b.succeeded()
    assert b.size == 2
    b.succeeded()
    assert b.size == 4
    for _ in range(5):
        b.shrink(b.size)
    assert b.size == 1
    for _ in range(10 * GROW_AFTER):
        b.succeeded()
    assert b.size == 8  # never above the start
    b = BatchSizer(512)
    b.shrink(256)  # the batch that failed was smaller than the size (a short chunk): halve what failed
    assert b.size == 128


def test_out_of_memory_splits_the_batch_and_a_sample_too_big_alone_is_an_error(tmp_path, smollm2):
    """Whole batches (`backends/batched.py`): halved, prepared again, down to one sample."""
    rows = [{"id": f"s{i}", "question": "word " * 150} for i in range(32)]
    rows.append({"id": "huge", "question": "word " * 6000})
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A real limit: the worker's address space may grow 400 MiB beyond the loaded model (RLIMIT_AS);
    # a batch of 32 such prompts needs more, a batch of 16 does not.
    cfg = make_config(tmp_path, smollm2, [{"name": "long", "path": str(data)}], metrics=[],  # no references
                      model={"batch_size": 32, "engine": "generate", "generation": {"max_new_tokens": 2}},
                      placement={"cpu_worker_headroom": "400MiB"})
    summary = run(cfg, console=quiet_console())
    assert (summary["datasets"]["long"]["finished"], summary["datasets"]["long"]["errors"]) == (33, 1)
    store = Store.open_existing(tmp_path / "t")
    rows = {r["id"]: r for r in store.rows("generate", "long")}
    store.close()
    assert rows["huge"]["error"].startswith("out of memory even in a batch of 1")
    assert all(rows[f"s{i}"]["prediction"] is not None for i in range(32))
    log = (tmp_path / "t" / "run.log").read_text()
    assert "out of memory at batch size 32: halving to 16" in log
    assert "long/huge does not fit in memory even alone" in log


def results(conn):
    """The worker's next message that is not a heartbeat."""
    while isinstance(msg := conn.recv(), Heartbeat):
        pass
    return msg


def test_heartbeats_come_while_the_main_thread_is_busy():
    """A worker's heartbeat thread speaks for it every HEARTBEAT_S, whatever its main thread does; it stops when
    the loop closes."""
    import multiprocessing as mp
    import time

    from evalfleet.engine.worker_loop import HEARTBEAT_S, WorkerLoop

    driver, worker = mp.Pipe()
    loop = WorkerLoop(worker, batch_size=2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5 * HEARTBEAT_S:  # busy, holding the interpreter as a Python loop does
        pass
    beats = []
    while driver.poll(0):
        beats.append(driver.recv())
    assert beats and all(isinstance(b, Heartbeat) for b in beats) and len(beats) in (2, 3)
    loop.close()
    time.sleep(1.5 * HEARTBEAT_S)
    while driver.poll(0):
        driver.recv()
    time.sleep(1.5 * HEARTBEAT_S)
    assert not driver.poll(0)


def test_first_batch_is_prepared_before_the_model_loads_then_answered(smollm2):
    """The driver sends a worker its first chunk as it starts it: the worker tokenizes it while its weights load."""
    import multiprocessing as mp
    import threading

    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig
    from evalfleet.engine.worker_loop import WorkerLoop
    from evalfleet.records import Sample

    driver, worker = mp.Pipe()
    samples = [Sample("d", f"q{i}", q, q) for i, q in enumerate(["What is 2 + 3?", "Name a colour.", "Say hi."])]
    driver.send(Work(0, samples, 0))
    loop = WorkerLoop(worker, batch_size=2)
    backend = TransformersBackend(ModelConfig(path=str(smollm2), dtype="float32", engine="generate",
                                              generation={"max_new_tokens": 4}), 0)
    first = loop.start(backend)
    ready = first.result(timeout=60)  # prepared with no model loaded
    assert backend.model is None and ready.prepared.inputs["input_ids"].shape[0] == 2
    backend.load()
    run = threading.Thread(target=run_stream, args=(loop, stream_of(backend, 2, None), first))
    run.start()
    answered = [results(driver) for _ in range(2)]
    driver.send(Stop())  # stop: the driver says so once every result is in
    run.join(60)
    assert not run.is_alive()
    assert [[r.sample_id for r in msg.results] for msg in answered] == [["q0", "q1"], ["q2"]]
    assert all(r.output is not None and r.n_tokens for msg in answered for r in msg.results)


def test_next_batch_is_prepared_while_the_current_one_generates_even_if_its_chunk_comes_late(smollm2):
    """The driver answers a worker's results with its next chunk: that chunk reaches the worker after it started
    its next batch. It must still be prepared while that batch generates, not after."""
    import multiprocessing as mp
    import threading
    import time

    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig
    from evalfleet.engine.worker_loop import WorkerLoop
    from evalfleet.records import Sample

    backend = TransformersBackend(ModelConfig(path=str(smollm2), dtype="float32", engine="generate",
                                              generation={"max_new_tokens": 24}), 0)
    backend.load()
    prepare, generate = backend.prepare, backend.generate
    prepared, generated, generating = {}, [], threading.Event()

    def timed_prepare(requests):
        prepared[requests[0].name] = time.monotonic()
        return prepare(requests)

    def timed_generate(batch):
        generating.set()
        out = generate(batch)
        generated.append(time.monotonic())
        return out

    backend.prepare, backend.generate = timed_prepare, timed_generate
    driver, worker = mp.Pipe()
    loop = WorkerLoop(worker, batch_size=2)
    driver.send(Work(0, [Sample("d", f"a{i}", q, q) for i, q in enumerate(["Name a colour.", "Say hi."])], 0))
    run = threading.Thread(target=run_stream, args=(loop, stream_of(backend, 2, None), loop.start(backend)))
    run.start()
    assert generating.wait(60)
    driver.send(Work(1, [Sample("d", "b0", "What is 2 + 3?", "What is 2 + 3?")], 0))
    answered = [results(driver).chunk_id for _ in range(2)]
    driver.send(Stop())
    run.join(60)
    assert answered == [0, 1] and not run.is_alive()
    assert prepared["d/b0"] < generated[0]  # chunk 1 was prepared before chunk 0's batch had finished generating


def test_a_stop_during_a_batch_lets_it_finish_and_starts_no_other(smollm2):
    """After a stop signal the driver says stop while the worker still has batches queued: the batch on the
    device is answered, the queued ones are not started (the driver gives up their leases)."""
    import multiprocessing as mp
    import threading

    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig
    from evalfleet.engine.worker_loop import WorkerLoop
    from evalfleet.records import Sample

    backend = TransformersBackend(ModelConfig(path=str(smollm2), dtype="float32", engine="generate",
                                              generation={"max_new_tokens": 8}), 0)
    backend.load()
    driver, worker = mp.Pipe()
    loop = WorkerLoop(worker, batch_size=2)
    driver.send(Work(0, [Sample("d", f"q{i}", f"Count to {i}.", f"Count to {i}.") for i in range(8)], 0))
    run = threading.Thread(target=run_stream, args=(loop, stream_of(backend, 2, None), loop.start(backend)))
    run.start()
    first = results(driver)
    driver.send(Stop())
    run.join(60)
    assert not run.is_alive()
    later = []
    while driver.poll(0.5):
        if isinstance(msg := driver.recv(), Results):
            later.append(msg)
    assert [r.sample_id for r in first.results] == ["q0", "q1"]
    assert len(later) <= 1 and sum(len(m.results) for m in later) <= 2  # the batch it was on, if any; q4.. never


def test_prewarmed_processes_become_the_plans_workers_and_the_rest_exit(tmp_path, smollm2):
    """Processes spawned before the plan (their imports overlap the driver's): the first becomes a worker that
    loads, answers and unloads like a spawned one; the one not needed exits."""
    from evalfleet.config import ModelConfig
    from evalfleet.engine.messages import Ready, Unloaded
    from evalfleet.engine.prewarm import Prewarmed
    from evalfleet.records import Sample, WorkerSpec

    launcher = Prewarmed(2, heavy=True)
    launcher.spawning.join()  # started from a thread (the fork server's imports overlap the driver's work)
    (first, _), (spare, _) = launcher.spare
    model = ModelConfig(path=str(smollm2), dtype="float32", generation={"max_new_tokens": 4}).model_dump_json()
    proc, conn = launcher.start(WorkerSpec("cpu0", (), 1), model, 2, str(tmp_path))
    launcher.close()
    assert proc is first
    conn.send(Work(0, [Sample("q", "a", "What is 2 + 3?", "What is 2 + 3?", ["5"])], 0))
    got = []
    while not any(isinstance(m, Unloaded) for m in got):
        assert conn.poll(120)
        got.append(conn.recv())
        if isinstance(got[-1], Results):
            conn.send(Stop())
    assert isinstance(next(m for m in got if not isinstance(m, Heartbeat)), Ready)
    (results,) = [m for m in got if isinstance(m, Results)]
    assert results.results[0].error is None and results.results[0].output
    proc.join(30)
    spare.join(60)
    assert proc.exitcode == 0 and spare.exitcode == 0


def test_forked_workers_get_the_environment_the_driver_has_now(tmp_path, monkeypatch):
    """Workers fork from a server started earlier (`launcher.worker_context`); they run in the driver's current
    environment all the same, as spawned processes did (a key set in a notebook after the first run)."""
    import os

    from evalfleet.engine.launcher import in_environment, worker_context

    ctx = worker_context(heavy=False)
    first = ctx.Process(target=os.system, args=("true",))  # the server is running from here on
    first.start()
    first.join()
    monkeypatch.setenv("EVALFLEET_PROBE", "set after the server started")
    out = tmp_path / "env"
    for target, args, want in ((in_environment, (dict(os.environ), os.system, f'echo "[$EVALFLEET_PROBE]" > {out}'),
                                "[set after the server started]"),
                               (os.system, (f'echo "[$EVALFLEET_PROBE]" > {out}',), "[]")):  # the server's own
        proc = ctx.Process(target=target, args=args)
        proc.start()
        proc.join()
        assert out.read_text().strip() == want


def test_a_picture_asked_many_questions_is_decoded_once(tmp_path):
    """The worker's prefetch keeps the pictures it decoded last: the samples of one picture come together."""
    from PIL import Image

    from evalfleet.engine.worker_loop import DecodedImages
    from evalfleet.records import ImageRef

    paths = []
    for i, colour in enumerate(["red", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), colour).save(paths[-1])
    decoded = DecodedImages(keep=1)
    first = decoded.open(ImageRef("row 1", path=str(paths[0])))
    assert decoded.open(ImageRef("row 2", path=str(paths[0]))) is first and decoded.decoded == 1
    assert decoded.open(ImageRef("row 3", path=str(paths[1]))).getpixel((0, 0)) == (0, 0, 255)
    assert decoded.open(ImageRef("row 4", path=str(paths[0]))) is not first and decoded.decoded == 3  # (keep 1)
    with pytest.raises(ValueError, match="row 5: unreadable"):
        decoded.open(ImageRef("row 5", data=b"not a png"))
    # Each decoded picture names its source (the engine's key for it: no hash of its patches per sample).
    from evalfleet.records import SOURCE_KEY

    keys = [decoded.open(ImageRef("r", path=str(p))).info[SOURCE_KEY] for p in paths]
    assert keys[0] != keys[1] and decoded.open(ImageRef("r", path=str(paths[0]))).info[SOURCE_KEY] == keys[0]
    Image.new("RGB", (16, 16), "green").save(paths[0])  # rewritten: another source
    assert DecodedImages().open(ImageRef("r", path=str(paths[0]))).info[SOURCE_KEY] != keys[0]


def test_a_batchs_new_pictures_are_decoded_in_threads(tmp_path):
    """With threads, a batch's new pictures are decoded at once, each once however many samples ask about it and
    however few the worker keeps; an unreadable one fails only its own samples, with their rows."""
    from PIL import Image

    from evalfleet.engine.messages import Work
    from evalfleet.engine.worker_loop import DecodedImages
    from evalfleet.records import SOURCE_KEY, ImageRef, Sample

    colours = ["red", "blue", "green"]
    for i, colour in enumerate(colours):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"{i}.png")
    refs = [ImageRef(f"row {k}", path=str(tmp_path / f"{k % 3}.png")) for k in range(6)]
    refs.insert(3, ImageRef("row bad", data=b"not a png"))
    decoded = DecodedImages(keep=1, threads=2)
    opener = decoded.batch(refs)
    opened = []
    for ref in refs:
        if ref.data is not None:
            with pytest.raises(ValueError, match="row bad: unreadable"):
                opener(ref)
            continue
        opened.append(opener(ref))
    assert decoded.decoded == 3 and [im.getpixel((0, 0)) for im in opened[:3]] == [(255, 0, 0), (0, 0, 255),
                                                                                  (0, 128, 0)]
    assert opened[0] is opened[3] and opened[1] is opened[4] and all(SOURCE_KEY in im.info for im in opened)
    # Through a worker's CPU stage: the bad picture's sample gets its error, the others go on (a text backend
    # reads no pictures, so the count shows the decoding).
    from evalfleet.engine.worker_loop import prepare_batch

    class Echo:  # the CPU stage's only use of the backend here: `prepare`
        def prepare(self, requests):
            return requests

    samples = [Sample("d", str(k), "q", "q", ["a"], [ref]) for k, ref in enumerate(refs)]
    ready = prepare_batch(Echo(), Work(0, samples, 0), DecodedImages(threads=2))  # type: ignore[arg-type]
    assert [e.sample_id for e in ready.errors] == ["3"] and "row bad" in ready.errors[0].error
    assert len(ready.samples) == 6


def test_a_worker_gives_back_the_later_half_of_what_it_has_not_started():
    """`TakeBack` (issue 40): the worker's pipe thread answers at once with the later half of the chunk's samples not
    yet taken into a batch, which it then never takes; a chunk it has taken whole gives nothing back."""
    from multiprocessing import Pipe

    from evalfleet.engine.messages import GivenBack, Stop, TakeBack, Work
    from evalfleet.engine.worker_loop import WorkerLoop
    from evalfleet.records import Sample

    driver, worker = Pipe()
    loop = WorkerLoop(worker, batch_size=2)
    chunk = [Sample("d", f"s{i}", "q", "q") for i in range(7)]
    driver.send(Work(0, chunk, 1))
    driver.send(Work(1, chunk[:2], 1))
    assert [s.id for s in loop.take().samples] == ["s0", "s1"]  # started: s0, s1; left: s2..s6 (five)
    driver.send(TakeBack(0))
    got = driver.recv()
    while not isinstance(got, GivenBack):  # (heartbeats)
        got = driver.recv()
    assert got == GivenBack(0, ["s5", "s6"])
    taken = [s.id for _ in range(3) for s in loop.take().samples]
    assert taken == ["s2", "s3", "s4", "s0", "s1"]  # the rest of chunk 0, then chunk 1
    driver.send(TakeBack(0))  # chunk 0 is all taken
    got = driver.recv()
    while not isinstance(got, GivenBack):
        got = driver.recv()
    assert got == GivenBack(0, [])
    driver.send(Stop())
    assert loop.take() is None
    loop.close()
