"""Where a continuous-engine run spends its time, beside the static engine, on the uniform workload (512 prompts
of 256 templated tokens -> 64 tokens, no EOS; Qwen2.5-7B-shaped, one GPU): calls and synchronised GPU time of
prefills and decode steps, then the top kernels of each engine under torch.profiler.

    PYTHONPATH=src python bench/engine_profile.py [--rows 512] [--slots 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from continuous import continuous, static, text_backend
from torch.profiler import ProfilerActivity, profile

from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.backends.static_decode import StaticDecoder

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
    for label, fn in (("continuous", lambda: continuous(b.model, ids, args.slots, 64, set(), Sampler())[0]),
                      ("static", lambda: static(b.model, ids, args.slots, 64, set(), b.tokenizer.pad_token_id)[0])):
        print(f"{label}: {n / fn():,.0f} tok/s unprofiled")
    originals = [(c, m, timed(c, m)) for c, m in ((ContinuousEngine, "_prefill"), (ContinuousEngine, "_decode"),
                                                  (ContinuousEngine, "_collect"), (StaticDecoder, "_prefill"),
                                                  (StaticDecoder, "_step"))]
    seconds = {"continuous": continuous(b.model, ids, args.slots, 64, set(), Sampler())[0],
               "static": static(b.model, ids, args.slots, 64, set(), b.tokenizer.pad_token_id)[0]}
    print("\n| engine | wall s (synchronised) |\n|---|---|")
    for k, v in seconds.items():
        print(f"| {k} | {v:.2f} |")
    print("\n| call | count (warm-up + timed) | total s | mean ms |\n|---|---|---|---|")
    for k, v in SPENT.items():
        print(f"| {k} | {len(v)} | {sum(v):.2f} | {1000 * sum(v) / len(v):.2f} |")
    for c, m, f in originals:
        setattr(c, m, f)
    for label, fn in (("continuous", lambda: continuous(b.model, ids, args.slots, 64, set(), Sampler())),
                      ("static", lambda: static(b.model, ids, args.slots, 64, set(), b.tokenizer.pad_token_id))):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
        print(f"\n### {label}\n")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
