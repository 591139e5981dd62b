"""Throughput of `evalfleet run` on one GPU beside transformers as shipped, measured the way issue 17 asks.

Every measurement is a process of its own, on the same saved random-weight model and the same JSONL file:
  one at a time   `bench/stock.py`: transformers as shipped (fresh `from_pretrained`, SDPA, nothing of evalfleet
                  imported), `generate` at batch 1, warmed at batch 1
  batched         the same at `--baseline-batch`, warmed with one batch of that size
  evalfleet run   the whole command, default settings (batch size `auto`), over every row of the file
                  (>= 8 batches per replica): command to results, with start-up (command start to the replica
                  ready: imports, checks, process spawn, model load, kernel compile, graph capture), the
                  generation phase and the tail (unload, reports) shown separately
Rounds alternate the order (baseline first, then evalfleet first, ...); the table gives the median of the rounds
and their range, and each ratio is the median of the per-round ratios (numerator and denominator from the same
round). Rounds accumulate in WORK/throughput-KIND.jsonl, so several calls can add rounds (`--rounds`); `--fresh`
starts over.

Text: Qwen2.5-7B-shaped (no EOS: every request generates exactly 64 tokens), prompts of 256 templated tokens.
VLM: Qwen2.5-VL-7B-shaped, one 448x448 PNG + a ~20-word question -> 32 tokens.

    PYTHONPATH=src python bench/throughput.py text|vlm [--rounds 3] [--shape 7b|tiny] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from models import chat_prompts, images, qwen25_text, qwen25_vl

HERE = Path(__file__).parent
QUESTION = "Describe the coloured shape in this picture: its colour, its position and its size, briefly."


def dataset(work: Path, kind: str, shape: str, n: int) -> tuple[Path, Path, int]:
    """(model folder, JSONL file of n rows, new tokens) for `kind`, built once in `work`."""
    data = work / f"{kind}-{n}.jsonl"
    if kind == "text":
        model, new = qwen25_text(work, shape), 64
        if not data.exists():
            data.write_text("".join(json.dumps({"id": i, "question": p, "answer": "yes"}) + "\n"
                                    for i, p in enumerate(chat_prompts(work, n, 256))))
    else:
        model, new = qwen25_vl(work, shape), 32
        if not data.exists():
            data.write_text("".join(json.dumps({"id": i, "question": QUESTION, "image": str(p), "answer": "yes"})
                                    + "\n"
                                    for i, p in enumerate(images(work, n))))
    return model, data, new


def stock(kind: str, model: Path, data: Path, batch: int, count: int, new: int) -> dict:
    """One baseline process (bench/stock.py); its JSON line plus the rates."""
    cmd = [sys.executable, str(HERE / "stock.py"), kind, str(model), str(data), "--batch", str(batch),
           "--count", str(count), "--new", str(new)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**m, "batch": batch, "samples_per_s": m["samples"] / m["timed_s"], "tok_per_s": m["tokens"] / m["timed_s"]}


def config(work: Path, name: str, model: Path, data: Path, new: int) -> Path:
    """The run's config file: default settings, every row of `data`."""
    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "model": {"path": str(model), "generation": {"max_new_tokens": new}},
           "datasets": [{"name": "d", "path": str(data)}]}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def evalfleet(work: Path, name: str, model: Path, data: Path, new: int, *options: str) -> dict:
    """`evalfleet run` with default settings on every row of `data`: the whole command and its phases."""
    path = config(work, name, model, data, new)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh", *options],
                          capture_output=True, text=True, check=False)
    command_s = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"evalfleet run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    run = work / "runs" / name
    summary = json.loads((run / "summary.json").read_text())
    perf = summary["performance"]["generate"]
    plan = re.findall(r"plan: batch size (\d+)", (run / "run.log").read_text())  # this run's: the last
    n = summary["datasets"]["d"]["samples"]
    start_s = command_s - perf["wall_s"] + perf["load_wall_s"]  # command start to every replica ready
    return {"command_s": command_s, "start_s": start_s, "generate_s": perf["generate_wall_s"],
            "tail_s": command_s - start_s - perf["generate_wall_s"], "samples": n,
            "tokens": perf["generated_tokens"], "errors": summary["datasets"]["d"]["errors"],
            "batch": int(plan[-1]) if plan else None, "replicas": len(perf["workers"]),
            "samples_per_s": perf["samples_per_s"], "tok_per_s": perf["generated_tokens_per_s"],
            "command_samples_per_s": n / command_s, "command_tok_per_s": perf["generated_tokens"] / command_s,
            "prefill": perf.get("prefill")}


