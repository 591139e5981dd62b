import pytest

from evalfleet.errors import UserError
from evalfleet.placement import Machine, plan_workers


def test_one_worker_per_visible_gpu_pinned_by_physical_id():
    specs = plan_workers(Machine(["2", "5"], 16), gpus=None, workers=None)
    assert [(s.name, s.gpu, s.threads) for s in specs] == [("gpu0", "2", 8), ("gpu1", "5", 8)]


def test_gpu_selection_and_cpu_fallback():
    assert [s.gpu for s in plan_workers(Machine(["0", "1", "2"], 4), gpus=[2], workers=None)] == ["2"]
    cpu = plan_workers(Machine([], 2), gpus=None, workers=2)
    assert [(s.name, s.gpu, s.threads) for s in cpu] == [("cpu0", None, 1), ("cpu1", None, 1)]
    assert len(plan_workers(Machine([], 8), gpus=None, workers=None)) == 1
    with pytest.raises(UserError, match="only 1 GPU"):
        plan_workers(Machine(["0"], 2), gpus=[3], workers=None)
