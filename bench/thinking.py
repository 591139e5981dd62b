"""Thinking-like answers (issue 19): long answers of very different lengths, max_new_tokens --max-new (4,096), one
GPU, Qwen2.5-7B-shaped random weights. A first pass runs every row to the max; EOS tokens are then chosen from
those answers so that the answers' median length is about --median with a long tail (`choose_eos`), and:

  continuous   every row through the continuous engine (--slots slots): useful tokens (up to and with the
               EOS) per second; with more rows than slots, ended rows' slots are refilled
  to max       the same engine when every row runs to the max (the first pass, on the first --max-rows rows:
               the EOS tokens are chosen from these answers)
  generate     stock transformers `generate` (its own model, SDPA) in length-sorted batches of --batch, on
               --baseline-rows rows: useful tokens per second

The issue's targets: continuous >= 4 x generate; and (mixed lengths) >= 0.9 x to max.

    PYTHONPATH=src python bench/thinking.py [--rows 512] [--max-new 4096] [--median 600] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from continuous import GPU, continuous, sync, text_backend
from transformers import AutoModelForCausalLM

from evalfleet.backends.transformers.sampling import Sampler


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


def stock_generate(path: Path, ids: list[list[int]], batch: int, max_new: int, eos: set[int], pad: int,
                   max_time: float) -> tuple[float, int]:
    """Seconds and useful tokens of transformers' `generate` on its own model, batches sorted by prompt length.
    A batch still running after `max_time` seconds stops there (transformers' `max_time`) and counts the tokens
    it has: its rate then leaves out the slow end of the batch, where few rows are left, which flatters it."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if GPU else torch.float32,
                                                 device_map="cuda" if GPU else "cpu")
    rows = sorted(ids, key=len)
    useful = 0
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(map(len, part))
        x = torch.tensor([[pad] * (width - len(r)) + r for r in part], device=model.device)
        mask = (torch.arange(width) >= torch.tensor([width - len(r) for r in part])[:, None]).long().to(model.device)
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=sorted(eos), pad_token_id=pad, max_time=max_time)[:, width:]
        useful += sum(ended(r, eos) for r in out.tolist())
    sync()
    seconds = time.perf_counter() - t0
    del model
    if GPU:
        torch.cuda.empty_cache()
    return seconds, useful


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--baseline-rows", type=int, default=256)
    ap.add_argument("--max-rows", type=int, default=256, help="rows of the first pass, every row to the max")
    ap.add_argument("--max-new", type=int, default=4096)
    ap.add_argument("--median", type=int, default=600)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--baseline-seconds", type=float, default=180,
                    help="a `generate` batch stops after this long (on an H200 a batch of 256 to 4,096 took > 330 s)")
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
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
    del b
    if GPU:
        torch.cuda.empty_cache()
    s_gen, useful_gen = stock_generate(path, ids[: args.baseline_rows], args.batch, args.max_new, eos, pad,
                                       args.baseline_seconds)
    rate_max, rate_mixed = len(first) * args.max_new / s_max, useful / s_mixed
    rate_gen = useful_gen / s_gen
    q = [lengths[int(len(lengths) * f)] for f in (0.1, 0.5, 0.9)] + [lengths[-1]]
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, {args.shape}-shaped, {len(ids)} rows; EOS set of "
          f"{len(eos)} tokens; answer lengths p10/p50/p90/max {q[0]}/{q[1]}/{q[2]}/{q[3]} of {args.max_new}\n")
    print("| engine | rows | useful tok/s |\n|---|---|---|")
    print(f"| continuous, {args.slots} slots, every row to the max | {len(first)} | {rate_max:,.0f} |")
    print(f"| continuous, {args.slots} slots | {len(ids)} | {rate_mixed:,.0f} |")
    print(f"| transformers generate, length-sorted batches of {args.batch} | {args.baseline_rows} | {rate_gen:,.0f} |")
    print(f"\ncontinuous / generate {rate_mixed / rate_gen:.1f}x (target >= 4); "
          f"continuous / to max {rate_mixed / rate_max:.2f} (target >= 0.9)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "thinking.json").write_text(json.dumps(
            {"to_max": rate_max, "continuous": rate_mixed, "generate": rate_gen, "lengths": q, "eos": sorted(eos)}))


if __name__ == "__main__":
    main()