def one_round(args: argparse.Namespace, model: Path, data: Path, new: int, n: int, index: int) -> dict:
    """The three measurements, in an order that alternates with the round's index."""
    steps = {
        "one": lambda: stock(args.kind, model, data, 1, args.one_count, new),
        "batched": lambda: stock(args.kind, model, data, args.baseline_batch, args.baseline_count, new),
        "evalfleet": lambda: evalfleet(args.work, f"{args.kind}-r{index}", model, data, new),
    }
    order = list(steps) if index % 2 == 0 else list(reversed(steps))
    out: dict = {"round": index, "order": order, "rows": n}
    for key in order:
        out[key] = steps[key]()
        print(f"round {index}: {key}: {json.dumps(out[key])}", flush=True)
    return out


def spread(values: list[float], fmt: str) -> tuple[str, str]:
    med = statistics.median(values)
    return format(med, fmt), (f"{format(min(values), fmt)}-{format(max(values), fmt)}" if len(values) > 1 else "")


def table(kind: str, rounds: list[dict]) -> str:
    """Medians over rounds, ranges, and ratios computed within each round."""
    unit, key, fmt = ("tok/s", "tok_per_s", ",.0f") if kind == "text" else ("samples/s", "samples_per_s", ".2f")
    rows: list[tuple[str, list[float], str, str]] = []
    one = [r["one"][key] for r in rounds]
    bat = [r["batched"][key] for r in rounds]

    def ratio(vals: list[float], base: list[float]) -> str:
        return f"{statistics.median(v / b for v, b in zip(vals, base)):.1f}x"

    b0, e0 = rounds[0]["batched"], rounds[0]["evalfleet"]
    rows.append((f"transformers `generate`, one at a time (warmed at batch 1; {rounds[0]['one']['samples']} timed)",
                 one, unit, "1.0x"))
    rows.append((f"transformers `generate`, batches of {b0['batch']} (warmed at that batch; {b0['samples']} timed)",
                 bat, unit, ratio(bat, one)))
    gen = [r["evalfleet"][key] for r in rounds]
    whole = [r["evalfleet"]["command_" + key] for r in rounds]
    ev = f"`evalfleet run`, defaults (batch {e0['batch']}, {e0['replicas']} replica), {e0['samples']} rows"
    rows.append((f"{ev}: generation phase", gen, unit, f"{ratio(gen, one)}; {ratio(gen, bat)} batched"))
    rows.append((f"{ev}: whole command, command to results", whole, unit,
                 f"{ratio(whole, one)}; {ratio(whole, bat)} batched"))
    for phase, label in (("start_s", "start-up: command to replica ready"), ("generate_s", "generation phase"),
                         ("tail_s", "tail: unload, scoring, reports"), ("command_s", "whole command")):
        rows.append((f"`evalfleet run`: {label}", [r["evalfleet"][phase] for r in rounds], "s", ""))
    rows.append(("transformers as a script: process start to model loaded (batched)",
                 [r["batched"]["start_s"] for r in rounds], "s", ""))
    script = [r["batched"]["start_s"] + r["evalfleet"]["samples"] / r["batched"]["samples_per_s"] for r in rounds]
    faster = statistics.median(s / r["evalfleet"]["command_s"] for s, r in zip(script, rounds))
    rows.append((f"transformers as a script for the same {e0['samples']} rows (estimate: start + rows / batched rate)",
                 script, "s", f"script time / `evalfleet run` whole command: {faster:.1f}x"))
    out = (f"| measurement ({len(rounds)} rounds, alternating order) | median | range | unit | vs one at a time |\n"
           "|---|---|---|---|---|\n")
    for name, vals, u, note in rows:
        med, rng = spread(vals, fmt if u == unit else ".1f")
        out += f"| {name} | {med} | {rng} | {u} | {note} |\n"
    errors = sum(r["evalfleet"]["errors"] for r in rounds)
    return out + f"\nErrors in the evalfleet runs: {errors}. Device: {rounds[0]['one']['device']}, " \
                 f"torch {rounds[0]['one']['torch']}.\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["text", "vlm"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--shape", default="7b", choices=["7b", "tiny"])
    ap.add_argument("--rows", type=int, default=2048, help="rows evalfleet answers (>= 8 batches of the default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one-count", type=int, default=8)
    ap.add_argument("--baseline-batch", type=int, default=256)
    ap.add_argument("--baseline-count", type=int, default=512)
    ap.add_argument("--fresh", action="store_true", help="forget the rounds recorded before")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, data, new = dataset(args.work, args.kind, args.shape, args.rows)
    log = args.work / f"throughput-{args.kind}.jsonl"
    if args.fresh:
        log.unlink(missing_ok=True)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for i in range(len(done), len(done) + args.rounds):
        done.append(one_round(args, model, data, new, args.rows, i))
        with log.open("a") as f:
            f.write(json.dumps(done[-1]) + "\n")
    text = table(args.kind, done)
    print(text)
    if args.out:
        (args.out / f"throughput-{args.kind}.md").write_text(text)
        (args.out / f"throughput-{args.kind}.jsonl").write_text(log.read_text())


if __name__ == "__main__":
    main()
