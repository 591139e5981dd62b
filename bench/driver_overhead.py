"""The driver's own work before any worker starts (issue 20, item 5: loading and planning 100k samples <= 3 s), on
any machine: read a JSONL dataset of --rows questions (uneven lengths) into samples, record them in a fresh store,
plan the stage (probe the machine; on a GPU machine also estimate memory, counting the longest prompts' tokens with
the model's tokenizer), then the same again as a resume (the store already holds them).

    PYTHONPATH=src python bench/driver_overhead.py [--rows 100000] [--model PATH] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from evalfleet.config import parse_config
from evalfleet.plan.stage import make_plan
from evalfleet.preflight import read_datasets, refusals
from evalfleet.run import samples_to_store
from evalfleet.store import Store
from evalfleet.store.background import SampleWriter

WORDS = ("what which how many colour shape is the of in a an and to largest smallest image picture left right top "
         "bottom organ lesion scan abnormal").split()


def dataset(work: Path, rows: int) -> Path:
    path = work / f"questions-{rows}.jsonl"
    if not path.exists():
        rng = random.Random(0)
        with path.open("w") as f:
            for i in range(rows):
                q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) + "?"
                f.write(json.dumps({"id": f"q{i}", "question": q, "answer": rng.choice(["yes", "no", "left lung"])})
                        + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default=None, help="a local checkpoint folder (default: SmolLM2 from the package)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-driver"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from evalfleet.assets import smollm2_path

        args.model = str(smollm2_path())
    data = dataset(args.work, args.rows)
    run_dir = args.work / "out"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = parse_config({"name": "d", "output_dir": str(run_dir), "model": {"path": args.model},
                        "datasets": [{"name": "q", "path": str(data), "prompt": "{question} Answer briefly."}]})
    stage = cfg.pipeline()[0]
    table = []
    for label in ("fresh", "resume"):
        times = {}
        t0 = time.perf_counter()
        store = Store(cfg.run_dir / "store.db")
        loaded = read_datasets(cfg)
        times["read"] = time.perf_counter() - t0
        t = time.perf_counter()
        assert not refusals(cfg, store, loaded, [])
        SampleWriter(store.path, samples_to_store(store, loaded)).wait()
        times["store"] = time.perf_counter() - t
        t = time.perf_counter()
        chosen, _ = make_plan(cfg, stage.model, loaded.samples["q"])
        times["plan"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t0
        store.close()
        table.append((label, times, chosen.mode))
    print(f"\n{args.rows:,} samples; model {args.model}\n")
    print("| run | read datasets | check + store samples | plan | total (target <= 3 s) | plan mode |\n"
          "|---|---|---|---|---|---|")
    for label, t, mode in table:
        print(f"| {label} | {t['read']:.2f} s | {t['store']:.2f} s | {t['plan']:.2f} s | {t['total']:.2f} s | {mode} |")


if __name__ == "__main__":
    main()
