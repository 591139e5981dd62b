"""Where a continuous-engine run spends its time on the uniform workload (512 prompts of 256 templated tokens -> 64
tokens, no EOS; Qwen2.5-7B-shaped, one GPU): calls and synchronised GPU time of prefills and decode steps, then the
top kernels under torch.profiler. (Until 2026-12-07 it profiled the static engine beside it, RESULTS.md session 7;
that engine is gone from src/.) `SPENT` and `timed` serve `first_job.py` and `vlm_profile.py` too.

    PYTHONPATH=src python bench/probes/engine_profile.py [--rows 512] [--slots 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from continuous import continuous, text_backend

from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.backends.transformers.sampling import Sampler

SPENT: dict[str, list[float]] = defaultdict(list)


def timed(cls: type, name: str) -> None:
    """Wrap `cls.name` so each call is timed between two synchronisations."""
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        torch.cuda.synchronize()
        SPENT[f"{cls.__name__}.{name}"].append(time.perf_counter() - t0)
        return out

    setattr(cls, name, wrapper)
    return original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    b, ids = text_backend(args.work, "7b", args.rows)
    print("prompt lengths", min(map(len, ids)), max(map(len, ids)))
    n = len(ids) * 64

    def run() -> float:
        return continuous(b.model, ids, args.slots, 64, set(), Sampler())[0]

    print(f"continuous: {n / run():,.0f} tok/s unprofiled")
    originals = [(c, m, timed(c, m)) for c, m in ((ContinuousEngine, "_prefill"), (ContinuousEngine, "_decode"),
                                                  (ContinuousEngine, "_collect"))]
    print(f"\ncontinuous: wall {run():.2f} s (each call synchronised)")
    print("\n| call | count (warm-up + timed) | total s | mean ms |\n|---|---|---|---|")
    for k, v in SPENT.items():
        print(f"| {k} | {len(v)} | {sum(v):.2f} | {1000 * sum(v) / len(v):.2f} |")
    for c, m, f in originals:
        setattr(c, m, f)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
    print("\n### continuous\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
