"""Decode-attention kernels compared on a whole batch's shapes (issue 4; now those of the `generate` engine),
Qwen2.5-7B-shaped (28 query heads over 4 KV heads, head dim 128), batch 512, bf16: one-token queries over a KV cache
of L slots with a boolean padding mask. Each variant's largest difference from the first (two matmuls around an fp32
softmax: evalfleet's kernel until SDPA's grouped-query mode measured faster; `grouped_decode_attention` is now that
mode). Prints GPU time per call and per forward (x 28 layers). (Until 2026-12-07 it also timed the static engine's
flash-attention prefill, RESULTS.md session 4; that kernel went with the engine.) `gpu_ms` serves
`slot_kernels.py` too.

    PYTHONPATH=src python bench/probes/decode_attention.py [--batch 512] [--length 384] [--used 300]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from evalfleet.backends.transformers.kernels.attention import grouped_decode_attention

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


def table(variants: dict, reference: torch.Tensor, kv_bytes: int) -> None:
    """A row per variant: GPU time, K+V bandwidth, largest difference from `reference`."""
    print("| kernel | ms per call | ms per forward (x28) | GB/s of K+V | max diff |\n|---|---|---|---|---|")
    for name, fn in variants.items():
        try:
            ms = gpu_ms(fn)
            out = fn().float()
            diff = (out - reference).abs().max().item()
            print(f"| {name} | {ms:.3f} | {ms * LAYERS:.2f} | {kv_bytes / ms / 1e6:,.0f} | {diff:.4f} |", flush=True)
        except Exception as err:  # a variant this torch cannot run: say so, measure the others
            print(f"| {name} | failed: {type(err).__name__}: {str(err)[:80]} | | | |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--length", type=int, default=384, help="KV cache slots (prompt + new tokens, rounded up)")
    ap.add_argument("--used", type=int, default=300, help="slots holding tokens (the rest is masked)")
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


if __name__ == "__main__":
    main()
