"""Worker start within one Python process (issue 20, items 2 and 3): the same small CPU run (SmolLM2, --workers
workers, --rows questions -> 4 tokens) --runs times in one process, as a notebook, a sweep script or a test suite
calls `evalfleet.run` again and again; and a two-stage pipeline whose judge is another model. For each: the wall
clock of `run()` and, from its performance summary, the seconds from the stage's start to every replica ready
(process start, imports and model load), and the workers' process start + imports.

    PYTHONPATH=src python bench/probes/worker_start.py [--runs 3] [--workers 2] [--rows 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from evalfleet.assets import smollm2_path
from evalfleet.config import parse_config
from evalfleet.run import run

QUESTIONS = Path(__file__).parents[2] / "src" / "evalfleet" / "data" / "demo_questions.jsonl"


def config(out: Path, name: str, workers: int, rows: int, judge: bool) -> dict:
    model = {"path": str(smollm2_path()), "dtype": "float32", "generation": {"max_new_tokens": 4}}
    cfg = {"name": name, "output_dir": str(out), "workers": workers, "judge_cache": None, "model": model,
           "datasets": [{"name": "q", "path": str(QUESTIONS), "limit": rows}], "metrics": ["exact_match"]}
    if judge:  # another model's weights (bf16 here): the judge stage's workers start after the answers
        cfg["stages"] = [{"name": "generate", "kind": "generate", "model": model},
                         {"name": "judge", "kind": "judge", "model": {**model, "dtype": "bfloat16"},
                          "prompt": "Question: {question}\nReference answer: {answer}\nStudent answer: {prediction}\n"
                                    "Grade the student answer from 0 to 10. Reply with the number only.",
                          "parse": {"kind": "number", "min": 0, "max": 10}}]
        del cfg["model"]
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-worker-start"))
    args = ap.parse_args()
    quiet = Console(quiet=True)
    print("| run | stage | run() wall, s | stage start to every replica ready, s | process start + imports per "
          "worker, s |\n|---|---|---|---|---|")
    for i in range(args.runs + 1):
        judge = i == args.runs
        name = "pipeline" if judge else f"run{i}"
        t0 = time.perf_counter()
        summary = run(parse_config(config(args.work, name, args.workers, args.rows, judge)), fresh=True,
                      console=quiet)
        wall = time.perf_counter() - t0
        for stage, perf in summary["performance"].items():
            starts = [round(p.get("process start", 0) + p.get("imports", 0), 2)
                      for p in perf.get("startup", {}).get("workers", {}).values()]
            print(f"| {name} | {stage} | {wall:.1f} | {perf['load_wall_s']:.1f} | {starts} |")


if __name__ == "__main__":
    main()
