"""Seeing a run: `status` from another process while it runs, the performance summary, report formats,
the HTML report in a real headless Chromium, and `compare` of two runs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DEMO_QUESTIONS, cli, quiet_console

from evalfleet.config import parse_config
from evalfleet.errors import UserError
from evalfleet.reporting.compare import compare_runs, mcnemar_p, paired_bootstrap, to_html, to_markdown
from evalfleet.reporting.plots import MIN_THROUGHPUT_SPAN_S
from evalfleet.reporting.status import read_status, status_view
from evalfleet.run import run
from evalfleet.store import Store

JUDGE = ("Question: {question}\nReference answer: {answer}\nStudent answer: {prediction}\n"
         "Grade the student answer from 0 to 10. Reply with the number only.")


def questions(tmp_path: Path, n: int, broken: bool = False) -> Path:
    data = tmp_path / f"qa{n}.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]) + ("{broken\n" if broken else ""))
    return data


def smol_config(tmp_path: Path, smollm2: Path, name: str, data: Path, judge: bool = False, **over: object) -> dict:
    model = {"path": str(smollm2), "dtype": "float32", "batch_size": 4, "generation": {"max_new_tokens": 12}}
    cfg: dict = {"name": name, "output_dir": str(tmp_path / "runs"), "workers": 1, "metrics": ["lenient_match"],
                 "datasets": [{"name": "qa", "path": str(data), "prompt": "{question} Answer briefly."}],
                 "judge_cache": None, **over}
    if judge:
        cfg["stages"] = [{"name": "generate", "kind": "generate", "model": model},
                         {"name": "judge", "kind": "judge", "prompt": JUDGE, "parse": {"kind": "number"},
                          "model": {**model, "generation": {"max_new_tokens": 4}}}]
    else:
        cfg["model"] = model
    return cfg


def test_status_from_another_process_while_the_run_writes(tmp_path, smollm2):
    cfg = smol_config(tmp_path, smollm2, "live", questions(tmp_path, 24))
    cfg["model"]["batch_size"] = 2
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "live"
    proc = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "run", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            time.sleep(0.3)
            assert proc.poll() is None, "the run ended early"
            if (run_dir / "store.db").exists():
                try:
                    st = read_status(run_dir)
                except UserError:  # not started far enough yet
                    continue
                if st.state == "running" and st.rows and 0 < st.rows[0].done < st.rows[0].expected:
                    seen = st
                    break
        assert seen is not None, "never saw the run half done"
        row = seen.rows[0]
        assert (row.stage, row.dataset, row.expected, row.state) == ("generate", "qa", 24, "running")
        assert row.remaining == 24 - row.done and 0 < row.percent < 100
        assert [w["state"] for w in seen.workers] == ["running"] and seen.workers[0]["id"].startswith("generate/cpu0.0@")
        out = subprocess.run([sys.executable, "-m", "evalfleet.cli", "status", str(run_dir)], capture_output=True,
                             text=True, check=True).stdout
        assert "run live: running" in out and "generate/cpu0.0" in out
        proc.send_signal(signal.SIGKILL)  # the driver dies without a word: status must notice
        proc.wait()
        stopped = read_status(run_dir)
        assert stopped.state == "stopped" and stopped.rows[0].state == "pending" and stopped.eta_s is None
    finally:
        proc.kill()
    # Resumed to the end: done, nothing remaining, ETA 0.
    code, out = cli("run", str(path))
    assert code == 0, out
    st = read_status(run_dir)
    assert st.state == "done" and st.rows[0].state == "done" and st.rows[0].remaining == 0 and st.eta_s == 0
    console = quiet_console()
    console.print(status_view(st))
    assert "run live: done" in console.file.getvalue() and "samples/s over the run" in console.file.getvalue()
    # A finished run's figures stay as they were, however late status is asked (issue 21, item 4).
    later = read_status(run_dir, now=time.time() + 3600)
    assert (later.elapsed_s, later.rate) == (st.elapsed_s, st.rate) and st.rate > 0 and st.ended is not None


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory, smollm2):
    """A finished generate -> judge run over 8 questions and one broken row."""
    tmp = tmp_path_factory.mktemp("judged")
    cfg = parse_config(smol_config(tmp, smollm2, "judged", questions(tmp, 8, broken=True), judge=True))
    summary = run(cfg, console=(console := quiet_console()))
    return tmp / "runs" / "judged", summary, console.file.getvalue()


def test_performance_summary_at_the_end_of_a_run(judged_run):
    run_dir, summary, out = judged_run
    assert "performance: run wall" in out and "GPU-hours" in out
    assert summary["wall_s"] > 0 and summary["gpu_hours"] == 0  # CPU workers hold no GPU
    for stage in ("generate", "judge"):
        perf = summary["performance"][stage]
        (worker,) = perf["workers"].values()
        assert worker["device"] == "cpu0" and worker["gpus"] == 0
        assert 0 < worker["busy_s"] <= worker["held_s"] and 0 < worker["busy_fraction"] <= 1
        assert perf["wall_s"] >= perf["load_wall_s"] >= 0 and perf["samples_per_s"] > 0
        assert perf["load_wall_s"] > 0 or stage == "judge"  # the judge attaches to the answering worker, loaded
        # Rates over the generation phase: no more samples than the stage made, in no more time than it took
        # (each figure is rounded to 0.01: the bounds allow for that).
        rate, wall = perf["samples_per_s"], perf["generate_wall_s"]
        assert rate * wall <= perf["samples"] + 0.005 * (rate + wall) + 1e-4
        assert wall <= perf["wall_s"] - perf["load_wall_s"] + 0.02
        assert worker["busy_fraction"] >= (worker["busy_s"] - 0.005) / (worker["held_s"] + 0.005) - 1e-3  # serving <= held
        assert worker["load_s"] <= perf["load_wall_s"] + 0.02
    assert "## Performance" in (run_dir / "summary.md").read_text()


def test_startup_breakdown_from_command_to_first_result(judged_run):
    """Each phase is measured (not a default), they add up to no more than the replica's load, and the tables
    show them."""
    from evalfleet.observe.startup import WORKER_PHASES

    run_dir, summary, out = judged_run
    assert summary["startup"]["driver start"] > 0.2  # an interpreter, its imports: never instant
    assert summary["startup"]["datasets"] > 0
    for stage in ("generate", "judge"):
        perf = summary["performance"][stage]
        startup = perf["startup"]
        assert startup["plan"] >= 0
        (phases,) = startup["workers"].values()
        (load_s,) = perf["load_s"].values()
        if stage == "judge":  # the answering model: its worker, kept loaded, only attaches
            assert set(phases) == {"process start", "attach"} and load_s == 0
            continue
        assert set(phases) == set(WORKER_PHASES) - {"CUDA init", "attach"}  # a CPU worker initialises no CUDA
        # imports: measured, near 0 where the fork server imported torch and transformers for an earlier run
        assert phases["imports"] >= 0 and phases["weights"] > 0 and phases["process start"] > 0
        worker_side = sum(v for k, v in phases.items() if k != "process start")
        assert worker_side <= load_s + 0.01  # the phases split the load the worker reported
        assert startup["first result"] >= load_s  # a result comes once the replica is ready
    assert "start-up of the last replica ready: process start" in out
    assert "start-up, seconds" in out and "Start-up (seconds)" in (run_dir / "summary.md").read_text()


def test_report_formats_csv_parquet_and_html(judged_run):
    run_dir, summary, _ = judged_run
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "report", str(run_dir), "--format", "csv,parquet,html"],
                   check=True, capture_output=True)
    table = pq.read_table(run_dir / "predictions.parquet").to_pylist()
    assert len(table) == 9 and {"dataset", "id", "prediction", "lenient_match", "judge_score", "judge_raw"} <= set(table[0])
    csv_text = (run_dir / "predictions" / "qa.csv").read_text()
    assert csv_text.splitlines()[0].startswith("dataset,id,question") and len(csv_text.splitlines()) >= 10
    page = (run_dir / "report.html").read_text()
    for plot in ("metric per dataset", "judge: score histogram", "busy time per worker"):
        assert plot in page
    store = Store.open_existing(run_dir)
    times = store.finish_times("generate") + store.finish_times("judge")
    store.close()
    long_enough = max(times) - min(times) >= MIN_THROUGHPUT_SPAN_S  # else no throughput to plot
    assert ("throughput over time" in page) == long_enough
    assert page.count("data:image/png;base64,") == 3 + long_enough
    bad = subprocess.run([sys.executable, "-m", "evalfleet.cli", "report", str(run_dir), "--format", "pdf"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown report format(s) pdf" in bad.stdout


def chromium():
    """A headless Chromium through Debian's chromium + chromium-driver; CI requires it (EVALFLEET_REQUIRE_ALL)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def visible_rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return [r for r in driver.find_elements(By.CSS_SELECTOR, "#samples tbody tr") if r.is_displayed()]


