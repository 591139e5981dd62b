"""Where a replica's engine set-up goes on a machine that never compiled the fused kernels (issue 20): the `graphs`
phase of a cold first run took ~7 s against 0.4 s warm. One process per case, on a VLM with Qwen2.5-VL-7B's
layer shapes (4 text and 8 vision layers: the costs are per kernel, not per layer):

  cold       a fresh compile cache: the kernels compile in a child process while the engine is set up unfused
  cold-idle  a fresh compile cache, but the engine set up only once that child has finished
  warm       the cache of `cold`: the kernels come from it and the load's warm-up runs the first forwards

Each prints the load's phases, the engine's set-up (`stream`) and its decode steps there (first ones, capture).

    PYTHONPATH=src python bench/cold_start.py [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

CASE = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
sys.path.insert(0, "bench")
import torch
from continuous_vlm import backend
from evalfleet.backends.continuous import ContinuousEngine
sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
steps = []
step = ContinuousEngine._decode_step
def timed_step(self, w):  # synchronised, but not inside a capture
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    sync() if not capturing else None
    t = time.perf_counter()
    step(self, w)
    sync() if not capturing else None
    steps.append(round(time.perf_counter() - t, 3))
ContinuousEngine._decode_step = timed_step
t1 = time.perf_counter()
b = backend(sys.argv[1], "continuous", 32, 256)
t2 = time.perf_counter()
while sys.argv[2] == "cold-idle" and torch.cuda.is_available() and not list(Path(sys.argv[3]).glob("evalfleet-fused-*.done")):
    time.sleep(0.2)
t3 = time.perf_counter()
s = b.stream(256, None)
sync()
t4 = time.perf_counter()
print(json.dumps({"imports": round(t1 - t0, 2), "load": round(t2 - t1, 2), **b.startup,
                  "waited for the child": round(t3 - t2, 2), "stream": round(t4 - t3, 2), "decode steps": steps}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="7b-4l", help="tiny: a dry run on the CPU")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from models import qwen25_vl

    GPU = torch.cuda.is_available()
    path = qwen25_vl(args.work, args.shape)
    for case, cache in (("cold", "a"), ("cold-idle", "b"), ("warm", "a")):
        folder = args.work / f"inductor-{cache}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder)}
        out = subprocess.run([sys.executable, "-c", CASE, str(path), case, str(folder)], env=env, check=False,
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
        last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
        print(case, last, flush=True)
        while case == "cold" and GPU and not list(folder.glob("evalfleet-fused-*.done")):  # `warm` needs the child done
            time.sleep(0.5)


if __name__ == "__main__":
    main()
