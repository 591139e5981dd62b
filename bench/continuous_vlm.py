"""A VLM on the continuous engine against evalfleet's `generate` engine (issue 19), one GPU, Qwen2.5-VL-7B-shaped
random weights (vision tower as Qwen2.5-VL-7B's; 448x448 images -> 256 image tokens), no EOS:

  short   --rows image + question samples -> 32 tokens: samples/s of the continuous engine (--slots slots)
          against the `generate` engine in batches of --batch on --baseline-rows of them (the path VLMs took)
  long    --long-rows samples -> 512 tokens: generated tok/s of the continuous engine

Both engines answer prepared batches (the processor's work is timed apart: in `evalfleet run` it runs on the
prefetch thread while the GPU works). The continuous engine is warmed on a quarter of its slots first.
The issue's targets: short >= 2 x the `generate` engine; long >= 10,000 tok/s.

    PYTHONPATH=src python bench/continuous_vlm.py [--rows 2048] [--long-rows 1024] [--slots 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from models import SUBJECTS, images, qwen25_vl
from PIL import Image

from evalfleet.backends import Request
from evalfleet.backends.transformers.backend import TransformersBackend
from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.config import ModelConfig

GPU = torch.cuda.is_available()


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def requests(paths: list[Path]) -> list[Request]:
    """One question per image, of a few lengths."""
    return [Request(f"What colour is {SUBJECTS[i % 5]}?" + " Answer in a few words." * (i % 3),
                    [Image.open(p).convert("RGB")], seed=i) for i, p in enumerate(paths)]


def backend(path: Path, engine: str, new: int, batch: int) -> TransformersBackend:
    b = TransformersBackend(ModelConfig(path=str(path), engine=engine, batch_size=batch,
                                        generation={"max_new_tokens": new}), n_gpus=int(GPU))
    b.load()
    return b


def prepare(b: TransformersBackend, reqs: list[Request], batch: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    prepared = [b.prepare(reqs[i : i + batch]) for i in range(0, len(reqs), batch)]
    return time.perf_counter() - t0, prepared


def generate_engine(path: Path, reqs: list[Request], batch: int) -> tuple[float, float]:
    """(prepare seconds, generation seconds) of the `generate` engine in batches of `batch` (warmed on one)."""
    b = backend(path, "generate", 32, batch)
    prep, batches = prepare(b, reqs, batch)
    b.generate(batches[0])
    sync()
    t0 = time.perf_counter()
    for p in batches:
        b.generate(p)
    sync()
    seconds = time.perf_counter() - t0
    del b
    torch.cuda.empty_cache() if GPU else None
    return prep, seconds


def continuous(model, batches: list, slots: int, new: int) -> tuple[float, int, bool]:
    """Seconds and generated tokens of every prepared row through a fresh engine (warmed on `slots` // 4 rows),
    and whether its decode step was captured as a CUDA graph."""
    rows = [r for p in batches for r in p.inputs]
    rows = [type(r)(i, r.ids, r.seed, r.media) for i, r in enumerate(rows)]
    engine = ContinuousEngine(model, slots=slots, length=max(len(r.ids) for r in rows) + new, max_new_tokens=new,
                              eos_ids=set(), sampler=Sampler(), cuda_graphs=GPU)
    for work in (rows[: max(1, slots // 4)], rows):
        sync()
        t0 = time.perf_counter()
        engine.add(work)
        tokens = 0
        while engine.busy:
            tokens += sum(len(d.tokens) for d in engine.step() if not d.error)
        sync()
        seconds = time.perf_counter() - t0
    captured = engine.graphs.captured
    del engine
    torch.cuda.empty_cache() if GPU else None
    return seconds, tokens, captured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--long-rows", type=int, default=1024)
    ap.add_argument("--baseline-rows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256, help="the generate engine's batch (evalfleet's default)")
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = qwen25_vl(args.work, args.shape)
    reqs = requests(images(args.work, max(args.rows, args.long_rows)))

    base_prep, base_s = generate_engine(path, reqs[: args.baseline_rows], args.batch)
    b = backend(path, "continuous", 32, args.batch)
    prep, batches = prepare(b, reqs[: args.rows], args.batch)
    short_s, short_tokens, _ = continuous(b.model, batches, args.slots, 32)
    long_s, long_tokens, _ = continuous(b.model, batches[: -(-args.long_rows // args.batch)], args.slots, 512)

    image_tokens = sum(r.ids.count(b.image_token_id) for r in batches[0].inputs) / len(batches[0].inputs)
    prompt = sum(len(r.ids) for r in batches[0].inputs) / len(batches[0].inputs)
    rows = [
        ("-> 32", f"generate engine, batches of {args.batch}, {args.baseline_rows} rows", args.baseline_rows / base_s,
         args.baseline_rows * 32 / base_s),
        ("-> 32", f"continuous, {args.slots} slots, {args.rows} rows", args.rows / short_s, short_tokens / short_s),
        ("-> 512", f"continuous, {args.slots} slots, {args.long_rows} rows", args.long_rows / long_s,
         long_tokens / long_s),
    ]
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, Qwen2.5-VL-{args.shape}-shaped; prompts of "
          f"{prompt:.0f} tokens ({image_tokens:.0f} image tokens); processor {len(reqs[: args.rows]) / prep:.0f} "
          f"samples/s ({base_prep / args.baseline_rows * 1000:.1f} ms a sample in the baseline)\n")
    print("| answers | engine | samples/s | generated tok/s |\n|---|---|---|---|")
    for w, e, s, t in rows:
        print(f"| {w} | {e} | {s:,.1f} | {t:,.0f} |")
    print(f"\ncontinuous / generate engine at -> 32: {rows[1][2] / rows[0][2]:.2f}x (target >= 2); "
          f"-> 512: {rows[2][3]:,.0f} tok/s (target >= 10,000)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "continuous_vlm.json").write_text(json.dumps({"rows": rows, "prompt_tokens": prompt}))


if __name__ == "__main__":
    main()
