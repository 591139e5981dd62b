"""Continuous batching against whole batches (issue 19), one GPU, Qwen2.5-7B-shaped random weights, in one process
(the engines share the loaded model; each is warmed on a few rows before it is timed):

  uniform    --uniform prompts of 256 templated tokens -> 64 tokens, no EOS: the continuous engine, greedy and
             sampled (temperature 0.7, top_p 0.9), against the static engine in batches of --slots
  to max     --rows prompts of 256 tokens -> --max-new tokens, no EOS: the rate when every row runs to the max
  mixed      the same prompts, with EOS tokens chosen from the to-max answers so that ~--ending of the rows end
             within 256 tokens: useful tokens (up to and with the EOS) per second, continuous and static

The issue's targets: mixed >= 0.9 x to max (continuous), sampled >= 0.9 x greedy, uniform >= 8,000 tok/s.

    PYTHONPATH=src python bench/continuous.py [--rows 1024] [--max-new 512] [--slots 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from models import chat_prompts, qwen25_text

from evalfleet.backends import Request
from evalfleet.backends.transformers.kernels.attention import ATTENTION
from evalfleet.backends.transformers.engine import ContinuousEngine, Row
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.backends.transformers.slot_cache import SLOT_ATTENTION
from evalfleet.backends.static_decode import StaticDecoder
from evalfleet.backends.transformers.backend import TransformersBackend
from evalfleet.config import ModelConfig

GPU = torch.cuda.is_available()


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def continuous(model, ids: list[list[int]], slots: int, max_new: int, eos: set[int],
               sampler: Sampler, narrow: bool = True) -> tuple[float, list[list[int]]]:
    """Seconds and new tokens of every row through a fresh engine (warmed on `slots` // 4 rows first); with
    `narrow` False, every decode step is as wide as the slots (the engine of session 7)."""
    model.set_attn_implementation(SLOT_ATTENTION)
    engine = ContinuousEngine(model, slots=slots, length=max(map(len, ids)) + max_new, max_new_tokens=max_new,
                              eos_ids=eos, sampler=sampler, cuda_graphs=GPU)
    if not narrow:
        engine.widths = [slots]
    for rows in ([Row(i, x, i) for i, x in enumerate(ids[: slots // 4])], [Row(i, x, i) for i, x in enumerate(ids)]):
        engine.steps_at.clear()
        engine.moves = 0
        sync()
        t0 = time.perf_counter()
        engine.add(rows)
        out: dict[int, list[int]] = {}
        while engine.busy:
            out.update((d.key, d.tokens) for d in engine.step())
        sync()
        seconds = time.perf_counter() - t0
    widths = ", ".join(f"{w}: {n}" for w, n in sorted(engine.steps_at.items(), reverse=True))
    tokens = sum(map(len, out.values()))
    print(f"  {len(ids)} rows -> {max_new}: {tokens} tokens in {seconds:.2f} s, {tokens / seconds:,.0f} tok/s; "
          f"decode steps by width {widths}; moves {engine.moves}", flush=True)
    del engine
    if GPU:
        torch.cuda.empty_cache()
    return seconds, [out[i] for i in range(len(ids))]


def static(model, ids: list[list[int]], slots: int, max_new: int, eos: set[int], pad: int) -> tuple[float, int]:
    """Seconds and useful tokens of the static engine in batches of `slots` (left-padded; warmed on one batch)."""
    model.set_attn_implementation(ATTENTION)
    decoder = StaticDecoder(model, cuda_graphs=GPU)
    useful = 0
    for warm in (True, False):
        sync()
        t0 = time.perf_counter()
        for i in range(0, slots if warm else len(ids), slots):
            batch = ids[i : i + slots]
            width = max(map(len, batch))
            x = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=model.device)
            new = decoder.generate(x, mask, max_new_tokens=max_new, eos_ids=eos, pad_id=pad).tolist()
            if not warm:
                useful += sum(next((j + 1 for j, t in enumerate(row) if t in eos), max_new) for row in new)
        sync()
        seconds = time.perf_counter() - t0
    del decoder
    if GPU:
        torch.cuda.empty_cache()
    return seconds, useful


def choose_eos(answers: list[list[int]], within: int, share: float) -> set[int]:
    """Tokens that, as EOS, end about `share` of the rows within their first `within` tokens."""
    rows_with = Counter(t for a in answers for t in set(a[:within]))
    chosen: set[int] = set()
    for token, _ in rows_with.most_common():
        ended = sum(1 for a in answers if chosen & set(a[:within]))
        if ended >= share * len(answers):
            break
        trial = chosen | {token}
        if sum(1 for a in answers if trial & set(a[:within])) <= (share + 0.05) * len(answers):
            chosen = trial
    return chosen


def text_backend(work: Path, shape: str, rows: int) -> tuple[TransformersBackend, list[list[int]]]:
    """A Qwen2.5-`shape`-shaped model loaded for the continuous engine, and `rows` chat prompts of 256 tokens as
    token ids."""
    work.mkdir(parents=True, exist_ok=True)
    b = TransformersBackend(ModelConfig(path=str(qwen25_text(work, shape)), engine="continuous"), n_gpus=int(GPU))
    b.load()
    return b, [r.ids for r in b.prepare([Request(t, [], 0) for t in chat_prompts(work, rows, 256)]).inputs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--uniform", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--ending", type=float, default=0.6)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    b, ids = text_backend(args.work, args.shape, max(args.rows, args.uniform))
    model, pad = b.model, b.tokenizer.pad_token_id
    greedy, sampled = Sampler(), Sampler(0.7, top_p=0.9)
    sampled.compile()
    rows: list[tuple[str, str, float]] = []

    uni = ids[: args.uniform]
    n = len(uni) * 64
    s_greedy, _ = continuous(model, uni, args.slots, 64, set(), greedy)
    s_sampled, _ = continuous(model, uni, args.slots, 64, set(), sampled)
    s_static, _ = static(model, uni, args.slots, 64, set(), pad)
    rows += [("uniform", "continuous, greedy", n / s_greedy), ("uniform", "continuous, sampled", n / s_sampled),
             ("uniform", "static, greedy", n / s_static)]

    work = ids[: args.rows]
    s_max, answers = continuous(model, work, args.slots, args.max_new, set(), greedy)
    eos = choose_eos(answers, 256, args.ending)
    s_mixed, mixed = continuous(model, work, args.slots, args.max_new, eos, greedy)
    s_wide, wide = continuous(model, work, args.slots, args.max_new, eos, greedy, narrow=False)
    useful = sum(map(len, mixed))
    s_static_mixed, useful_static = static(model, work, args.slots, args.max_new, eos, pad)
    ended = sum(1 for a in mixed if len(a) <= 256 and a[-1] in eos) / len(mixed)
    rows += [("to max", f"continuous, {args.max_new} each", len(work) * args.max_new / s_max),
             ("mixed", f"continuous ({ended:.0%} end within 256)", useful / s_mixed),
             ("mixed", "continuous, every step all slots wide", sum(map(len, wide)) / s_wide),
             ("mixed", "static", useful_static / s_static_mixed)]
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, {args.shape}-shaped, {args.slots} slots; EOS set of {len(eos)} tokens, "
          f"mean useful length {useful / len(work):.0f} of {args.max_new}\n")
    print("| workload | engine | tok/s |\n|---|---|---|")
    for w, e, v in rows:
        print(f"| {w} | {e} | {v:,.0f} |")
    r = {e: v for _, e, v in rows}
    print(f"\nsampled / greedy {r['continuous, sampled'] / r['continuous, greedy']:.2f}; "
          f"mixed / to max {useful / s_mixed / (len(work) * args.max_new / s_max):.2f}; "
          f"mixed continuous / static {useful / s_mixed / (useful_static / s_static_mixed):.2f}; "
          f"answers that differ between narrowed and all-wide steps {sum(a != b for a, b in zip(mixed, wide))} "
          f"of {len(mixed)} (bf16: a matmul's rounding may depend on its batch size)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "continuous.json").write_text(json.dumps({"rows": rows, "eos": sorted(eos)}))


if __name__ == "__main__":
    main()
