"""A worker's CPU stage (`worker_loop.prepare_batch`: pictures decoded, `Backend.prepare`) on its own, no device:
`pictures` pictures each asked `questions` questions (shuffled, then grouped by picture as the queue does), in
batches of 128, through a tiny Qwen2.5-VL's processor; prints ms a sample, and with --profile the costliest calls.

With sharing on, a VLM's GPU needs ~6 ms a sample on SLAKE-shaped work (bench/RESULTS.md, session 20): a CPU stage
slower than that leaves the GPU waiting.

    PYTHONPATH=src python bench/probes/prepare_profile.py [--pictures 96] [--questions 11] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from models import images, qwen25_vl
from reuse import QUESTIONS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pictures", type=int, default=96)
    ap.add_argument("--questions", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1, help="picture threads (a GPU worker's default: up to 8)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    from evalfleet.backends import make_backend
    from evalfleet.backends.transformers.processors import CachedImageProcessor
    from evalfleet.config import ModelConfig
    from evalfleet.engine.messages import Work
    from evalfleet.engine.queue import picture_key
    from evalfleet.engine.worker_loop import DecodedImages, prepare_batch
    from evalfleet.records import ImageRef, Sample

    model = qwen25_vl(args.work, "tiny")
    rows = [(q, p) for p in images(args.work, args.pictures) for q in QUESTIONS[: args.questions]]
    random.Random(0).shuffle(rows)
    b = make_backend(ModelConfig(path=str(model), dtype="float32", engine="continuous"), 0)
    b.load()
    cached = b.processor.image_processor
    b.processor.image_processor = CachedImageProcessor(cached.inner, compact=True, dtype=cached.dtype,
                                                       threads=args.threads)
    samples = sorted((Sample("d", str(i), q, q, ["yes"], [ImageRef(f"row {i}", path=str(p))])
                      for i, (q, p) in enumerate(rows)), key=picture_key)
    decoded = DecodedImages(threads=args.threads)
    profile = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if profile:
        profile.enable()
    for i in range(0, len(samples), 128):
        prepare_batch(b, Work(0, samples[i : i + 128], 0), decoded)
    if profile:
        profile.disable()
    dt = time.perf_counter() - t0
    print(f"{args.pictures} pictures x {args.questions} questions, {args.threads} picture thread(s): "
          f"{len(samples)} samples in {dt:.2f} s, {1000 * dt / len(samples):.2f} ms a sample")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