def test_html_report_in_headless_chromium_filters_and_shows_thumbnails(judged_run, tmp_path, tiny_qwen2vl):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run_dir, summary, _ = judged_run
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "report", str(run_dir), "--format", "html"],
                   check=True, capture_output=True)
    # A VLM run on images, for the thumbnails.
    vlm = parse_config({"name": "vlm", "output_dir": str(tmp_path), "workers": 1, "judge_cache": None,
                        "model": {"path": str(tiny_qwen2vl), "dtype": "float32", "generation": {"max_new_tokens": 2}},
                        "datasets": [{"name": "easy", "builtin": "easy-vqa", "limit": 3}]})
    run(vlm, console=quiet_console())
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "report", str(tmp_path / "vlm"), "--format", "html"],
                   check=True, capture_output=True)

    driver = chromium()
    try:
        driver.get((run_dir / "report.html").as_uri())
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        preds = [json.loads(x) for x in (run_dir / "predictions" / "qa.jsonl").read_text().splitlines()]
        assert len(visible_rows(driver)) == 9
        driver.find_element(By.ID, "f-errors").click()
        assert len(visible_rows(driver)) == sum(p["error"] is not None for p in preds) == 1
        driver.find_element(By.ID, "f-errors").click()
        driver.find_element(By.ID, "f-wrong").click()
        wrong = sum(p["score"] is not None and p["score"]["lenient_match"] < 0.5 for p in preds)
        assert len(visible_rows(driver)) == wrong and 0 < wrong < 9
        assert driver.find_element(By.ID, "shown").text == str(wrong)
        Select(driver.find_element(By.ID, "f-dataset")).select_by_value("qa")
        assert len(visible_rows(driver)) == wrong
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        driver.get((tmp_path / "vlm" / "report.html").as_uri())
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        thumbs = driver.find_elements(By.CSS_SELECTOR, "#samples img.thumb")
        assert len(thumbs) == 3 and all(driver.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs)
        driver.save_screenshot(str(tmp_path / "vlm.png"))
    finally:
        driver.quit()


