"""Attention kernels compared on the static engine's shapes (issue 4), Qwen2.5-7B-shaped (28 query heads over
4 KV heads, head dim 128), batch 512, bf16:
  - decode steps: one-token queries over a KV cache of L slots with a boolean padding mask. Each variant's
    largest difference from the first (two matmuls around an fp32 softmax: evalfleet's kernel until SDPA's
    grouped-query mode measured faster; `grouped_decode_attention` is now that mode);
  - prompts (prefill) of T tokens, some rows left-padded: transformers' SDPA with the causal padding mask
    (`repeat_kv` copies) against flash attention over the rows' boundaries (`prompt_boundaries`); the largest
    difference on real tokens.
Prints GPU time per call and per forward (x 28 layers).

    PYTHONPATH=src python bench/decode_attention.py [--batch 512] [--length 384] [--prompt 258]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from evalfleet.backends.transformers.kernels.attention import grouped_decode_attention, prompt_boundaries

HEADS, KV_HEADS, DIM, LAYERS = 28, 4, 128, 28


def gpu_ms(fn, reps: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def table(variants: dict, reference: torch.Tensor, kv_bytes: int, keep: torch.Tensor | None = None) -> None:
    """A row per variant: GPU time, K+V bandwidth, largest difference from `reference` (rows `keep` of dim 1)."""
    print("| kernel | ms per call | ms per forward (x28) | GB/s of K+V | max diff |\n|---|---|---|---|---|")
    for name, fn in variants.items():
        try:
            ms = gpu_ms(fn)
            out = fn().float()
            diff = ((out - reference) if keep is None else (out - reference)[keep]).abs().max().item()
            print(f"| {name} | {ms:.3f} | {ms * LAYERS:.2f} | {kv_bytes / ms / 1e6:,.0f} | {diff:.4f} |", flush=True)
        except Exception as err:  # a variant this torch cannot run: say so, measure the others
            print(f"| {name} | failed: {type(err).__name__}: {str(err)[:80]} | | | |", flush=True)


def prompts(b: int, t: int) -> None:
    """Prefill attention of B left-padded prompts of T tokens."""
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(dev).manual_seed(1)
    q = torch.randn(b, t, HEADS, DIM, device=dev, dtype=dt, generator=g).transpose(1, 2)  # as the projections lay out
    k, v = (torch.randn(b, KV_HEADS, t, DIM, device=dev, dtype=dt, generator=g) for _ in range(2))  # as the cache
    pad = torch.zeros(b, t, dtype=torch.long, device=dev)
    pad[: b // 2, :2] = 1  # half the rows left-padded by 2 tokens
    valid = pad == 0  # [B, T]
    mask = torch.ones(t, t, dtype=torch.bool, device=dev).tril()[None, None] & valid[:, None, None, :]
    mask = mask | ~valid[:, None, :, None]  # padding queries see everything (their outputs are unused)
    boundaries = prompt_boundaries(valid.long())
    scale = DIM**-0.5
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = HEADS // KV_HEADS, True

    def sdpa() -> torch.Tensor:
        return sdpa_attention_forward(module, q, k, v, mask, scaling=scale)[0]

    def flash() -> torch.Tensor:
        return grouped_decode_attention(module, q, k, v, mask, scaling=scale, **boundaries)[0]

    print(f"\nprompts: batch {b}, {t} tokens (half the rows 2 padding tokens)")
    table({"transformers' SDPA, causal padding mask (repeat_kv)": sdpa,
           "flash attention over row boundaries (evalfleet)": flash},
          sdpa().float(), 2 * k.numel() * k.element_size(), valid)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--length", type=int, default=384, help="KV cache slots (prompt + new tokens, rounded up)")
    ap.add_argument("--used", type=int, default=300, help="slots holding tokens (the rest is masked)")
    ap.add_argument("--prompt", type=int, default=258, help="prompt tokens (prefill section)")
    args = ap.parse_args()
    b, length = args.batch, args.length
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(dev).manual_seed(0)
    q = torch.randn(b, HEADS, 1, DIM, device=dev, dtype=dt, generator=g)
    k = torch.randn(b, KV_HEADS, length, DIM, device=dev, dtype=dt, generator=g)
    v = torch.randn(b, KV_HEADS, length, DIM, device=dev, dtype=dt, generator=g)
    mask = torch.zeros(b, 1, 1, length, device=dev, dtype=torch.bool)
    mask[:, :, :, : args.used] = True
    mask[: b // 4, :, :, :8] = False  # left padding on some rows
    scale = DIM**-0.5

    def matmuls() -> torch.Tensor:  # [B, 1, H, D]
        qg = q.view(b, KV_HEADS, HEADS // KV_HEADS, DIM)  # query head k*G+g reads KV head k
        scores = torch.matmul(qg, k.transpose(2, 3)).float() * scale
        out = torch.matmul(scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype), v)
        return out.reshape(b, HEADS, 1, DIM).transpose(1, 2)

    def sdpa_groups_as_queries() -> torch.Tensor:  # the query heads of a KV head as its query "sequence"
        out = F.scaled_dot_product_attention(q.view(b, KV_HEADS, HEADS // KV_HEADS, DIM), k, v, attn_mask=mask,
                                             scale=scale)
        return out.reshape(b, HEADS, 1, DIM).transpose(1, 2)

    def evalfleet() -> torch.Tensor:  # SDPA enable_gqa
        return grouped_decode_attention(None, q, k, v, mask, scaling=scale)[0]

    compiled = torch.compile(matmuls)

    reference = matmuls().float()
    kv_bytes = 2 * k.numel() * k.element_size()
    print(f"batch {b}, {length} slots ({args.used} used), K+V {kv_bytes / 1e6:.0f} MB per layer; "
          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    table({"matmuls around an fp32 softmax": matmuls, "the same under torch.compile": compiled,
           "SDPA, query groups as queries": sdpa_groups_as_queries,
           "SDPA enable_gqa (evalfleet's grouped_decode_attention)": evalfleet}, reference, kv_bytes)
    prompts(b, args.prompt)


if __name__ == "__main__":
    main()
