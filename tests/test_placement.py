import pytest

from evalfleet.engine.queue import make_chunks
from evalfleet.errors import UserError
from evalfleet.plan.memory import ModelEstimate
from evalfleet.plan.placement import (
    MAX_AUTO_BATCH,
    GiB,
    Gpu,
    Machine,
    chunk_size_for,
    describe,
    parse_bytes,
    plan,
    split_gpus,
)
from evalfleet.records import Sample


def gpus(n: int, gib: float, free: float | None = None) -> list[Gpu]:
    return [Gpu(i, str(i), "Test GPU", int(gib * GiB), int((free or gib) * GiB)) for i in range(n)]


def model(weights_gib: float, kv_kib_per_token: int = 128, tokens: int = 512) -> ModelEstimate:
    return ModelEstimate(params=int(weights_gib * GiB / 2), weight_bytes=int(weights_gib * GiB), dtype="bfloat16",
                         kv_bytes_per_token=kv_kib_per_token * 1024, tokens_per_sample=tokens, image_tokens=0,
                         activation_bytes_per_sample=50 * 2**20, source="test")


def test_model_that_fits_one_gpu_gets_one_replica_per_gpu():
    p = plan(Machine(gpus(6, 80), 96), model(60))
    assert (p.mode, p.gpus_per_replica, len(p.workers)) == ("data_parallel", 1, 6)
    assert [w.gpus for w in p.workers] == [(str(i),) for i in range(6)]
    assert p.reasons[0] == "layout: 6 replica(s) x 1 GPU(s) = data_parallel"
    assert 1 <= p.batch_size <= MAX_AUTO_BATCH and p.batch_size & (p.batch_size - 1) == 0  # a power of two


def test_an_auto_batch_of_512_slots_is_fed_in_chunks_of_256():
    """A 7B on a 141 GB GPU gets 512 decode slots, but 451 samples still make two chunks (two workers on two GPUs),
    and a batch size the user set is the chunk size, as before."""
    p = plan(Machine(gpus(2, 141), 32), model(15, kv_kib_per_token=56, tokens=768))
    assert p.batch_size == 512 == MAX_AUTO_BATCH
    assert chunk_size_for(p.batch_size, auto=True) == 256
    vqa_rad = [Sample("d", f"s{i}", f"question {i}", f"question {i}") for i in range(451)]
    assert [len(c.samples) for c in make_chunks(vqa_rad, set(), chunk_size_for(p.batch_size, auto=True))] == [256, 195]
    assert chunk_size_for(64, auto=True) == 64
    assert chunk_size_for(512, auto=False) == 512
    assert chunk_size_for(512, auto=True, configured=100) == 100


def test_model_larger_than_one_gpu_is_sharded_in_hybrid_replicas():
    p = plan(Machine(gpus(8, 12), 32), model(28))
    assert p.mode == "hybrid" and p.gpus_per_replica in (3, 4)
    assert len(p.workers) == 8 // p.gpus_per_replica
    assert all(len(w.gpus) == p.gpus_per_replica for w in p.workers)
    assert not set(p.workers[0].gpus) & set(p.workers[1].gpus)


def test_too_large_model_is_a_clear_error():
    with pytest.raises(UserError, match=r"does not fit: it needs about 200\.\d GiB and the 2 chosen GPU\(s\) offer"):
        plan(Machine(gpus(2, 80), 16), model(200))


def test_forced_modes():
    m = Machine(gpus(4, 80), 16)
    assert len(plan(m, model(10), mode="single").workers) == 1
    mp = plan(m, model(10), mode="model_parallel")
    assert (mp.mode, [w.gpus for w in mp.workers]) == ("model_parallel", [("0", "1", "2", "3")])
    with pytest.raises(UserError, match="mode data_parallel: the model needs 2 GPUs' memory"):
        plan(m, model(100), mode="data_parallel")
    two = plan(m, model(10), gpus_per_replica=2)
    assert [w.gpus for w in two.workers] == [("0", "1"), ("2", "3")]


