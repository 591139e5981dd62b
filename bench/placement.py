"""Placement on real GPUs: plan output, 1 vs N GPU throughput, a sharded 14B-shaped model, OOM recovery.

Everything goes through the `evalfleet` CLI on random-weight checkpoints of real shapes:
  1. `evalfleet plan` of a Qwen2.5-7B-shaped model on 1 and on all GPUs;
  2. the same workload (P prompts of ~256 tokens -> 64 generated tokens, batch size auto) on 1 GPU
     and on 2, 4, 8 GPUs (as many as there are), in this one run: samples/s after loading, ratios;
  3. with >= 2 GPUs: a Qwen2.5-14B-shaped model (~28 GB) with --max-memory-per-gpu 20GiB, planned
     and run as one replica sharded over two GPUs; with >= 4 GPUs, on all of them (hybrid);
  4. out-of-memory recovery: the 7B-shaped model on one GPU capped at 24GiB, forced batch size 512 of
     ~1024-token prompts; batches must shrink and every sample finish;
  5. replica load and unload times of each run, and nvidia-smi utilisation samples.

    PYTHONPATH=src python bench/placement.py [--prompts 1024] [--parts scaling,sharded,oom] [--work /tmp/bench] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from models import prompts, qwen25_text

from evalfleet.plan.placement import probe_machine

UTILISATION: dict[str, str] = {}
COMMAND_S: dict[str, float] = {}  # the last command of each kind: seconds from its start to its exit
"""Per run: mean GPU utilisation and peak memory per GPU sampled by nvidia-smi every second."""


def cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "evalfleet.cli", *args]
    print("$ evalfleet", " ".join(args), flush=True)
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                            "-lms", "1000"], stdout=subprocess.PIPE, text=True) if args[0] == "run" else None
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    COMMAND_S[args[0]] = time.perf_counter() - t0
    if smi is not None:
        smi.terminate()
        samples: dict[str, list[tuple[int, int]]] = {}
        for line in smi.communicate()[0].splitlines():
            idx, util, mem = (x.strip() for x in line.split(","))
            samples.setdefault(idx, []).append((int(util), int(mem)))
        UTILISATION[" ".join(args[1:])] = "; ".join(
            f"GPU {i}: {sum(u for u, _ in v) / len(v):.0f}% mean util, {max(m for _, m in v) / 1024:.1f} GiB peak "
            f"({len(v)} samples)" for i, v in sorted(samples.items()))
    print(out, flush=True)
    return out


def config(work: Path, name: str, model: Path, data: Path, **model_over: object) -> Path:
    cfg = {
        "name": name, "output_dir": str(work / "runs"), "progress_every": 256, "metrics": ["exact_match"],
        "model": {"path": str(model), "generation": {"max_new_tokens": 64}, **model_over},
        "datasets": [{"name": "prompts", "path": str(data)}],
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def perf(work: Path, name: str) -> dict:
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    ds = summary["datasets"]["prompts"]
    return {**summary["performance"]["generate"], "finished": ds["finished"], "errors": ds["errors"]}


def write_data(work: Path, name: str, n: int, tokens: int) -> Path:
    path = work / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": p}) + "\n" for i, p in enumerate(prompts(work, n, tokens))))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", default="scaling,sharded,oom",
                    help="comma-separated subset of: scaling (1 vs N GPUs), sharded (14B-shaped), oom (recovery)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    n_gpus = len(probe_machine().gpus)
    rows: list[tuple[str, str]] = []

    m7 = qwen25_text(work, "7b")
    data = write_data(work, "p256", args.prompts, 256)
    cfg7 = config(work, "dp", m7, data)
    cli("plan", str(cfg7), "--gpus", "0")
    cli("plan", str(cfg7))

    one: dict = {}
    for n in [1] + [k for k in (2, 4, 8) if k <= n_gpus] if "scaling" in parts else []:
        out = cli("run", str(cfg7), "--fresh", "--gpus", ",".join(map(str, range(n))))
        batch = next((line.split("plan: ")[-1][:40] for line in out.splitlines() if "plan: batch size" in line), "?")
        p = perf(work, "dp")
        one = one or p
        ratio = p["samples_per_s"] / one["samples_per_s"]
        rows += [
            (f"7B-shaped, {n} GPU(s): samples/s (generated tok/s); {batch}",
             f"{p['samples_per_s']} ({p['generated_tokens_per_s']})"),
            (f"7B-shaped, {n} GPU(s): throughput vs 1 GPU (per GPU)", f"{ratio:.2f}x ({ratio / n:.2f})"),
            (f"7B-shaped, {n} GPU(s): load wall s (from_pretrained s per replica)",
             f"{p['load_wall_s']} ({', '.join(map(str, p['load_s'].values()))})"),
            (f"7B-shaped, {n} GPU(s): whole command s (command to results); samples/s over it",
             f"{COMMAND_S['run']:.1f}; {p['finished'] / COMMAND_S['run']:.2f}"),
            (f"7B-shaped, {n} GPU(s): unload wall s; finished/errors",
             f"{p.get('unload_wall_s')}; {p['finished']}/{p['errors']}"),
        ]

    if n_gpus >= 2 and "sharded" in parts:
        m14 = qwen25_text(work, "14b")
        data14 = write_data(work, "p256-small", 128, 256)
        cfg14 = config(work, "sharded", m14, data14)
        cli("plan", str(cfg14), "--gpus", "0,1", "--max-memory-per-gpu", "20GiB")
        cli("run", str(cfg14), "--fresh", "--gpus", "0,1", "--max-memory-per-gpu", "20GiB")
        sh = perf(work, "sharded")
        rows += [("14B-shaped sharded over 2 GPUs capped at 20GiB: samples/s, finished/errors",
                  f"{sh['samples_per_s']}, {sh['finished']}/{sh['errors']}")]
        if n_gpus >= 4:  # replicas of 2 GPUs each: hybrid
            out = cli("run", str(cfg14), "--fresh", "--max-memory-per-gpu", "20GiB")
            hy = perf(work, "sharded")
            layout = next(line for line in out.splitlines() if "plan: layout" in line).split("plan: ")[-1]
            rows += [(f"14B-shaped on {n_gpus} GPUs capped at 20GiB: layout; samples/s; finished/errors",
                      f"{layout}; {hy['samples_per_s']}; {hy['finished']}/{hy['errors']}")]

    if "oom" not in parts:
        return finish(rows, args.out)
    long = write_data(work, "p1024", 256, 1024)
    cfg_oom = config(work, "oom", m7, long, batch_size=512)
    cli("run", str(cfg_oom), "--fresh", "--gpus", "0", "--max-memory-per-gpu", "24GiB")
    oom = perf(work, "oom")
    log = (work / "runs" / "oom" / "run.log").read_text().splitlines()
    halvings = [line.split("] ", 1)[-1] for line in log if "halving" in line]
    rows += [("OOM recovery (batch 512 forced, 24GiB cap): finished/errors", f"{oom['finished']}/{oom['errors']}"),
             ("OOM recovery: halvings logged (first, last)", f"{len(halvings)} ({halvings[0]}; {halvings[-1]})"
              if halvings else "none")]

    finish(rows, args.out)


def finish(rows: list[tuple[str, str]], out: Path | None) -> None:
    rows += [(f"nvidia-smi during `run {k}`", v) for k, v in UTILISATION.items()]
    table = "| measurement | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if out:
        (out / "placement.md").write_text(table)


if __name__ == "__main__":
    main()