def test_compare_two_runs_pairs_samples_by_id(tmp_path, smollm2):
    data = questions(tmp_path, 12)
    run(parse_config(smol_config(tmp_path, smollm2, "a", data, limit=10)), console=quiet_console())
    b = smol_config(tmp_path, smollm2, "b", data)
    b["model"]["generation"]["max_new_tokens"] = 3  # cut answers: some right ones go wrong
    run(parse_config(b), console=quiet_console())
    c = compare_runs(tmp_path / "runs" / "a", tmp_path / "runs" / "b")
    assert c.metric == "lenient_match" and c.only_datasets == []
    (d,) = c.datasets
    assert d.paired == 10 and len(d.only_in_b) == 2 and d.only_in_a == []
    assert d.a_only + d.b_only + d.both + d.neither == 10
    assert d.ci is not None and d.ci[0] <= d.diff <= d.ci[1]
    assert d.p_value == pytest.approx(mcnemar_p(d.a_only, d.b_only))
    assert len(d.changed) == d.a_only + d.b_only
    # The direction, from the runs' own predictions: A is the first run, B the one with cut answers.
    scores = [{x["id"]: x["score"]["lenient_match"] for x in map(json.loads, (tmp_path / "runs" / r / "predictions" /
               "qa.jsonl").read_text().splitlines())} for r in ("a", "b")]
    paired = sorted(set(scores[0]) & set(scores[1]))
    assert d.mean_a == pytest.approx(sum(scores[0][i] for i in paired) / 10)
    assert d.mean_b == pytest.approx(sum(scores[1][i] for i in paired) / 10)
    assert d.a_only == sum(scores[0][i] >= 0.5 > scores[1][i] for i in paired) > d.b_only  # cutting loses answers
    assert d.diff == pytest.approx(d.mean_b - d.mean_a) and d.diff < 0
    md = to_markdown(c)
    assert "| qa | 10 |" in md and "McNemar p" in md
    assert "<table>" in to_html(c)
    out = subprocess.run([sys.executable, "-m", "evalfleet.cli", "compare", str(tmp_path / "runs" / "a"),
                          str(tmp_path / "runs" / "b"), "--out", str(tmp_path / "cmp.html")],
                         capture_output=True, text=True, check=True).stdout
    assert "| qa | 10 |" in out and (tmp_path / "cmp.html").is_file()


