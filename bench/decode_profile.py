"""Where a static-engine batch spends its time: prefill, one eager decode step, CUDA-graph capture and
one replayed step (Qwen2.5-7B-shaped random weights built in memory, no checkpoint needed).

    PYTHONPATH=src python bench/decode_profile.py [--batch 256] [--prompt 256]
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from evalfleet.backends.attention import use_decode_attention
from evalfleet.backends.static_decode import StaticDecoder, _StepGraph


def timed(fn, reps: int = 1) -> float:  # noqa: ANN001
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, out


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
    print("attn:", model.config._attn_implementation)
    B, T = args.batch, args.prompt
    ids = torch.randint(0, 150000, (B, T), device="cuda")
    am = torch.ones(B, T, dtype=torch.long, device="cuda")
    dec = StaticDecoder(model, cuda_graphs=True)
    with torch.inference_mode():
        cache = dec._cache_for(B, T + 64)
        L = dec.shape[1]
        mask = torch.zeros(B, L, dtype=torch.long, device="cuda")
        mask[:, :T] = 1
        pos = torch.arange(T, device="cuda")[None].expand(B, -1)
        kw = {dec.cache_kw: cache}
        for attempt in (1, 2):
            s, _ = timed(lambda: model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=True,
                                       logits_to_keep=1))
            print(f"prefill B={B} T={T} (no static cache), pass {attempt}: {s * 1e3:.0f} ms")
        s, _ = timed(lambda: model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                   cache_position=torch.arange(T, device="cuda"), logits_to_keep=1, **kw))
        print(f"prefill B={B} T={T} into the static cache (L={L}): {s * 1e3:.0f} ms")
        s, _ = timed(lambda: dec.generate(ids, am, max_new_tokens=64, eos_ids=set(), pad_id=0))
        print(f"StaticDecoder.generate B={B} T={T} -> 64 tokens: {s * 1e3:.0f} ms "
              f"(graphs: {dec.graph is not None})")
        s, _ = timed(lambda: dec.generate(ids, am, max_new_tokens=64, eos_ids=set(), pad_id=0))
        print(f"StaticDecoder.generate again: {s * 1e3:.0f} ms ({B * 64 / s:,.0f} tok/s)")
        tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
        p1 = pos[:, -1:] + 1
        mask[:, T] = 1
        s, _ = timed(lambda: model(input_ids=tok, attention_mask=mask, position_ids=p1, use_cache=True,
                                   cache_position=torch.tensor([T], device="cuda"), **kw), reps=5)
        print(f"eager decode step (2D mask): {s * 1e3:.1f} ms")
        m4 = mask.bool()[:, None, None, :]
        s, _ = timed(lambda: model(input_ids=tok, attention_mask=m4, position_ids=p1, use_cache=True,
                                   cache_position=torch.tensor([T], device="cuda"), **kw), reps=5)
        print(f"eager decode step (4D bool mask): {s * 1e3:.1f} ms")
        try:
            t0 = time.perf_counter()
            g = _StepGraph(model, dec.cache_kw, cache, B, L, 0)
            print(f"graph capture: {time.perf_counter() - t0:.2f} s")
            done = torch.zeros(B, dtype=torch.bool, device="cuda")
            s, _ = timed(lambda: g(tok, p1, T, mask, done), reps=20)
            print(f"graph decode step: {s * 1e3:.1f} ms")
        except Exception:
            traceback.print_exc()


if __name__ == "__main__":
    main()
