"""Baselines that see transformers as shipped: a measurement run in a process of its own that imports nothing of
evalfleet (evalfleet's backend patches transformers' classes as it loads a model: the rotary embedding, RMSNorm,
attention, the experts), its figures handed back to the bench as JSON. The bench script re-invokes itself with
hidden flags, as `bench/gpu_exactness.py` does for its variants:

    ap = argparse.ArgumentParser()
    ...
    args = isolated.parse_args(ap, {"stock": stock_generate})
    if args is None:  # this process was the re-invoked one: it ran the variant and wrote its figures
        return
    figures = isolated.run(__file__, "stock", job, work)  # in the bench: a dict, or {"error": ...}

The script imports evalfleet only on the bench's own code path (inside its functions), never at module level:
`parse_args` asserts that the baseline's process holds no evalfleet module, before and after the measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def parse_args(ap: argparse.ArgumentParser, variants: dict[str, Callable[[dict], dict]]) -> argparse.Namespace | None:
    """The bench's arguments; None in a process started by `run`, after it wrote the variant's figures for its job
    where `run` reads them. Running out of GPU memory is a result there ({"error": "out of memory ..."})."""
    ap.add_argument("--variant", choices=list(variants), help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.variant:
        return args
    assert "evalfleet" not in sys.modules, "a stock baseline's process imported evalfleet"
    import torch

    job = json.loads(args.job.read_text())
    try:
        out = variants[args.variant](job)
    except torch.OutOfMemoryError as err:
        out = {"error": f"out of memory ({str(err).splitlines()[0][:200]})"}
    assert "evalfleet" not in sys.modules, "a stock baseline imported evalfleet"
    args.to.write_text(json.dumps(out))
    return None


def run(script: str | Path, variant: str, job: dict, work: Path) -> dict:
    """`script`'s `variant` on `job` in a fresh process (its output shown as it runs): its figures, or
    {"error": ...} where it failed."""
    work.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(script).stem}-{variant}"
    job_path, out = work / f"{stem}-job.json", work / f"{stem}-out.json"
    job_path.write_text(json.dumps(job))
    out.unlink(missing_ok=True)
    print(f"{Path(script).name} {variant}: in a process of its own (nothing of evalfleet imported)", flush=True)
    proc = subprocess.run([sys.executable, str(script), "--variant", variant, "--job", str(job_path),
                           "--to", str(out)], check=False)
    if not out.exists():
        return {"error": f"its process exited with {proc.returncode} and no figures"}
    return json.loads(out.read_text())
