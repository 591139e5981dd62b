"""Where a replica's engine set-up goes on a machine that never compiled the fused kernels (issue 20): the `graphs`
phase of a cold first run took ~7 s against 0.4 s warm. One process per case, on a VLM with Qwen2.5-VL-7B's
layer shapes (4 text and 8 vision layers: the costs are per kernel, not per layer):

  cold       a fresh compile cache: the engine is set up unfused (the kernels compile in a child process after it)
  cold, modules loaded eagerly  as cold, with CUDA_MODULE_LOADING=EAGER (each library's kernels loaded at its start,
             not at each kernel's first launch)
  warm       the cache of `cold`: the kernels come from it and the load's warm-up runs the first forwards

Each prints a worker's phases as `engine/replica.py` times them (the imports split into what the fork server
preloads and evalfleet's own; the backend's construction, which is the `tokenizer` phase), the load's phases, the
engine's set-up (`stream`) and its decode steps there (first ones, capture); --profile prints where the
construction, the load and the set-up spend their time.

    PYTHONPATH=src python bench/probes/cold_start.py [--work DIR]
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
import evalfleet.bytecode  # as the fork server: its bytecode cache first
import torch, transformers.modeling_utils  # what the fork server preloads (launcher.HEAVY)
t1 = time.perf_counter()
from evalfleet.backends import make_backend  # the rest, imported by a worker in its `tokenizer` phase
from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.config import ModelConfig
t2 = time.perf_counter()
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
profile = sys.argv[4] == "profile"
def timed(what, fn):  # seconds of fn(), and where they go by function (cumulative) if asked
    t = time.perf_counter()
    if profile:
        import cProfile, pstats
        with cProfile.Profile() as prof:
            out = fn()
            sync()
        print(f"--- {what}")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    else:
        out = fn()
        sync()
    return out, round(time.perf_counter() - t, 2)
if torch.cuda.is_available():
    torch.cuda.init()
cfg = ModelConfig(path=sys.argv[1], engine="continuous", batch_size=256, generation={"max_new_tokens": 32})
b, init = timed("backend construction", lambda: make_backend(cfg, int(torch.cuda.is_available())))
_, load = timed("load", b.load)
s, stream = timed("engine set-up", lambda: b.stream(256, None))
print(json.dumps({"torch + transformers": round(t1 - t0, 2), "evalfleet modules": round(t2 - t1, 2),
                  "construction (tokenizer phase)": init, "load": load, **b.startup, "stream": stream,
                  "decode steps": steps}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="7b-4l", help="tiny: a dry run on the CPU")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--profile", action="store_true", help="print each case's profiles (cProfile)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
    import torch
    from models import qwen25_vl

    GPU = torch.cuda.is_available()
    path = qwen25_vl(args.work, args.shape)
    for case, cache, more in (("cold", "a", {}), ("cold, modules loaded eagerly", "b", {"CUDA_MODULE_LOADING": "EAGER"}),
                              ("warm", "a", {})):
        folder = args.work / f"inductor-{cache}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder), **more}
        out = subprocess.run([sys.executable, "-c", CASE, str(path), case, str(folder),
                              "profile" if args.profile else "-"], env=env, check=False,
                             capture_output=True, text=True, cwd=Path(__file__).parents[2])
        lines = out.stdout.strip().splitlines()
        print(case, "\n".join(lines if args.profile else lines[-1:]) if lines else out.stderr[-2000:], flush=True)
        while case == "cold" and GPU and not list(folder.glob("evalfleet-fused-*.done")):  # `warm` needs the child done
            time.sleep(0.5)


if __name__ == "__main__":
    main()
