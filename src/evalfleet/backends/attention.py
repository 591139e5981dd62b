"""Attention for decoding: SDPA, except one-token queries, which read each KV head once."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "evalfleet_sdpa"
"""Name of the attention implementation registered with transformers."""


def grouped_decode_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA, except for one-token queries (decode steps): there, two batched matmuls over the KV heads.

    SDPA with a padding mask and grouped-query attention copies the whole KV cache once per query group
    (`repeat_kv`, 7x for Qwen2.5-7B) at every step and then runs a kernel made for long queries; reading
    the cache once per KV head is what a decode step should cost.
    """
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    q = query.view(b, kv_heads, heads // kv_heads, dim)  # [B, KV, G, D]: query head k*G+g reads KV head k
    scores = torch.matmul(q, key.transpose(2, 3)).float() * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:  # [B, 1, 1, L]: boolean (keep) or additive
        mask = attention_mask[:, :, -1:, :length]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # [B, KV, G, D]
    return out.reshape(b, heads, 1, dim).transpose(1, 2).contiguous(), None  # [B, 1, H, D], as SDPA returns


AttentionInterface.register(ATTENTION, grouped_decode_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_decode_attention(model: Any) -> None:
    """Switch a model that uses SDPA (and its sub-models) to the attention above."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(ATTENTION)
