"""How many decode slots the continuous engine should have (issue 19; placement's `MAX_AUTO_BATCH`): one GPU,
Qwen2.5-7B-shaped random weights, one process, the engines sharing the loaded model (`bench/continuous.py`'s
workloads, each engine warmed on a quarter of its slots first), for each slot count in --slots:

  step       ms of a decode step at the engine's widest width, and per token (all slots busy)
  uniform    --uniform prompts of 256 tokens -> 64, no EOS (issue 19's 512 x (256 -> 64), >= 8,000 tok/s)
  to max     --rows prompts -> --max-new tokens, no EOS
  mixed      the same prompts with the EOS set chosen once (from the first slot count's to-max answers) so that
             ~60 % of rows end within 256 tokens: useful tokens per second
  run        first, before the model is loaded here: `evalfleet run --batch-size B` on the uniform rows for each B
             of --run-batches (`auto`: the plan's, up to 512 slots fed by chunks of 256), --runs times each,
             alternating (the generation phase's tok/s, as `bench/throughput.py` reads it)

    PYTHONPATH=src python bench/slots.py [--slots 256 512] [--rows 1024] [--max-new 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from continuous import GPU, choose_eos, continuous, text_backend, width_table
from throughput import dataset, evalfleet

from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.backends.transformers.slot_cache import SLOT_ATTENTION


def step_ms(model, ids: list[list[int]], slots: int, steps: int = 30) -> float:
    """ms of one captured decode step with every one of `slots` slots busy (`continuous.width_table`, which
    prints every width's)."""
    model.set_attn_implementation(SLOT_ATTENTION)
    engine = ContinuousEngine(model, slots=slots, length=max(map(len, ids)) + 64, max_new_tokens=64, eos_ids=set(),
                              sampler=Sampler(), cuda_graphs=GPU)
    ms = width_table(engine, ids, steps)[slots]
    del engine
    if GPU:
        torch.cuda.empty_cache()
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--uniform", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--runs", type=int, default=2, help="`evalfleet run`s at each of --run-batches (0: none)")
    ap.add_argument("--run-batches", nargs="+", default=["256", "auto"])
    ap.add_argument("--runs-only", action="store_true", help="no in-process engines")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, data, new = dataset(args.work, "text", args.shape, args.uniform)
    runs: dict[str, list[str]] = {n: [] for n in args.run_batches}
    for i in range(args.runs):
        for batch in args.run_batches if i % 2 == 0 else reversed(args.run_batches):
            r = evalfleet(args.work, f"slots-{batch}", model_dir, data, new, "--batch-size", batch)
            runs[batch].append(f"{r['tok_per_s']:,.0f} (batch {r['batch']})")
            print(f"evalfleet run --batch-size {batch}: generation {r['tok_per_s']:,.0f} tok/s, command "
                  f"{r['command_s']:.1f} s, plan batch {r['batch']}", flush=True)
    if args.runs:
        print("| --batch-size | `evalfleet run`, generation phase tok/s (each run, in order) |\n|---|---|")
        for batch, rates in runs.items():
            print(f"| {batch} | {', '.join(rates)} |")
        print()
    if args.runs_only:
        return
    b, ids = text_backend(args.work, args.shape, max(args.rows, args.uniform))
    model, greedy = b.model, Sampler()
    uni, work = ids[: args.uniform], ids[: args.rows]
    eos: set[int] | None = None
    table = []
    for slots in args.slots:
        print(f"{slots} slots", flush=True)
        ms = step_ms(model, ids, slots)
        s_uni, _ = continuous(model, uni, slots, 64, set(), greedy)
        s_max, answers = continuous(model, work, slots, args.max_new, set(), greedy)
        if eos is None:
            eos = choose_eos(answers, 256, 0.6)
        s_mixed, mixed = continuous(model, work, slots, args.max_new, eos, greedy)
        useful = sum(map(len, mixed))
        table.append((slots, ms, len(uni) * 64 / s_uni, len(work) * args.max_new / s_max, useful / s_mixed))
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, {args.shape}-shaped; uniform {args.uniform} x (256 -> 64); "
          f"to max / mixed {args.rows} x (256 -> {args.max_new})\n")
    print("| slots | ms a step (all busy) | ms a token | uniform tok/s | to max tok/s | mixed useful tok/s | "
          "mixed / to max |\n|---|---|---|---|---|---|---|")
    base = table[0]
    for slots, ms, u, m, x in table:
        print(f"| {slots} | {ms:.2f} | {ms / slots:.4f} | {u:,.0f} ({u / base[2]:.2f}x) | {m:,.0f} ({m / base[3]:.2f}x) "
              f"| {x:,.0f} ({x / base[4]:.2f}x) | {x / m:.2f} |")


if __name__ == "__main__":
    main()
