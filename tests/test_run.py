"""End to end: real models, real worker processes, a real store; kills are real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_QUESTIONS, make_config, quiet_console

from evalfleet.run import run
from evalfleet.store import Store

TEXT_DATASET = [{"name": "qa", "path": str(DEMO_QUESTIONS), "prompt": "{question} Answer briefly."}]
N_TEXT = sum(1 for _ in DEMO_QUESTIONS.open())


def predictions(run_dir: Path, dataset: str = "qa") -> dict[str, str]:
    store = Store.open_existing(run_dir)
    try:
        return {r["id"]: r["prediction"] for r in store.rows("generate", dataset)}
    finally:
        store.close()


def result_count(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # created, schema not written yet
        return 0
    finally:
        con.close()


def wait_for(cond, timeout: float = 120, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smollm2):
    """An uninterrupted one-worker run over the demo questions."""
    out = tmp_path_factory.mktemp("ref")
    summary = run(make_config(out, smollm2, TEXT_DATASET), console=quiet_console())
    return out / "t", summary


def write_yaml(tmp_path: Path, smollm2: Path, workers: int) -> Path:
    cfg = make_config(tmp_path, smollm2, TEXT_DATASET, workers=workers)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evalfleet.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_text_run_scores_and_writes_reports(reference):
    run_dir, summary = reference
    qa = summary["datasets"]["qa"]
    assert (qa["samples"], qa["finished"], qa["errors"]) == (N_TEXT, N_TEXT, 0)
    # SmolLM2 answers "The capital of France is Paris.": a whole-output match scores it 0, a fair one does not.
    assert qa["exact_match"]["all"] < 0.2 < qa["lenient_match"]["all"]
    lines = [json.loads(x) for x in (run_dir / "predictions" / "qa.jsonl").read_text().splitlines()]
    assert len(lines) == N_TEXT and set(lines[0]) == {"id", "question", "prediction", "extracted",
                                                              "extraction", "answer", "score", "error", "prompt"}
    paris = next(x for x in lines if "France" in x["question"])
    assert "Paris" in paris["prediction"] and paris["score"]["lenient_match"] == 1.0
    assert "| qa | 44 | 44 | 0 |" in (run_dir / "summary.md").read_text()
    saved = json.loads((run_dir / "summary.json").read_text())
    # `report` rebuilds the same summary from the store alone.
    (run_dir / "summary.json").unlink()
    proc = cli("report", str(run_dir))
    assert proc.wait(120) == 0, proc.stdout.read()
    assert json.loads((run_dir / "summary.json").read_text()) == saved


def test_two_workers_give_identical_predictions(tmp_path, smollm2, reference):
    run(make_config(tmp_path, smollm2, TEXT_DATASET, workers=2), console=quiet_console())
    store = Store.open_existing(tmp_path / "t")
    used = {r["worker"] for r in store.rows("generate", "qa")}
    store.close()
    assert used == {"cpu0.0", "cpu1.0"}  # both really worked
    assert predictions(tmp_path / "t") == predictions(reference[0])


def start_run(tmp_path: Path, smollm2: Path, min_results: int) -> tuple[Path, subprocess.Popen, Path, list[int]]:
    """`evalfleet run` with one worker in a subprocess, once `min_results` are committed: config, process,
    store path and worker pids."""
    config = write_yaml(tmp_path, smollm2, workers=1)
    db = tmp_path / "t" / "store.db"
    proc = cli("run", str(config))
    wait_for(lambda: db.exists() and result_count(db) >= min_results, what="first results")
    return config, proc, db, [w["pid"] for w in Store(db).workers()]


def test_resume_after_sigkill_of_the_driver(tmp_path, smollm2, reference):
    config, proc, db, workers = start_run(tmp_path, smollm2, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = result_count(db)
    assert 8 <= partial < N_TEXT
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="orphaned workers to exit")
    second = cli("run", str(config), "--workers", "2")  # resume with another worker count
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    assert f"{partial} already done, {N_TEXT - partial} to do" in output
    assert result_count(db) == N_TEXT
    assert predictions(tmp_path / "t") == predictions(reference[0])


def test_dead_worker_is_replaced_and_its_chunk_requeued(tmp_path, smollm2, reference):
    config = write_yaml(tmp_path, smollm2, workers=2)
    db = tmp_path / "t" / "store.db"
    proc = cli("run", str(config))

    def running_worker():
        if not db.exists() or result_count(db) < 4:
            return None
        return next((w for w in Store(db).workers() if w["state"] == "running" and w["id"].startswith("generate/cpu1.0@")), None)

    victim = wait_for(running_worker, what="a running worker")
    os.kill(victim["pid"], signal.SIGKILL)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "worker cpu1.0 died (exit code -9)" in output
    assert f"[evalfleet] {N_TEXT}/{N_TEXT} done (100%), 0 remaining" in output  # plain progress lines
    states = {w["id"].split("@")[0]: w["state"] for w in Store(db).workers()}
    assert states["generate/cpu1.0"] == "died (-9)" and "generate/cpu1.1" in states
    assert result_count(db) == N_TEXT
    assert predictions(tmp_path / "t") == predictions(reference[0])


def test_fresh_starts_over_and_other_settings_are_refused(tmp_path, smollm2):
    ds = [{**TEXT_DATASET[0]}]
    run(make_config(tmp_path, smollm2, ds, limit=2), console=quiet_console())
    from evalfleet.errors import UserError

    changed = make_config(tmp_path, smollm2, ds, limit=2, model={"generation": {"max_new_tokens": 5}})
    with pytest.raises(UserError, match="(?s)stage .generate. made with other model, generation or judge settings.*"
                                        r"model.generation.max_new_tokens: 16 -> 5"):
        run(changed, console=quiet_console())
    summary = run(changed, fresh=True, console=quiet_console())
    assert summary["datasets"]["qa"]["finished"] == 2


def test_a_settings_refusal_names_only_what_changed(tmp_path):
    """Issue 38, item 8: a `model:` config's stored settings were compared with a stage's, and the judge parsing a
    stage has (`parse.kind: None -> 'number'`, ...) was named as changed beside the setting that was."""
    from evalfleet.preflight import changed_settings

    before = make_config(tmp_path, tmp_path, [{**TEXT_DATASET[0]}], limit=2)
    after = make_config(tmp_path, tmp_path, [{**TEXT_DATASET[0]}], limit=2, model={"generation": {"max_new_tokens": 5}})
    assert changed_settings(before.model_dump(mode="json"), after.pipeline()[0], 0) == [
        "model.generation.max_new_tokens: 16 -> 5"]
    assert changed_settings(before.model_dump(mode="json"), after.pipeline()[0], 1) == [
        "model.generation.max_new_tokens: 16 -> 5", "seed: 0 -> 1"]


def test_cli_names_missing_model_path_and_unloadable_model(tmp_path, smollm2):
    cfg = write_yaml(tmp_path, smollm2, workers=1)
    text = cfg.read_text().replace(str(smollm2), str(tmp_path / "no-such-model"))
    cfg.write_text(text)
    proc = cli("run", str(cfg))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and f"model path not found: {tmp_path / 'no-such-model'}" in out
    (tmp_path / "no-such-model").mkdir()
    proc = cli("run", str(cfg), "--limit", "1")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "could not load the model" in out, out


def test_ctrl_c_saves_results_and_stops_workers(tmp_path, smollm2):
    _, proc, db, workers = start_run(tmp_path, smollm2, 4)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "interrupted; results so far are saved" in output
    assert result_count(db) >= 4
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="workers to stop")
