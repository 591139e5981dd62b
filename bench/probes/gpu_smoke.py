"""GPU smoke test: `evalfleet run` end to end on the GPUs of this machine.

Builds two random-weight checkpoints of real architectures (no hub needed) and runs the CLI on them:
  1. a Qwen2.5-7B-shaped text model (with the small locally trained tokenizer) on 512 easy-VQA
     questions as text,
  2. a tiny Qwen2-VL on 1,000 easy-VQA test images.
Prints the CLI output and a table of wall times; random weights make the scores meaningless.

    PYTHONPATH=src python bench/probes/gpu_smoke.py [--work /tmp/smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from models import qwen25_text, tiny_vlm


def evalfleet_run(config: dict, work: Path) -> float:
    path = work / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/smoke"))
    ap.add_argument("--out", type=Path, default=None, help="copy summaries here")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    vlm = tiny_vlm(work)
    text = qwen25_text(work, "7b")
    build_s = time.perf_counter() - t0

    import easy_vqa

    questions, answers, _ = easy_vqa.get_test_questions()
    data = work / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(zip(questions[:512], answers[:512]))))
    common = {"output_dir": str(work / "runs"), "progress_every": 128, "metrics": ["exact_match", "vqa_accuracy"]}
    timings = {
        "text 7B-shaped, 512 q, 32 new tokens, batch 64": evalfleet_run(
            {**common, "name": "smoke-text",
             "model": {"path": str(text), "batch_size": 64, "generation": {"max_new_tokens": 32}},
             "datasets": [{"name": "questions", "path": str(data)}]}, work),
        "tiny Qwen2-VL, 1000 easy-VQA images, 8 new tokens, batch 32": evalfleet_run(
            {**common, "name": "smoke-vlm",
             "model": {"path": str(vlm), "batch_size": 32, "generation": {"max_new_tokens": 8}},
             "datasets": [{"name": "easyvqa", "builtin": "easy-vqa", "limit": 1000}]}, work),
    }
    print(f"\n| step | wall s |\n|---|---|\n| build checkpoints | {build_s:.1f} |")
    for name, seconds in timings.items():
        print(f"| evalfleet run: {name} | {seconds:.1f} |")
    if args.out:
        for run in ("smoke-text", "smoke-vlm"):
            shutil.copy(work / "runs" / run / "summary.json", args.out / f"{run}-summary.json")
            shutil.copy(work / "runs" / run / "run.log", args.out / f"{run}-run.log")


if __name__ == "__main__":
    main()
