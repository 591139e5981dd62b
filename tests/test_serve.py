"""Warm replicas (issue 20, item 4): `evalfleet serve` keeps a model loaded; runs with `--serve` attach to it one
after another and give the answers a run with its own worker gives; `evalfleet serve --stop` ends it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import DEMO_QUESTIONS, quiet_console

from evalfleet.config import parse_config
from evalfleet.engine.served import free_replicas, registered
from evalfleet.run import run
from evalfleet.store import Store


def _config(tmp_path: Path, model: Path, out: str, **over) -> dict:
    return {"name": "quiz", "output_dir": str(tmp_path / out), "workers": 1, "judge_cache": None,
            "cluster": {"serve_dir": str(tmp_path / "serve"), **over.pop("cluster", {})},
            "model": {"path": str(model), "dtype": "float32", "engine": "continuous",
                      "generation": {"max_new_tokens": 8, **over.pop("generation", {})}},
            "datasets": [{"name": "quiz", "path": str(DEMO_QUESTIONS), "limit": 10}], "metrics": ["exact_match"]}


def _answers(cfg: dict, console=None) -> tuple[dict[str, str], list[int]]:
    run(parse_config(cfg), console=console or quiet_console())
    run_dir = Path(cfg["output_dir"]) / "quiz"
    rows = map(json.loads, (run_dir / "predictions" / "quiz.jsonl").open())
    store = Store(run_dir / "store.db")
    pids = [w["pid"] for w in store.workers()]
    store.close()
    return {r["id"]: r["prediction"] for r in rows}, pids


def test_served_replica_answers_runs_one_after_another_then_stops(tmp_path, smollm2):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, smollm2, "unused")))
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "serve", str(path), "--idle-minutes", "10"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (found := registered(tmp_path / "serve")):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        (_, replica), = found

        own, own_pids = _answers(_config(tmp_path, smollm2, "own"))  # its own worker, as without `serve`
        first, first_pids = _answers(_config(tmp_path, smollm2, "first", cluster={"backend": "serve"}))
        second, second_pids = _answers(_config(tmp_path, smollm2, "second", cluster={"backend": "serve"}))
        shorter, shorter_pids = _answers(_config(tmp_path, smollm2, "shorter", cluster={"backend": "serve"},
                                                 generation={"max_new_tokens": 3}))  # a session's own settings
        assert len(own) == 10 and first == own and second == own
        assert all(own[k].startswith(v) for k, v in shorter.items()) and shorter != own
        assert first_pids == second_pids == shorter_pids == [replica.pid] and own_pids != [replica.pid]  # no load

        def model(**over):
            return parse_config(_config(tmp_path, smollm2, "x", **over)).pipeline()[0].model

        assert len(free_replicas(tmp_path / "serve", model(generation={"max_new_tokens": 9}))) == 1
        assert free_replicas(tmp_path / "serve", model().model_copy(update={"dtype": "bfloat16"})) == []

        stop = subprocess.run([sys.executable, "-m", "evalfleet.cli", "serve", "--stop", "--serve-dir",
                               str(tmp_path / "serve")], capture_output=True, text=True, timeout=120, check=False)
        assert stop.returncode == 0 and "stopped 1 served replica" in stop.stdout, stop.stdout + stop.stderr
        assert server.wait(60) == 0
        assert registered(tmp_path / "serve") == []
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    assert "serving 1 replica(s)" in (tmp_path / "serve.log").read_text()


def test_run_with_serve_and_nothing_served_starts_its_own_workers(tmp_path, smollm2):
    cfg = _config(tmp_path, smollm2, "alone", cluster={"backend": "serve"})
    cfg["datasets"][0]["limit"] = 2
    console = quiet_console()
    answers, pids = _answers(cfg, console)
    assert len(answers) == 2 and len(pids) == 1
    assert "no free replica of this stage's model (weights, dtype, engine) is served" in " ".join(console.file.getvalue().split())


def test_serve_reports_every_input_problem_at_once(tmp_path):
    """As `evalfleet run` does: a model path that does not exist and a dataset with no reference answers (metrics
    need them), both in one message, exit 2, nothing started or registered."""
    rows = tmp_path / "noanswers.jsonl"
    rows.write_text('{"id": "a", "question": "What is 2 + 2?"}\n')
    cfg = _config(tmp_path, tmp_path / "no-such-model", "out")
    cfg["datasets"] = [{"name": "quiz", "path": str(rows)}]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "evalfleet.cli", "serve", str(path)], capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "no-such-model" in out and "no row has a reference answer" in out, out
    assert not list(registered(tmp_path / "serve"))
