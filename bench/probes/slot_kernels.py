"""Kernels of the continuous-batching engine (issue 19) on its shapes, Qwen2.5-7B-shaped attention (28 query heads
over 4 KV heads, head dim 128), bf16, one GPU:
  - decode attention over slot regions of L cache positions, each slot using part of its region: SDPA's grouped
    mode over the whole region with a mask (`grouped_decode_attention`'s) against flash attention over the used
    keys only (`seqused_k`), plain and captured in a CUDA graph, and with a paged block table where torch has one;
  - the sampler's cost per step: temperature, top-p (a sort over the vocabulary) and a counter-based draw.
Prints GPU time per call; figures go to bench/RESULTS.md.

    PYTHONPATH=src python bench/probes/slot_kernels.py [--slots 256] [--vocab 152064]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from decode_attention import gpu_ms

HEADS, KV_HEADS, DIM = 28, 4, 128


def decode(slots: int, region: int, used: torch.Tensor) -> None:
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(dev).manual_seed(0)
    q = torch.randn(slots, HEADS, DIM, device=dev, dtype=dt, generator=g)
    k, v = (torch.randn(slots * region, KV_HEADS, DIM, device=dev, dtype=dt, generator=g) for _ in range(2))
    used = used.to(dev, torch.int32)
    cu_q = torch.arange(slots + 1, device=dev, dtype=torch.int32)
    cu_k = cu_q * region
    mask = (torch.arange(region, device=dev)[None] < used[:, None])[:, None, None]  # [S, 1, 1, L]

    def sdpa() -> torch.Tensor:
        kk, vv = (x.view(slots, region, KV_HEADS, DIM).transpose(1, 2) for x in (k, v))
        return F.scaled_dot_product_attention(q[:, :, None], kk, vv, attn_mask=mask, enable_gqa=True)[:, :, 0]

    def flash() -> torch.Tensor:
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, 1, region, 0.0, False, False,
                                                       seqused_k=used)[0]

    kv_bytes = int(used.sum()) * KV_HEADS * DIM * 2 * 2
    ref = sdpa().float()
    rows = {"sdpa grouped, masked region": sdpa, "flash varlen, seqused_k": flash}
    try:
        block = 256
        blocks = k.view(-1, block, KV_HEADS, DIM)
        vblocks = v.view(-1, block, KV_HEADS, DIM)
        table = torch.arange(slots * region // block, device=dev, dtype=torch.int32).view(slots, -1)

        def paged() -> torch.Tensor:
            return torch.ops.aten._flash_attention_forward(q, blocks, vblocks, cu_q, None, 1, region, 0.0, False,
                                                           False, seqused_k=used, block_table=table)[0]
        if region % block == 0:
            rows["flash paged (block 256)"] = paged
    except Exception as err:
        print("paged: not built:", err)
    try:
        static_out = flash()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = flash()
        rows["flash varlen in a CUDA graph"] = lambda: (graph.replay(), static_out)[1]
    except Exception as err:
        print("flash in a graph failed:", type(err).__name__, err)
    print(f"\n### decode: {slots} slots x region {region}, used mean {used.float().mean():.0f}\n")
    print("| kernel | ms per call | ms per 28 layers | GB/s of used K+V | max diff |\n|---|---|---|---|---|")
    for name, fn in rows.items():
        try:
            ms = gpu_ms(fn)
            diff = (fn().float() - ref).abs().max().item()
            print(f"| {name} | {ms:.3f} | {ms * 28:.2f} | {kv_bytes / ms / 1e6:,.0f} | {diff:.4f} |", flush=True)
        except Exception as err:
            print(f"| {name} | failed: {type(err).__name__}: {str(err)[:100]} | | | |", flush=True)


def sampler(slots: int, vocab: int) -> None:
    from evalfleet.backends.transformers.sampling import Sampler

    dev = "cuda"
    logits = torch.randn(slots, vocab, device=dev, dtype=torch.bfloat16) * 3
    seeds = torch.arange(slots, device=dev, dtype=torch.long) * 7919
    steps = torch.zeros(slots, device=dev, dtype=torch.long)
    print(f"\n### sampler: {slots} rows x vocabulary {vocab}\n\n| settings | ms per step |\n|---|---|")
    for name, kw in {"greedy": dict(temperature=0.0), "temperature 0.7": dict(temperature=0.7),
                     "temperature 0.7, top_p 0.9": dict(temperature=0.7, top_p=0.9),
                     "temperature 0.7, top_k 50": dict(temperature=0.7, top_k=50)}.items():
        s = Sampler(**kw)
        print(f"| {name} | {gpu_ms(lambda: s(logits, seeds, steps)):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=152064)
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    print(torch.ops.aten._flash_attention_forward.default._schema)
    s = args.slots
    g = torch.Generator().manual_seed(0)
    decode(s, 512, torch.full((s,), 300))  # the 512 x (256 -> 64) workload: every slot alike
    decode(s, 768, torch.randint(257, 768, (s,), generator=g))  # mixed lengths, max 512
    decode(s, 4352, (256 + torch.distributions.LogNormal(6.4, 0.8).sample((s,)).clamp(1, 4096)).int())
    sampler(s, args.vocab)


if __name__ == "__main__":
    main()