def test_memory_cap_and_gpu_selection_shape_the_plan():
    m = Machine(gpus(2, 141), 32)
    capped = plan(m, model(28), max_memory_per_gpu=parse_bytes("20GiB"))
    assert (capped.mode, len(capped.workers)) == ("model_parallel", 1)
    assert capped.workers[0].max_memory_per_gpu == 20 * GiB
    assert "capped at 20.0 GiB" in capped.reasons[1]
    assert [w.gpus for w in plan(m, model(28), gpus=[1]).workers] == [("1",)]
    with pytest.raises(UserError, match="only 2 GPU"):
        plan(m, model(1), gpus=[5])


def test_batch_size_follows_free_memory_and_explicit_sizes_win():
    big = plan(Machine(gpus(1, 80), 8), model(15)).batch_size
    busy = plan(Machine(gpus(1, 80, free=30), 8), model(15)).batch_size
    assert big > busy >= 1
    assert plan(Machine(gpus(1, 80), 8), model(15), batch_size=3).batch_size == 3


def test_cpu_workers_and_description():
    cpu = plan(Machine([], 2), None, workers=2)
    assert [(w.name, w.gpus, w.threads) for w in cpu.workers] == [("cpu0", (), 1), ("cpu1", (), 1)]
    assert cpu.batch_size == 8
    lines = describe(Machine(gpus(1, 80), 8), model(15), plan(Machine(gpus(1, 80), 8), model(15)))
    assert lines[0] == "GPU 0 (0): Test GPU, 80.0 GiB total, 80.0 GiB free"
    assert lines[1].startswith("model: 8.05 B parameters (test) in bfloat16 = 15.0 GiB of weights")
    assert any(line.startswith("plan: batch size") for line in lines)


def test_cpu_default_is_a_worker_a_core_within_memory():
    """Issue 38, item 1: one single-thread worker a core (up to CPU_WORKERS_MAX), fewer where memory holds fewer
    copies of the weights; `workers` wins."""
    from evalfleet.plan.placement import CPU_WORKER_OVERHEAD, CPU_WORKERS_MAX

    layout = [(w.name, w.threads) for w in plan(Machine([], 2, 24 * GiB), model(0.5)).workers]
    assert layout == [("cpu0", 1), ("cpu1", 1)]
    assert len(plan(Machine([], 64, 512 * GiB), model(0.5)).workers) == CPU_WORKERS_MAX
    assert [w.threads for w in plan(Machine([], 16, None), None).workers] == [2] * 8  # no estimate: no memory cap
    tight = plan(Machine([], 16, 3 * (15 * GiB + CPU_WORKER_OVERHEAD)), model(15))
    assert (len(tight.workers), tight.workers[0].threads) == (2, 8) and "available memory" in tight.reasons[0]
    assert len(plan(Machine([], 16, 1 * GiB), model(15)).workers) == 1  # at least one
    assert len(plan(Machine([], 16, 512 * GiB), model(15), workers=3).workers) == 3


def test_parse_bytes():
    assert parse_bytes("10GiB") == 10 * GiB and parse_bytes("20GB") == 20 * 10**9 and parse_bytes("512") == 512
    with pytest.raises(UserError, match="cannot read 'lots'"):
        parse_bytes("lots")


def test_stages_at_once_get_disjoint_gpu_shares():
    assert split_gpus([0, 1, 2, 3], [None, None], ["gen", "judge"]) == [[0, 1], [2, 3]]
    assert split_gpus([0, 1, 2], [None, None], ["gen", "judge"]) == [[0], [1, 2]]
    assert split_gpus([0, 1, 2, 3], [None, [0], None], ["gen", "j1", "j2"]) == [[1], [0], [2, 3]]
    with pytest.raises(UserError, match="no GPU left for stage.s. judge"):
        split_gpus([0, 1], [[0, 1], None], ["gen", "judge"])
