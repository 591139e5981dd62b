"""The tail of a run across workers (issue 40, item 1): how long some workers idle at the end while another finishes.

`evalfleet run` with N CPU workers (default 2 and 4) on the demo's model (SmolLM2-135M, fp32) and questions whose
prompts run from ~20 to ~200 words (a per-sample cost that varies ~10x; the queue sorts them by length, so the
last chunks are the costliest), each tree in turn: `--before DIR` (a folder holding an earlier commit's src/, run
with it first on PYTHONPATH) and this checkout's. Per run: the generation phase, and from the driver's commits of
each worker's answers (the store's `created`, to within a commit: 1 s) the idle tail, from the first worker's last
answer to the run's last; the summary's own `tail` where the tree reports one.

    python bench/tail.py [--before DIR] [--workers 2,4] [--rows 240] [--new 8] [--chunk N] [--rounds 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parents[1]
WORDS = ("what colour shape is the in this picture left right top bottom large small circle square and of a "
         "patient image shows lesion organ scan").split()


def data(work: Path, rows: int) -> Path:
    rng = random.Random(0)
    path = work / f"tail-{rows}.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": " ".join(
        rng.choice(WORDS) for _ in range(rng.randrange(20, 200))) + "?", "answer": "x"}) + "\n" for i in range(rows)))
    return path


def run(work: Path, tree: Path, name: str, questions: Path, workers: int, new: int, chunk: int | None) -> dict:
    from evalfleet.assets import smollm2_path

    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "model": {"path": str(smollm2_path()), "generation": {"max_new_tokens": new}},
           "datasets": [{"name": "d", "path": str(questions)}]}
    if chunk:
        cfg["chunk_size"] = chunk
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh", "--workers",
                           str(workers)], capture_output=True, text=True, check=False, env=env)
    command_s = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"evalfleet run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    folder = work / "runs" / name
    perf = json.loads((folder / "summary.json").read_text())["performance"]["generate"]
    with sqlite3.connect(folder / "store.db") as db:
        last = dict(db.execute("SELECT worker, max(created) FROM results WHERE stage = 'generate' GROUP BY worker"))
    given = (folder / "run.log").read_text().count("gave back")
    idle = max(last.values()) - min(last.values())
    return {"command_s": round(command_s, 1), "generate_s": perf["generate_wall_s"], "idle_tail_s": round(idle, 1),
            "of_generation": round(idle / perf["generate_wall_s"], 3), "summary_tail": perf.get("tail"),
            "given_back": given, "workers": len(last)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, default=None, help="a folder holding an earlier commit's src/")
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=None, help="chunk_size (default: the plan's, the batch size)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tail"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    questions = data(args.work, args.rows)
    trees = {"before": args.before.resolve(), "after": HERE} if args.before else {"after": HERE}
    results: list[dict] = []
    for k in range(args.rounds):
        for n in (int(w) for w in args.workers.split(",")):
            for label in (list(trees) if k % 2 == 0 else list(trees)[::-1]):
                r = {"tree": label, "workers": n, "round": k,
                     **run(args.work, trees[label], f"{label}-{n}-{k}", questions, n, args.new, args.chunk)}
                results.append(r)
                print(json.dumps(r), flush=True)
    print("\n| tree | workers | generation s | idle tail s (first worker's last answer to the end) | of generation | "
          "samples given back |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['tree']} | {r['workers']} | {r['generate_s']:.1f} | {r['idle_tail_s']:.1f} | "
              f"{r['of_generation']:.1%} | {r['given_back']} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tail.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
