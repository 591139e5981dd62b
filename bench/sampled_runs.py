"""Sampled answers with per-sample seeds through `evalfleet run` (issue 36, item 2): the same answers with one worker,
with two, and across a run killed mid-way and resumed.

A random-weight Qwen2-shaped model whose vocabulary is the tests' tiny tokenizer's (its answers decode to words),
400 questions of 20-200 words, temperature 0.8, top-p 0.9, 32 new tokens, on the default engine:
  one      one driver, one worker
  two      two workers: on a GPU two drivers started together on the same run folder (each plans the one GPU,
           the store's leases share the work); on a CPU `--workers 2`
  killed   one driver, SIGKILLed with its process group once a quarter of the answers are stored, then the same
           command again (it resumes)
  greedy   temperature 0, to show that sampling happened
Every run's answers are compared by sample id with `one`'s.

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


def config(work: Path, name: str, model: Path, data: Path, dtype: str, temperature: float, cpu_workers: int | None
           ) -> Path:
    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "seed": 7, "model": {"path": str(model), "dtype": dtype,
                                "generation": {"max_new_tokens": 32, "temperature": temperature, "top_p": 0.9}},
           "datasets": [{"name": "d", "path": str(data)}]}
    if cpu_workers:
        cfg["workers"] = cpu_workers
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sampled"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--rows", type=int, default=ROWS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = build(args.work)
    data = args.work / "prompts.jsonl"
    if not data.exists():
        import random

        rng = random.Random(0)
        words = "what colour shape is the in this picture left right top bottom large small circle square".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(20, 200))) + "?" for _ in range(args.rows)]
        data.write_text("".join(json.dumps({"id": f"s{i}", "question": t, "answer": "x"}) + "\n"
                                for i, t in enumerate(texts)))
    cpu = args.device == "cpu"
    runs: dict[str, dict] = {}

    def plain(name: str, temperature: float = 0.8, workers: int | None = 1) -> Path:
        path = config(args.work, name, model, data, args.dtype, temperature, workers if cpu else None)
        t0 = time.perf_counter()
        subprocess.run(command(path, "--fresh"), check=True, capture_output=True)
        runs[name] = {"seconds": round(time.perf_counter() - t0, 1)}
        return path

    plain("one")
    plain("greedy", temperature=0.0)
    if cpu:
        plain("two", workers=2)
    else:  # two drivers on one run folder, each with its own worker on the GPU
        path = config(args.work, "two", model, data, args.dtype, 0.8, None)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(command(path, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
        time.sleep(1.0)  # the first one has made the run folder and its store
        procs.append(subprocess.Popen(command(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        codes = [p.wait() for p in procs]
        assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
        runs["two"] = {"seconds": round(time.perf_counter() - t0, 1)}
        with sqlite3.connect(args.work / "runs" / "two" / "store.db") as db:
            runs["two"]["workers"] = sorted({w for (w,) in db.execute("SELECT DISTINCT worker FROM results")})
    path = config(args.work, "killed", model, data, args.dtype, 0.8, 1 if cpu else None)
    proc = subprocess.Popen(command(path, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while stored(args.work, "killed") < args.rows // 4 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = stored(args.work, "killed")
    t0 = time.perf_counter()
    subprocess.run(command(path), check=True, capture_output=True)
    runs["killed"] = {"stored when killed": at_kill, "resume, s": round(time.perf_counter() - t0, 1)}
    one = answers(args.work, "one")
    for name in ("two", "killed", "greedy"):
        got = answers(args.work, name)
        runs[name]["identical to one"] = f"{sum(got.get(k) == v for k, v in one.items())}/{len(one)}"
    print(json.dumps({"device": args.device, "dtype": args.dtype, "rows": args.rows, **runs}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampled_runs.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
