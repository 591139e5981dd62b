"""GPU smoke of both pipelines through the CLI, on random-weight checkpoints of real shapes:

  1. generate -> judge: a Qwen2.5-7B-shaped model answers P prompts (~128 tokens -> 64 tokens) and the same
     model judges each answer (score 0-10), one stage after the other on all GPUs;
  2. with >= 2 GPUs, the same with `concurrent_stages` (answerer and judge at once on disjoint GPUs, the
     judge taking answers as they are stored);
  3. edit -> judge: an InstructPix2Pix (Stable Diffusion 1.5)-shaped pipeline edits E 512x512 images
     (20 steps) and a Qwen2.5-VL-7B-shaped VLM rates each edit from the original and the edited image.

Random weights rarely print a valid score, so most judgements are recorded parse errors; the point is
every stage on the GPU, end to end. The judge cache is off so that each run really judges.

    PYTHONPATH=src python bench/pipeline_smoke.py [--prompts 512] [--edits 64] [--work /tmp/bench] [--out DIR]
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
from models import images, prompts, qwen25_text, qwen25_vl
from tiny_models import build_pix2pix

from evalfleet.plan.placement import probe_machine


def run(work: Path, cfg: dict) -> list[tuple[str, str]]:
    """Run `cfg` through the CLI; rows of wall time, per-stage throughput and load time, judge summary."""
    path = work / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh"], check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((work / "runs" / cfg["name"] / "summary.json").read_text())
    name = cfg["name"]
    rows = [(f"{name}: wall s (CLI start to exit)", f"{wall:.1f}")]
    for stage, perf in summary["performance"].items():
        rows.append((f"{name}: {stage}: samples/s after load; load wall s; unload wall s",
                     f"{perf.get('samples_per_s')}; {perf.get('load_wall_s')}; {perf.get('unload_wall_s')}"))
    for ds, s in summary["datasets"].items():
        judge = {k: v for k, v in s.get("judge", {}).items() if k in ("judged", "parse_errors", "errors", "mean")}
        rows.append((f"{name}: dataset {ds}: finished/errors; judge", f"{s['finished']}/{s['errors']}; {judge}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--edits", type=int, default=64)
    ap.add_argument("--shape", default="7b", help="7b (GPU) or tiny (a dry run on a CPU)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    n_gpus = len(probe_machine().gpus)
    rows: list[tuple[str, str]] = []
    base = {"output_dir": str(work / "runs"), "metrics": ["exact_match"], "judge_cache": None, "progress_every": 128}
    if not n_gpus:
        base["workers"] = 1

    # 1-2. generate -> judge
    model = str(qwen25_text(work, args.shape))
    data = work / "pipeline.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": p, "answer": "yes"}) + "\n"
                            for i, p in enumerate(prompts(work, args.prompts, 128))))
    text = {**base, "datasets": [{"name": "d", "path": str(data)}], "stages": [
        {"name": "generate", "kind": "generate", "model": {"path": model, "generation": {"max_new_tokens": 64}}},
        {"name": "judge", "kind": "judge", "model": {"path": model, "generation": {"max_new_tokens": 8}},
         "prompt": "Question: {question}\nAnswer: {prediction}\nScore from 0 to 10:", "parse": {"kind": "number"}},
    ]}
    rows += run(work, {**text, "name": "generate-judge"})
    if n_gpus >= 2:
        rows += run(work, {**text, "name": "generate-judge-concurrent", "concurrent_stages": True})

    # 3. edit -> judge
    pix2pix = work / f"pix2pix-{args.shape}-shaped"
    if not (pix2pix / "model_index.json").exists():
        build_pix2pix(pix2pix, shape="sd15" if args.shape != "tiny" else "tiny")
    size = 512 if args.shape != "tiny" else 64
    edits = work / "edits.jsonl"
    edits.write_text("".join(json.dumps({"id": i, "question": "make the shape red", "image": str(p.relative_to(work))}) + "\n"
                             for i, p in enumerate(images(work, args.edits, size))))
    rows += run(work, {**base, "name": "edit-judge", "datasets": [{"name": "e", "path": str(edits)}], "stages": [
        {"name": "edit", "kind": "edit",
         "model": {"backend": "diffusers", "path": str(pix2pix), "diffusion": {"steps": 20}}},
        {"name": "judge", "kind": "judge", "model": {"path": str(qwen25_vl(work, args.shape)),
                                                     "generation": {"max_new_tokens": 8}},
         "prompt": "{image}{edited_image}Instruction: {question}. Rate the edit from 0 to 10:"},
    ]})

    table = "| measurement | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if args.out:
        (args.out / "pipeline_smoke.md").write_text(table)


if __name__ == "__main__":
    main()