def test_mcnemar_and_bootstrap_statistics():
    import numpy as np

    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # exact binomial, two-sided
    assert mcnemar_p(0, 0) == 1.0
    same = np.array([0.0, 1.0, 1.0, 0.0])
    assert paired_bootstrap(same, same, seed=0) == (0.0, 0.0)
    a, b = np.zeros(200), np.ones(200)
    b[:50] = 0  # B is right on 150 more samples: diff 0.75
    low, high = paired_bootstrap(a, b, seed=0)
    assert low < 0.75 < high and high - low < 0.2


DRIVER_KILLED_EARLY = """
import os, signal, sys, time
from evalfleet.records import Result, Sample
from evalfleet.store import Store
store = Store(__import__("pathlib").Path(sys.argv[1]))
store.set_meta("config", __import__("json").loads(sys.argv[2]))
store.set_meta("state", {"pid": os.getpid(), "host": __import__("socket").gethostname(), "started": time.time(),
                         "state": "running"})
store.driver_state("host:1:ab", "running")  # as `evalfleet run` registers, then stores before its first heartbeat
store.put_samples([Sample("qa", f"s{i}", "q", "p", ["a"]) for i in range(4)])
store.set_dataset("qa", "running", 4)
store.add_results("generate", [Result("qa", f"s{i}", "a") for i in range(3)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_status_of_a_driver_killed_before_its_first_heartbeat_claims_no_duration_or_rate(tmp_path, smollm2):
    """Issue 38, item 9c: status said "took 0s; 144631 samples/s" of such a run."""
    cfg = parse_config(smol_config(tmp_path, smollm2, "early", questions(tmp_path, 4)))
    run_dir = tmp_path / "runs" / "early"
    run_dir.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", DRIVER_KILLED_EARLY, str(run_dir / "store.db"),
                           json.dumps(cfg.model_dump(mode="json"))], capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    st = read_status(run_dir)
    assert st.state == "stopped" and st.rate is None and not st.end_known, st
    console = quiet_console()
    console.print(status_view(st))
    head = console.file.getvalue().splitlines()[0]
    assert "killed before its first heartbeat" in head and "samples/s" not in head and "took" not in head, head


def test_the_performance_line_of_shared_prefixes():
    from evalfleet.observe.performance import reuse_line

    assert reuse_line(None) == "-"
    assert reuse_line({"prompt_tokens": 100, "shared_tokens": 0, "prefills_unshared": 3}).startswith("off")
    line = reuse_line({"prompt_tokens": 1000, "shared_tokens": 750, "images": 22, "images_encoded": 2,
                       "prefill_s": 2.0, "prefills_unshared": 0})
    assert line == "images encoded 2 of 22; prompt tokens shared 750 of 1,000 (75%); ~6.0 s prefill saved"
