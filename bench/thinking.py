"""Thinking-like answers (issue 19): long answers of very different lengths, max_new_tokens --max-new (4,096), one
GPU, Qwen2.5-7B-shaped random weights. A first pass runs every row to the max; EOS tokens are then chosen from
those answers so that the answers' median length is about --median with a long tail (`eos_for_median`), and:

  continuous   every row through the continuous engine (--slots slots): useful tokens (up to and with the
               EOS) per second; with more rows than slots, ended rows' slots are refilled
  to max       the same engine when every row runs to the max (the first pass, on the first --max-rows rows:
               the EOS tokens are chosen from these answers)
  generate     stock transformers `generate` in a process of its own that imports nothing of evalfleet
               (`isolated.py`: a fresh `from_pretrained`, SDPA, transformers' kernels), in length-sorted batches
               of each --batch (default 256, the slots' count), on --baseline-rows rows: useful tokens per second.
               A batch still running after --baseline-seconds stops there (transformers' `max_time`), which
               flatters it: the table says how many batches were cut.

Each ratio is printed with what it measures: continuous / generate at the same batch size as the slots is the
engine's own gain (the issue's target: >= 4); at a smaller --batch it is batch size and engine together;
continuous / to max is what the answers' uneven lengths cost the same engine (target: >= 0.9).

    PYTHONPATH=src python bench/thinking.py [--rows 512] [--max-new 4096] [--median 600] [--batch 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import isolated
import torch
from transformers import AutoModelForCausalLM


def eos_for_median(answers: list[list[int]], median: int) -> set[int]:
    """Tokens, added one at a time, whose first occurrence ends the answers at a median length of about `median`
    with a long tail: candidates are tokens that first occur between median / 4 and 2 x median in many answers,
    and one is skipped if it would end more than a tenth of the answers before median / 4."""
    firsts = [{} for _ in answers]  # per answer: token -> its first position
    for first, a in zip(firsts, answers):
        for i, t in enumerate(a):
            first.setdefault(t, i)
    counts: dict[int, int] = {}
    for first in firsts:
        for t, i in first.items():
            if median // 4 <= i < 2 * median:
                counts[t] = counts.get(t, 0) + 1
    ends = [len(a) for a in answers]
    chosen: set[int] = set()
    for token in sorted(counts, key=counts.get, reverse=True):
        if statistics.median(ends) <= median:
            break
        trial = [min(e, first[token] + 1) if token in first else e for e, first in zip(ends, firsts)]
        if sum(e < median // 4 for e in trial) <= 0.1 * len(trial):
            chosen.add(token)
            ends = trial
    return chosen


def ended(answer: list[int], eos: set[int]) -> int:
    """Its useful length: up to and with the first EOS token."""
    return next((i + 1 for i, t in enumerate(answer) if t in eos), len(answer))


def stock_generate(job: dict) -> dict:
    """(In a process of its own, nothing of evalfleet imported.) Seconds and useful tokens of transformers' `generate`
    on its own model, the job's rows (token ids) in batches of job["batch"] sorted by prompt length. A batch still
    running after job["max_time"] seconds stops there (transformers' `max_time`) and counts the tokens it has: its
    rate then leaves out the slow end of the batch, where few rows are left, which flatters it."""
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(job["path"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map="cuda" if cuda else "cpu", attn_implementation="sdpa")
    rows, batch, eos, pad = sorted(job["ids"], key=len), job["batch"], set(job["eos"]), job["pad"]
    useful = cut = 0
    sync = torch.cuda.synchronize if cuda else lambda: None
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(map(len, part))
        x = torch.tensor([[pad] * (width - len(r)) + r for r in part], device=model.device)
        mask = (torch.arange(width) >= torch.tensor([width - len(r) for r in part])[:, None]).long().to(model.device)
        t = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=job["max_new"], do_sample=False,
                             eos_token_id=sorted(eos), pad_token_id=pad, max_time=job["max_time"])[:, width:]
        cut += time.perf_counter() - t >= job["max_time"]
        useful += sum(ended(r, eos) for r in out.tolist())
        print(f"  generate, batch {i // batch + 1} of {-(-len(rows) // batch)}: {time.perf_counter() - t:.1f} s",
              flush=True)
    sync()
    return {"seconds": time.perf_counter() - t0, "useful": useful, "rows": len(rows), "batch": batch,
            "cut_batches": cut, "batches": -(-len(rows) // batch)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--baseline-rows", type=int, default=256)
    ap.add_argument("--max-rows", type=int, default=256, help="rows of the first pass, every row to the max")
    ap.add_argument("--max-new", type=int, default=4096)
    ap.add_argument("--median", type=int, default=600)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[256],
                    help="generate's batch sizes, each a baseline of its own (256: the slots' count)")
    ap.add_argument("--baseline-seconds", type=float, default=180,
                    help="a `generate` batch stops after this long (on an H200 a batch of 256 to 4,096 took > 330 s)")
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = isolated.parse_args(ap, {"stock": stock_generate})
    if args is None:  # this process was the stock baseline's
        return
    from continuous import GPU, continuous, text_backend  # evalfleet: in this process only, not the baseline's

    from evalfleet.backends.transformers.sampling import Sampler

    b, ids = text_backend(args.work, args.shape, args.rows)
    path = Path(b.cfg.path)
    first = ids[: args.max_rows]
    s_max, answers = continuous(b.model, first, args.slots, args.max_new, set(), Sampler())
    eos = eos_for_median(answers, args.median)
    s_mixed, mixed = continuous(b.model, ids, args.slots, args.max_new, eos, Sampler())
    lengths = sorted(map(len, mixed))
    useful = sum(lengths)
    print(f"continuous: to max {len(first) * args.max_new / s_max:,.0f} tok/s; mixed {useful / s_mixed:,.0f} useful "
          f"tok/s ({useful} tokens in {s_mixed:.1f} s)", flush=True)
    pad = b.tokenizer.pad_token_id
    del b  # its model's memory freed before the baselines' processes load theirs
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
    baselines = {batch: isolated.run(__file__, "stock", {
        "path": str(path), "ids": ids[: args.baseline_rows], "batch": batch, "max_new": args.max_new,
        "eos": sorted(eos), "pad": pad, "max_time": args.baseline_seconds}, args.work) for batch in args.batch}
    rate_max, rate_mixed = len(first) * args.max_new / s_max, useful / s_mixed
    q = [lengths[int(len(lengths) * f)] for f in (0.1, 0.5, 0.9)] + [lengths[-1]]
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, {args.shape}-shaped, {len(ids)} rows; EOS set of "
          f"{len(eos)} tokens; answer lengths p10/p50/p90/max {q[0]}/{q[1]}/{q[2]}/{q[3]} of {args.max_new}\n")
    print("| engine | rows | useful tok/s |\n|---|---|---|")
    print(f"| continuous, {args.slots} slots, every row to the max | {len(first)} | {rate_max:,.0f} |")
    print(f"| continuous, {args.slots} slots | {len(ids)} | {rate_mixed:,.0f} |")
    ratios = [f"continuous / to max: {rate_mixed / rate_max:.2f}, the same engine on these uneven lengths against "
              "every row to the max: what the tail costs (target >= 0.9)"]
    for batch, r in baselines.items():
        label = f"transformers generate (own process), length-sorted batches of {batch}"
        if "error" in r:
            print(f"| {label} | {args.baseline_rows} | not measured: {r['error']} |")
            continue
        cut = f"; {r['cut_batches']} of {r['batches']} batches cut at {args.baseline_seconds:.0f} s" \
            if r["cut_batches"] else ""
        print(f"| {label}{cut} | {r['rows']} | {r['useful'] / r['seconds']:,.0f} |")
        what = ("the same batch size as the slots: the engine's own gain (target >= 4)" if batch == args.slots else
                f"batch {batch} against {args.slots} slots: batch size and engine together")
        ratios.append(f"continuous / generate at batch {batch}: {rate_mixed / (r['useful'] / r['seconds']):.1f}x, "
                      f"{what}{' (cut batches flatter generate)' if r['cut_batches'] else ''}")
    print("\n" + "\n".join(ratios))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "thinking.json").write_text(json.dumps(
            {"to_max": rate_max, "continuous": rate_mixed, "lengths": q, "eos": sorted(eos),
             "generate": {str(batch): {**r, "useful_tok_per_s": r["useful"] / r["seconds"]} if "error" not in r else r
                          for batch, r in baselines.items()}}))


if __name__ == "__main__":
    main()
