"""What a decode step of the continuous engine costs at each width (issue 19: the tail of a mixed-length run),
one GPU, Qwen2.5-7B-shaped random weights: every slot busy with a 256-token prompt, then --steps replays of the
captured step at each width of `decode_widths`, and the prefill of a full refill and of a 16-row one
(`continuous.width_table`, which `bench/slots.py` and `bench/moe_experts.py` print too).

    PYTHONPATH=src python bench/probes/decode_widths.py [--slots 256] [--max-new 512] [--steps 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from continuous import GPU, text_backend, width_table

from evalfleet.backends.transformers.engine import ContinuousEngine
from evalfleet.backends.transformers.sampling import Sampler


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
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, {args.shape}-shaped, {args.slots} slots of {engine.length} positions, "
          f"prompts of {len(ids[0])} tokens\n")
    width_table(engine, ids, args.steps)


if __name__ == "__main__":
    main()
