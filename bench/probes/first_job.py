"""Why a fresh replica's first job is slower than its next ones (issue 20): one Qwen2.5-VL-7B-shaped replica loaded
as a worker loads it (`TransformersBackend`, continuous engine, fused kernels), then the same --rows VQA samples
answered --jobs times through one `TokenStream`, as `evalfleet serve` answers successive runs. For each job:
the processor's seconds (timed apart), then the engine's seconds split into prefills (the vision tower inside
them apart) and decode steps, each call synchronised, and torch.compile's recompiles during the job.

    PYTHONPATH=src python bench/probes/first_job.py [--rows 451] [--jobs 3] [--batch 64] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from continuous_vlm import backend, prepare, requests, sync
from engine_profile import SPENT, timed
from models import images, qwen25_vl

from evalfleet.backends.transformers.engine import ContinuousEngine


class Count(logging.Handler):
    """Counts torch.compile's recompile messages (TORCH_LOGS=recompiles)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:300])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=451)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    torch._logging.set_logs(recompiles=True)
    count = Count()
    logging.getLogger("torch._dynamo").addHandler(count)
    path = qwen25_vl(args.work, args.shape)
    reqs = requests(images(args.work, args.rows))
    t0 = time.perf_counter()
    b = backend(path, "continuous", 32, args.batch)
    print(f"load {time.perf_counter() - t0:.1f} s; phases {b.startup}", flush=True)
    timed(ContinuousEngine, "_prefill")
    timed(ContinuousEngine, "_decode")
    timed(type(b.model.model.visual), "forward")
    stream = None
    print("| job | processor s | engine s | prefills (n, s) | vision (s) | decode steps (n, s) | recompiles |")
    print("|---|---|---|---|---|---|---|")
    for job in range(1, args.jobs + 1):
        prep, batches = prepare(b, reqs, args.batch)
        if stream is None:
            stream = b.stream(args.slots, batches[0])
        SPENT.clear()
        count.n, count.first = 0, []
        sync()
        t0 = time.perf_counter()
        for i, p in enumerate(batches):
            stream.add(p, [(i, j) for j in range(len(p.inputs))])
        done = 0
        while stream.busy:
            done += len(stream.step())
        sync()
        seconds = time.perf_counter() - t0
        pre, vis, dec = (SPENT[k] for k in ("ContinuousEngine._prefill", f"{type(b.model.model.visual).__name__}.forward",
                                            "ContinuousEngine._decode"))
        print(f"| {job} | {prep:.2f} | {seconds:.2f} | {len(pre)}, {sum(pre):.2f} | {sum(vis):.2f} | "
              f"{len(dec)}, {sum(dec):.2f} | {count.n} |", flush=True)
        print("    prefills, s:", " ".join(f"{x:.2f}" for x in pre[:12]), flush=True)
        for line in count.first:
            print("    recompile:", line)
        assert done == args.rows, done


if __name__ == "__main__":
    main()
