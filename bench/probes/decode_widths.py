"""What a decode step of the continuous engine costs at each width (issue 19: the tail of a mixed-length run),
one GPU, Qwen2.5-7B-shaped random weights: every slot busy with a 256-token prompt, then --steps replays of the
captured step at each width of `decode_widths`, and the prefill of a full refill and of a 16-row one.

    PYTHONPATH=src python bench/decode_widths.py [--slots 256] [--max-new 512] [--steps 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from continuous import GPU, sync, text_backend

from evalfleet.backends.transformers.engine import ContinuousEngine, Row
from evalfleet.backends.transformers.sampling import Sampler


def width_table(engine: ContinuousEngine, ids: list[list[int]], steps: int) -> dict[int, float]:
    """Fill the engine's slots with `ids` (16 rows, then the rest), print both prefills' times and the ms of a
    decode step at each of the engine's widths (`steps` replays of its captured graph); return the latter."""
    slots = engine.slots
    prefill = {}
    for n in (16, slots):  # the first fills 16 slots, the second the rest of them and then some
        rows = [Row(i, x, i) for i, x in enumerate(ids[:n])]
        sync()
        t0 = time.perf_counter()
        engine.add(rows)
        engine._admit()
        sync()
        prefill[n] = time.perf_counter() - t0
    print(f"prefill of 16 prompts {prefill[16] * 1e3:.1f} ms; of {slots - 16} more {prefill[slots] * 1e3:.1f} ms"
          f" ({prefill[slots] * 1e3 / max(1, slots - 16):.2f} ms a prompt)\n")
    print("| width | ms a decode step | ms a token |\n|---|---|---|")
    out = {}
    for w in engine.widths:
        engine.graphs.run(w, engine._decode_step)  # captured now
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.graphs.run(w, engine._decode_step)
        sync()
        out[w] = ms = (time.perf_counter() - t0) / steps * 1e3
        print(f"| {w} | {ms:.2f} | {ms / w:.3f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    b, ids = text_backend(args.work, args.shape, args.slots)
    engine = ContinuousEngine(b.model, slots=args.slots, length=max(map(len, ids)) + args.max_new,
                              max_new_tokens=args.max_new, eos_ids=set(), sampler=Sampler(), cuda_graphs=GPU)
    print(f"\n{'H200' if GPU else 'CPU'}, {args.shape}-shaped, {args.slots} slots of {engine.length} positions, "
          f"prompts of {len(ids[0])} tokens\n")
    width_table(engine, ids, args.steps)


if __name__ == "__main__":
    main()
