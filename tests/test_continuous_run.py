"""`evalfleet run` on the continuous engine with sampling (CPU, SmolLM2, real worker processes): a sample's
answer is the same with one worker or two, and after a SIGKILL of the run and a resume."""

from __future__ import annotations

import signal

import pytest
import yaml
from conftest import make_config, quiet_console
from test_run import N_TEXT, TEXT_DATASET, alive, cli, predictions, result_count, wait_for

from evalfleet.run import run
from evalfleet.store import Store

SAMPLED = {"engine": "continuous", "batch_size": 8,
           "generation": {"max_new_tokens": 16, "temperature": 0.8, "top_p": 0.9}}


def config(out, smollm2, workers: int):
    return make_config(out, smollm2, TEXT_DATASET, workers=workers, model=SAMPLED)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, smollm2):
    out = tmp_path_factory.mktemp("sampled")
    summary = run(config(out, smollm2, 1), console=quiet_console())
    assert summary["datasets"]["qa"]["finished"] == N_TEXT
    return predictions(out / "t")


def test_two_workers_sample_the_same_answers(tmp_path, smollm2, one_worker):
    run(config(tmp_path, smollm2, 2), console=quiet_console())
    store = Store.open_existing(tmp_path / "t")
    rows = list(store.rows("generate", "qa"))
    store.close()
    assert {r["worker"] for r in rows} == {"cpu0.0", "cpu1.0"}
    assert predictions(tmp_path / "t") == one_worker
    greedy = tmp_path / "greedy"
    run(make_config(greedy, smollm2, TEXT_DATASET, model={"engine": "continuous", "batch_size": 8}),
        console=quiet_console())
    assert predictions(greedy / "t") != one_worker  # sampling changed answers: the comparison above can fail


def test_killed_and_resumed_run_samples_the_same_answers(tmp_path, smollm2, one_worker):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, smollm2, 1).model_dump(mode="json")))
    db = tmp_path / "t" / "store.db"
    proc = cli("run", str(path))
    wait_for(lambda: db.exists() and result_count(db) >= 6, what="first results")
    workers = [w["pid"] for w in Store(db).workers()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 6 <= result_count(db) < N_TEXT
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="orphaned workers to exit")
    second = cli("run", str(path), "--workers", "2")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    assert result_count(db) == N_TEXT
    assert predictions(tmp_path / "t") == one_worker


def test_slots_fed_from_several_chunks_sample_the_same_answers(tmp_path, smollm2, one_worker):
    """Chunks smaller than the engine's slots (as on a GPU, where an auto batch is 512 slots in chunks of 256): the
    engine takes rows of the two chunks the worker holds at once, and each sample's answer is still its own."""
    cfg = make_config(tmp_path, smollm2, TEXT_DATASET, workers=1, model=SAMPLED, chunk_size=4, limit=16)
    summary = run(cfg, console=quiet_console())
    assert summary["datasets"]["qa"]["finished"] == 16
    ours = predictions(tmp_path / "t")
    assert len(ours) == 16 and ours == {i: one_worker[i] for i in ours}
