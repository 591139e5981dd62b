"""GPU smoke test: `evalfleet run` end to end on the GPUs of this machine.

Builds two random-weight checkpoints of real architectures (no hub needed) and runs the CLI on them:
  1. a Qwen2.5-7B-shaped text model (its vocabulary is the small locally trained tokenizer's) on
     512 easy-VQA questions as text,
  2. a tiny Qwen2-VL on 1,000 easy-VQA test images.
Prints the CLI output and a table of wall times; random weights make the scores meaningless.

    PYTHONPATH=src python bench/gpu_smoke.py [--work /tmp/smoke]
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

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from tiny_models import build_tiny_qwen2vl  # noqa: E402


def build_text_model(folder: Path, tokenizer_from: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    cfg = Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=32768, rope_theta=1e6,
        tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


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
    vlm = build_tiny_qwen2vl(work / "tiny-qwen2-vl")
    text = build_text_model(work / "qwen2.5-7b-shaped", vlm)
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
