"""Sampled answers with per-sample seeds through `evalfleet run` (issue 36, item 2): the same answers with one worker,
with two, and across a run killed mid-way and resumed.

A random-weight Qwen2-shaped model whose vocabulary is the tests' tiny tokenizer's (its answers decode to words),
questions of 20-200 words (400 on a CPU, 2,000 on a GPU), temperature 0.8, top-p 0.9, new tokens 32 on a CPU,
128 on a GPU (so that a run lasts long enough to be killed mid-way and to be shared), on the default engine:
  one          one driver, one worker
  again        `one` once more: what differs here is the run-to-run noise of floating point (which rows share a
               forward, a decode width or a copied prefix depends on timing), not the number of workers
  greedy       temperature 0, to show that sampling happened
  two          (CPU only) one driver, `workers: 2`
  two-drivers  two drivers started together on the same run folder, each with one worker (on a GPU, both on
               the one GPU): the store's leases share the work; the answers each worker stored are listed
  killed       one driver, SIGKILLed with its process group once a quarter of the answers are stored, then the
               same command again (it resumes); a kill that came after the run ended is said, not counted
Every run's answers are compared by sample id with `one`'s; each phase is printed and saved as it ends.

    python bench/sampled_runs.py [--device cuda|cpu] [--dtype float32] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from models import tiny_vlm

ROWS = 400
GPU_ROWS = 2000


def build(work: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    folder = work / "qwen2-small-words"
    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    cfg = Qwen2Config(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def config(work: Path, name: str, model: Path, data: Path, args: argparse.Namespace, temperature: float,
           workers: int | None) -> Path:
    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "seed": 7, "model": {"path": str(model), "dtype": args.dtype,
                                "generation": {"max_new_tokens": args.new, "temperature": temperature, "top_p": 0.9}},
           "datasets": [{"name": "d", "path": str(data)}]}
    if workers:
        cfg["workers"] = workers
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evalfleet.cli", "run", str(path), *extra]


def answers(work: Path, name: str) -> dict[str, str | None]:
    with sqlite3.connect(work / "runs" / name / "store.db") as db:
        return dict(db.execute("SELECT sample_id, output FROM results WHERE stage = 'generate'"))


def stored(work: Path, name: str) -> int:
    try:
        with sqlite3.connect(work / "runs" / name / "store.db", timeout=1) as db:
            return db.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def done_by_worker(work: Path, name: str) -> dict[str, int]:
    """Answers each worker stored, by its row in the workers table (stage/worker@host:driver-pid)."""
    with sqlite3.connect(work / "runs" / name / "store.db") as db:
        return dict(db.execute("SELECT id, done FROM workers ORDER BY rowid"))


def finish(proc: subprocess.Popen, timeout: float) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"`evalfleet run` did not end within {timeout:.0f} s")
    if proc.returncode:
        raise SystemExit(f"`evalfleet run` exit {proc.returncode}: {err.decode()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sampled"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--rows", type=int, default=None, help=f"default: {ROWS} (cpu), {GPU_ROWS} (cuda)")
    ap.add_argument("--new", type=int, default=None, help="new tokens a row (default: 32 on a CPU, 128 on a GPU, "
                                                          "so that a GPU run lasts long enough to be killed)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one `evalfleet run` may take")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    args.rows = args.rows or (ROWS if cpu else GPU_ROWS)
    args.new = args.new or (32 if cpu else 128)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.work)
    data = args.work / f"prompts-{args.rows}.jsonl"
    if not data.exists():
        import random

        rng = random.Random(0)
        words = "what colour shape is the in this picture left right top bottom large small circle square".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(20, 200))) + "?" for _ in range(args.rows)]
        data.write_text("".join(json.dumps({"id": f"s{i}", "question": t, "answer": "x"}) + "\n"
                                for i, t in enumerate(texts)))
    workers = 1 if cpu else None  # a GPU: one worker on its one GPU
    runs: dict[str, dict] = {"device": args.device, "dtype": args.dtype, "rows": args.rows, "new": args.new}

    def report(name: str) -> None:
        if name != "one":
            one, got = answers(args.work, "one"), answers(args.work, name)
            runs[name]["identical to one"] = f"{sum(got.get(k) == v for k, v in one.items())}/{len(one)}"
        print(f"{name}: {runs[name]}", flush=True)
        (args.out / "sampled_runs.json").write_text(json.dumps(runs, indent=1))

    def plain(name: str, temperature: float = 0.8, n_workers: int | None = workers) -> None:
        path = config(args.work, name, model, data, args, temperature, n_workers)
        t0 = time.perf_counter()
        finish(subprocess.Popen(command(path, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True), args.timeout)
        runs[name] = {"seconds": round(time.perf_counter() - t0, 1), "workers": done_by_worker(args.work, name)}
        report(name)

    plain("one")
    plain("again")
    plain("greedy", temperature=0.0)
    if cpu:
        plain("two", n_workers=2)
    # Two drivers on one run folder, each with its own worker (on a GPU, both on the one GPU): the store's leases
    # share the work between them.
    path = config(args.work, "two-drivers", model, data, args, 0.8, workers)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command(path, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)]
    time.sleep(1.0)  # the first one has made the run folder and its store
    procs.append(subprocess.Popen(command(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  start_new_session=True))
    for p in procs:
        finish(p, args.timeout)
    runs["two-drivers"] = {"seconds": round(time.perf_counter() - t0, 1),
                           "workers": done_by_worker(args.work, "two-drivers")}
    report("two-drivers")
    path = config(args.work, "killed", model, data, args, 0.8, workers)
    proc = subprocess.Popen(command(path, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + args.timeout
    while stored(args.work, "killed") < args.rows // 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = stored(args.work, "killed")
    t0 = time.perf_counter()
    finish(subprocess.Popen(command(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True), args.timeout)
    runs["killed"] = {"stored when killed": at_kill, "resume, s": round(time.perf_counter() - t0, 1),
                      "killed mid-run": 0 < at_kill < args.rows}
    report("killed")
    shared = sum(1 for n in runs["two-drivers"]["workers"].values() if n) > 1
    print(f"\ntwo drivers both stored answers: {shared}; the kill came mid-run: {runs['killed']['killed mid-run']}")


if __name__ == "__main__":
    main()
