"""Attention for `generate`'s whole batches (one-token queries: SDPA reading each KV head once; else SDPA) and packed
attention for vision towers (one SDPA call per image size instead of one per image or window). The continuous
engine's own attention is `slot_cache.py`'s."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from evalfleet.backends.transformers.slot_cache import SLOT_ATTENTION

ATTENTION = "evalfleet_sdpa"
"""Name of the attention implementation registered with transformers."""
VISION_ATTENTION = "evalfleet_flash_packed"
"""Packed attention for vision towers. The name holds "flash" so that transformers' vision attention (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, GLM-4V) passes all images' patches in one call with their boundaries (`cu_seqlens`), as
for flash-attn's varlen kernel, instead of calling SDPA once per image or window: with SDPA, a batch of 256
448x448 images on Qwen2.5-VL is ~120k attention calls per forward, each a few kernel launches."""


def grouped_decode_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """One-token queries (the decode steps of `generate`): SDPA's grouped-query mode with the mask; anything else:
    transformers' SDPA.

    transformers' SDPA path, given a padding mask, copies the keys and values once per query group (`repeat_kv`,
    7x for Qwen2.5-7B) in every layer. For decode steps `enable_gqa` reads each KV head once: on an H100, batch
    512, 384 slots, 0.15 ms a layer, against 0.28 ms for two matmuls around an fp32 softmax
    (`bench/probes/decode_attention.py`).
    """
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    mask = None if attention_mask is None else attention_mask[:, :, -1:, : key.shape[2]]  # [B, 1, 1, L]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None  # [B, 1, H, D], as SDPA returns


def packed_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None, is_causal: bool = False, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each of the packed sequences of `query` [1, H, N, D] (boundaries `cu_seq_lens_q`):
    the sequences of one length are stacked into a batch, one SDPA call per distinct length."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    heads, total, dim = query.shape[1:]
    starts_by_length: dict[int, list[int]] = {}
    for start, end in pairwise(cu_seq_lens_q.tolist()):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    out = torch.empty_like(query[0])  # [H, N, D]
    for length, starts in starts_by_length.items():
        n = len(starts)
        if n * length == total:  # one length only: the sequences are consecutive views, nothing to gather
            q, k, v = (t[0].view(heads, n, length, dim).transpose(0, 1) for t in (query, key, value))
            o = F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=is_causal)  # [n, H, length, D]
            out = o.transpose(0, 1).reshape(heads, total, dim)
            break
        index = (torch.tensor(starts, device=query.device)[:, None] + torch.arange(length, device=query.device)).flatten()
        q, k, v = (t[0][:, index].view(heads, n, length, dim).transpose(0, 1) for t in (query, key, value))
        o = F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=is_causal)
        out[:, index] = o.transpose(0, 1).reshape(heads, n * length, dim)
    return out.transpose(0, 1)[None], None  # [1, N, H, D], as flash attention returns


AttentionInterface.register(ATTENTION, grouped_decode_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
AttentionInterface.register(VISION_ATTENTION, packed_attention)


def use_decode_attention(model: Any) -> None:
    """Switch a model that uses SDPA (and its sub-models) to the attention above."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(ATTENTION)


def use_packed_vision_attention(model: Any) -> int:
    """Switch the vision tower of a VLM from SDPA to packed attention; returns how many configs changed.

    Sub-models get copies of their configs, so every module's config is looked at, not only `vision_config`."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and type(c).__name__.endswith("VisionConfig")
               and c._attn_implementation in ("sdpa", ATTENTION, SLOT_ATTENTION)}
    for c in configs.values():
        c._attn_implementation = VISION_ATTENTION
    return len(configs)
