"""GPU smoke of a generate -> judge pipeline through the CLI: a Qwen2.5-7B-shaped model (random weights)
answers 256 prompts and judges each answer (score 0-10). Random weights rarely print a valid score, so
most judgements are recorded parse errors; the point is the two stages on the GPU, end to end.

    PYTHONPATH=src python bench/pipeline_smoke.py [--work /tmp/bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from models import prompts, qwen25_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = str(qwen25_text(work, "7b"))
    data = work / "pipeline.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": p, "answer": "yes"}) + "\n"
                            for i, p in enumerate(prompts(work, 256, 128))))
    cfg = {
        "name": "pipeline-smoke", "output_dir": str(work / "runs"), "metrics": ["exact_match"],
        "datasets": [{"name": "d", "path": str(data)}],
        "stages": [
            {"name": "generate", "kind": "generate", "model": {"path": model, "generation": {"max_new_tokens": 32}}},
            {"name": "judge", "kind": "judge", "model": {"path": model, "generation": {"max_new_tokens": 8}},
             "prompt": "Question: {question}\nAnswer: {prediction}\nScore from 0 to 10:", "parse": {"kind": "number"}},
        ],
    }
    path = work / "pipeline-smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh"], check=True)
    summary = json.loads((work / "runs" / "pipeline-smoke" / "summary.json").read_text())
    print(f"wall {time.perf_counter() - t0:.1f} s; judge: {summary['datasets']['d']['judge']}")
    for stage, perf in summary["performance"].items():
        print(f"{stage}: {perf['samples_per_s']} samples/s, load {perf['load_wall_s']} s")


if __name__ == "__main__":
    main()
