"""Where a VLM's continuous-engine run spends its time (Qwen2.5-VL-7B-shaped, 448x448 image + question -> 32
tokens, one GPU): synchronised time of prefills (and of the vision tower and the rotary index inside them) and of
decode steps, then the top kernels of one prefill of --slots rows under torch.profiler.

    PYTHONPATH=src python bench/probes/vlm_profile.py [--rows 1024] [--slots 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from continuous_vlm import backend, continuous, prepare, requests
from engine_profile import SPENT, timed
from models import images, qwen25_vl

import evalfleet.backends.transformers.engine as engine_module
from evalfleet.backends.transformers.engine import ContinuousEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    path = qwen25_vl(args.work, "7b")
    b = backend(path, "continuous", 32, args.slots)
    _, batches = prepare(b, requests(images(args.work, args.rows)), args.slots)
    seconds, _, _ = continuous(b.model, batches, args.slots, 32)
    print(f"unprofiled: {args.rows / seconds:.1f} samples/s")
    timed(ContinuousEngine, "_prefill")
    timed(ContinuousEngine, "_decode")
    timed(type(b.model.model.visual), "forward")
    timed(engine_module, "prefill_inputs")  # the rotary index and the image inputs
    SPENT.clear()
    seconds, _, _ = continuous(b.model, batches, args.slots, 32)
    print(f"synchronised: {args.rows / seconds:.1f} samples/s, {seconds:.1f} s")
    for name, spent in SPENT.items():
        print(f"  {name}: {len(spent)} calls, {sum(spent):.2f} s, mean {sum(spent) / len(spent) * 1000:.1f} ms")
    engine = ContinuousEngine(b.model, slots=args.slots, length=1024, max_new_tokens=32, eos_ids=set(),
                              sampler=engine_module.Sampler(), cuda_graphs=True)
    rows = [type(r)(i, r.ids, r.seed, r.media) for i, r in enumerate(batches[0].inputs)]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.add(rows)
        engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main()
