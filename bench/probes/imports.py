"""What a replica's process pays to import torch and transformers (issue 20), with and without bytecode, each case a
fresh process timed from its start (`python -c "import torch, transformers.modeling_utils"`):

  as installed       the environment as it is (on a host whose site-packages hold no bytecode and that sets
                     PYTHONDONTWRITEBYTECODE, evalfleet.bytecode engages here: imported first)
  no bytecode        every module compiled from source: a bytecode prefix that is empty and never written
                     (what such a host pays in every process without evalfleet's cache)
  cache, first       evalfleet.bytecode's settings (a prefix in a fresh cache folder, writing allowed): the first
                     process compiles and writes
  cache, later       the same settings again: later processes read the bytecode

    PYTHONPATH=src python bench/probes/imports.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODE = "import evalfleet.bytecode, sys; import torch, transformers.modeling_utils; print(sys.pycache_prefix)"


def timed(env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    base = dict(os.environ)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache_env = {**base, "EVALFLEET_CACHE": str(Path(tmp) / "evalfleet")}
        for i in range(args.repeat):
            rows.append(("as installed", *timed(cache_env)))
        for i in range(args.repeat):
            empty = Path(tmp) / f"empty{i}"
            rows.append(("no bytecode", *timed({**base, "PYTHONPYCACHEPREFIX": str(empty),
                                                "PYTHONDONTWRITEBYTECODE": "1"})))
        prefix = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
        prefix["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "cache" / "bytecode")
        rows.append(("cache, first", *timed(prefix)))
        for _ in range(args.repeat):
            rows.append(("cache, later", *timed(prefix)))
    print(f"\n{sys.executable}; PYTHONDONTWRITEBYTECODE={base.get('PYTHONDONTWRITEBYTECODE')}\n")
    print("| case | seconds | bytecode prefix in the process |\n|---|---|---|")
    for case, seconds, where in rows:
        print(f"| {case} | {seconds:.1f} | {where} |")


if __name__ == "__main__":
    main()
