"""Where a static-engine batch spends its time: prefill (+ copy into the static cache) versus the 63
decode steps, with and without CUDA graphs (Qwen2.5-7B-shaped random weights built in memory).

    PYTHONPATH=src python bench/decode_profile.py [--batch 256] [--prompt 256]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from evalfleet.backends.attention import use_decode_attention
from evalfleet.backends.static_decode import StaticDecoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    use_decode_attention(model)
    b, t = args.batch, args.prompt
    ids = torch.randint(0, 150000, (b, t), device="cuda")
    mask = torch.ones(b, t, dtype=torch.long, device="cuda")
    for graphs in (True, False):
        dec = StaticDecoder(model, cuda_graphs=graphs)
        times = {}
        for new in (1, 64, 1, 64):  # each measured twice; the second is reported
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dec.generate(ids, mask, max_new_tokens=new, eos_ids=set(), pad_id=0)
            torch.cuda.synchronize()
            times[new] = time.perf_counter() - t0
        step = (times[64] - times[1]) / 63
        print(f"graphs={graphs} (captured: {dec.graph is not None}): B={b} T={t}: prefill+copy {times[1] * 1e3:.0f} ms, "
              f"63 decode steps {(times[64] - times[1]) * 1e3:.0f} ms = {step * 1e3:.1f} ms/step; "
              f"whole {times[64]:.2f} s = {b * 64 / times[64]:,.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
