"""Issue 20's start-up figures, one GPU, each a process of its own on the same saved random-weight model and JSONL:

  first run    `evalfleet run` from command to results (`bench/throughput.py: evalfleet`, default settings)
  second run   the same command again (compile caches and the page cache warm)
  served       `evalfleet serve` started (not timed), then `evalfleet run --serve` twice: command to results
  script       the baseline a researcher writes (`bench/stock.py`, batches of --batch, loading the model itself):
               the whole process, wall clock
  bare load    a process that imports torch and transformers, initialises CUDA and runs `from_pretrained` (bf16,
               on the GPU): what a replica's start is compared with

Text: 512 x (256 -> 64), Qwen2.5-7B-shaped; targets: first run <= 12 s, second <= 10 s, served <= 6 s.
VLM: 451 VQA samples (448x448 + question -> 32), Qwen2.5-VL-7B-shaped; target: first run <= 0.5 x the script in
batches of 16. Both: a replica ready (its process start to ready) <= 1.5 x the bare load.

    PYTHONPATH=src python bench/startup.py text|vlm [--shape 7b|tiny] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput import HERE, config, dataset, evalfleet

from evalfleet.engine.served import registered, serve_dir
from evalfleet.reporting.tables import STARTUP_HEAD, markdown_rows, startup_rows

BARE = """
import sys, time
t = time.perf_counter()
import torch, transformers
cuda = torch.cuda.is_available()
if cuda:
    torch.cuda.init()
cls = transformers.AutoModelForCausalLM if sys.argv[2] == "text" else transformers.AutoModelForImageTextToText
m = cls.from_pretrained(sys.argv[1], dtype=torch.bfloat16 if cuda else torch.float32, device_map="cuda" if cuda else "cpu")
if cuda:
    torch.cuda.synchronize()
print(time.perf_counter() - t)
"""


def wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def replica_ready(work: Path, name: str, label: str, breakdown: list[list[str]]) -> float:
    """Seconds from the last replica's process start to ready, from the run's start-up breakdown (whose rows,
    labelled, are added to `breakdown`)."""
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    shutil.copy(work / "runs" / name / "run.log", logs / f"{name} {label}.log")  # the next run's --fresh deletes it
    breakdown += [[f"{label}: {row[0]}", *row[1:]] for row in startup_rows(summary)]
    phases = summary["performance"]["generate"]["startup"]["workers"]
    return max(sum(v for k, v in p.items() if isinstance(v, (int, float))) for p in phases.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["text", "vlm"])
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--rows", type=int, default=None, help="default: 512 (text), 451 (vlm)")
    ap.add_argument("--batch", type=int, default=None, help="the script's batch size (default: 256 text, 16 vlm)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--runs-only", type=int, default=0, metavar="N",
                    help="only N `evalfleet run`s (e.g. again after a code change, on caches the full bench filled)")
    args = ap.parse_args()
    n = args.rows or (512 if args.kind == "text" else 451)
    batch = args.batch or (256 if args.kind == "text" else 16)
    args.work.mkdir(parents=True, exist_ok=True)
    model, data, new = dataset(args.work, args.kind, args.shape, n)
    rows: list[tuple[str, float, str]] = []
    breakdown: list[list[str]] = []

    if args.runs_only:
        for i in range(args.runs_only):
            r = evalfleet(args.work, f"startup-{args.kind}", model, data, new)
            ready = replica_ready(args.work, f"startup-{args.kind}", f"run {i + 1}", breakdown)
            print(f"| run {i + 1} | {r['command_s']:.1f} | replica ready {ready:.1f} s; generation "
                  f"{r['generate_s']:.1f} s |", flush=True)
        print(markdown_rows(STARTUP_HEAD, breakdown))
        return
    bare_s = float(wall([sys.executable, "-c", BARE, str(model), args.kind])[1].strip().splitlines()[-1])
    rows.append(("bare load (imports, CUDA init, from_pretrained)", bare_s, ""))
    for label in ("first run", "second run"):
        r = evalfleet(args.work, f"startup-{args.kind}", model, data, new)
        ready = replica_ready(args.work, f"startup-{args.kind}", label, breakdown)
        rows.append((f"evalfleet run, {label}", r["command_s"], f"replica ready {ready:.1f} s "
                     f"({ready / bare_s:.2f} x bare load); generation {r['generate_s']:.1f} s"))

    folder = serve_dir()
    server = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "serve",
                               str(config(args.work, f"startup-{args.kind}", model, data, new))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        while not registered(folder):
            if server.poll() is not None or time.perf_counter() - t0 > 600:
                sys.exit("evalfleet serve did not start")
            time.sleep(0.5)
        rows.append(("evalfleet serve: replicas loaded (not in the runs below)", time.perf_counter() - t0, ""))
        for label in ("first", "second"):
            r = evalfleet(args.work, f"startup-{args.kind}", model, data, new, "--serve")
            replica_ready(args.work, f"startup-{args.kind}", f"--serve, {label}", breakdown)
            rows.append((f"evalfleet run --serve, {label}", r["command_s"], f"generation {r['generate_s']:.1f} s"))
    finally:
        subprocess.run([sys.executable, "-m", "evalfleet.cli", "serve", "--stop"], capture_output=True, check=False)
        server.wait(60)

    script_s, out = wall([sys.executable, str(HERE / "stock.py"), args.kind, str(model), str(data), "--batch",
                          str(batch), "--count", str(max(1, n - batch)), "--new", str(new)])
    rows.append((f"script: transformers generate, batches of {batch}, loading the model itself", script_s,
                 json.loads(out.strip().splitlines()[-1]).get("device", "")))
    print(f"\n{args.kind}, {args.shape}-shaped, {n} rows -> {new} tokens\n")
    print("| what | seconds | notes |\n|---|---|---|")
    for what, seconds, notes in rows:
        print(f"| {what} | {seconds:.1f} | {notes} |")
    print("\nstart-up breakdown, seconds (the replica ready last):\n")
    print(markdown_rows(STARTUP_HEAD, breakdown))
    first = next(s for w, s, _ in rows if w.endswith("first run"))
    print(f"\nfirst run / script {first / script_s:.2f}")


if __name__ == "__main__":
    main()
