"""How to split a CPU between workers (issue 38, item 1): `evalfleet run` on the demo's model (SmolLM2-135M, fp32) and
its 44 questions -> 24 tokens, with N workers of cores/N threads each, on a quiet machine and beside one competing
process (a busy loop, as another job on a laptop or login node), alternating, on this machine's cores.

    python bench/cpu_layout.py [--workers 1,2] [--rounds 2] [--out DIR]

Per run: the command's seconds and the generation phase (from the run's summary); the table gives medians and the
ratio of each layout to the best one in the same condition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parents[1]


def run(work: Path, name: str, workers: int) -> dict:
    from evalfleet.assets import smollm2_path

    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "model": {"path": str(smollm2_path()), "generation": {"max_new_tokens": 24}},
           "datasets": [{"name": "d", "path": str(HERE / "src/evalfleet/data/demo_questions.jsonl")}]}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh", "--workers",
                           str(workers)], capture_output=True, text=True, check=False)
    command_s = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"evalfleet run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    perf = json.loads((work / "runs" / name / "summary.json").read_text())["performance"]["generate"]
    return {"command_s": round(command_s, 2), "generate_s": perf["generate_wall_s"],
            "tokens": perf["generated_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpu_layout"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    layouts = [int(w) for w in args.workers.split(",")]
    results: dict[str, dict[int, list[dict]]] = {"quiet": {}, "busy": {}}
    for condition in ("quiet", "busy"):
        rival = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
        try:
            for k in range(args.rounds):
                for n in layouts if k % 2 == 0 else layouts[::-1]:
                    r = run(args.work, f"{condition}-{n}", n)
                    results[condition].setdefault(n, []).append(r)
                    print(f"{condition} {n} x {max(1, cores // n)}: command {r['command_s']:.1f} s, generation "
                          f"{r['generate_s']:.1f} s, {r['tokens']} tokens", flush=True)
        finally:
            if rival is not None:
                rival.kill()
    print(f"\n{cores} cores\n| condition | workers x threads | command s (median) | generation s (median) | "
          "generation / best |\n|---|---|---|---|---|")
    for condition, by_n in results.items():
        med = {n: statistics.median(r["generate_s"] for r in rs) for n, rs in by_n.items()}
        best = min(med.values())
        for n, rs in by_n.items():
            print(f"| {condition} | {n} x {max(1, cores // n)} | {statistics.median(r['command_s'] for r in rs):.1f} "
                  f"| {med[n]:.1f} | {med[n] / best:.2f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_layout.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
