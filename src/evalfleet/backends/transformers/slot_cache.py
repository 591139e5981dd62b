"""The continuous engine's KV cache and attention: S slots of L positions per layer, each slot one request's.

A forward of the engine is either a prefill (new prompts packed into one row of N tokens, no padding) or a decode
step (one token per slot). Either way each token's keys and values are written at `slot * L + position` of the
flattened cache [S * L, KV heads, D]; a decode query then attends over its slot's first `positions + 1` keys only
(flash attention's `seqused_k`: a slot costs what it holds, not L), a prompt token over its own prompt (flash
attention over the prompts' boundaries). Off CUDA, or in fp32, SDPA with the equivalent masks does the same.

The model's attention implementation is switched to `SLOT_ATTENTION`, which transformers builds no mask for; the
pass (`Pass`) reaches each layer through the forward's keyword arguments (`slot_pass=`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SLOT_ATTENTION = "evalfleet_slots"
GROW_MARGIN = 1.1
"""The device's free memory a cache's growth needs, as a multiple of what it allocates (fragmentation)."""
FLASH_DECODE_FROM = 1024
"""Slot lengths above which decode steps use flash attention over each slot's used keys; up to it, SDPA's grouped
mode over whole slots with a mask is faster (`bench/probes/slot_kernels.py`: 256 slots of 768 holding 514 on average,
0.110 ms a layer against 0.145; of 4,352 holding 1,040, 0.52 ms against 0.32)."""


def text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def flash_ok(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Flash attention's limits: an Ampere or newer GPU, half precision, head dim up to 256."""
    return (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim <= 256
            and torch.cuda.get_device_capability(device)[0] >= 8)


class SlotCache:
    """Keys and values of every layer, [S * L, KV heads, head dim] each."""

    def __init__(self, config: Any, slots: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        config = text_config(config)
        heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.slots, self.length = slots, length
        shape = (slots * length, kv_heads, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.flash = flash_ok(device, dtype, self.head_dim)
        self.cu_steps = torch.arange(slots + 1, device=device, dtype=torch.int32)
        self._index(length)

    def _index(self, length: int) -> None:
        """What depends on the slots' length: where each slot begins, and the decode attention's kernel."""
        self.length = length
        device = self.cu_steps.device
        self.decode_flash = self.flash and length > FLASH_DECODE_FROM
        self.base = torch.arange(self.slots, device=device) * length  # [S] first cache index of each slot
        self.cu_slots = (torch.arange(self.slots + 1, device=device) * length).to(torch.int32)

    def can_grow(self, length: int) -> bool:
        """Whether `grow(length)` fits beside what the device holds now: every layer's new positions and one layer's
        copy at a time, with a margin (the CPU: always)."""
        device = self.cu_steps.device
        if device.type != "cuda":
            return True
        layer = self.keys[0]
        per_position = layer[0].numel() * layer.element_size() * self.slots  # one position of every slot, one tensor
        need = 2 * len(self.keys) * (length - self.length) * per_position + layer.numel() * layer.element_size()
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return need * GROW_MARGIN <= free + cached

    def grow(self, length: int) -> None:
        """Slots of `length` positions, each keeping the keys and values it holds; one layer at a time, so that the
        device holds at most one layer twice."""
        for tensors in (self.keys, self.values):
            for i, old in enumerate(tensors):
                new = old.new_zeros((self.slots * length, *old.shape[1:]))
                new.view(self.slots, length, *old.shape[1:])[:, : self.length].copy_(
                    old.view(self.slots, self.length, *old.shape[1:]))
                tensors[i] = new
            del old, new
        self._index(length)

    def decode(self, pos: torch.Tensor) -> Pass:
        """A decode step of the first w = len(pos) slots: slot s's token is at position pos[s] (its keys and values
        are written there)."""
        w = len(pos)
        used = (pos + 1).to(torch.int32)
        mask = None
        if not self.decode_flash:
            mask = (torch.arange(self.length, device=pos.device) < used[:, None].long())[:, None, None]  # [w,1,1,L]
        return Pass(self, self.base[:w] + pos, self.cu_steps[: w + 1], 1, used, mask, pos)

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Slots `dst` take the keys and values of slots `src`, in every layer."""
        for cache in (*self.keys, *self.values):
            slots = cache.view(self.slots, self.length, *cache.shape[1:])
            slots.index_copy_(0, dst, slots.index_select(0, src))

    def copy(self, src: list[int], dst: list[int], counts: list[int]) -> None:
        """Slot dst[i] takes the first counts[i] keys and values of slot src[i], in every layer (a shared prefix,
        `prefix.py`). Everything is read before anything is written: a source may be another copy's destination."""
        dev = self.base.device
        n = torch.tensor(counts, device=dev)
        offset = torch.arange(int(n.sum()), device=dev) - torch.repeat_interleave(F.pad(n.cumsum(0), (1, 0))[:-1], n)
        read = torch.repeat_interleave(self.base[torch.tensor(src, device=dev)], n) + offset
        write = torch.repeat_interleave(self.base[torch.tensor(dst, device=dev)], n) + offset
        for cache in (*self.keys, *self.values):
            cache.index_copy_(0, write, cache.index_select(0, read))

    def prefill(self, slots: list[int], lengths: list[int], past: list[int] | None = None) -> Pass:
        """New prompts for `slots`, their tokens packed in this order; `past`: how many of each slot's first
        positions already hold its prompt's keys and values (a copied prefix): those tokens are not in the pass,
        and the others attend over them too."""
        if past is not None and any(past):
            return self._prefill_after(slots, lengths, past)
        dev = self.base.device
        lens = torch.tensor(lengths, device=dev)
        cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        pos = torch.arange(int(lens.sum()), device=dev) - torch.repeat_interleave(cu[:-1].long(), lens)
        write = torch.repeat_interleave(self.base[torch.tensor(slots, device=dev)], lens) + pos
        mask = None
        if not self.flash:
            seq = torch.repeat_interleave(torch.arange(len(lengths), device=dev), lens)
            flat = torch.arange(len(pos), device=dev)
            mask = ((seq[:, None] == seq[None]) & (flat[None] <= flat[:, None]))[None, None]  # [1, 1, N, N]: causal
            # within each prompt
        return Pass(self, write, cu, max(lengths), None, mask, pos)

    def _prefill_after(self, slots: list[int], lengths: list[int], past: list[int]) -> Pass:
        """A prefill whose prompts continue copied prefixes: each token attends over its slot's first positions up
        to its own (read back from the cache, packed: `Pass.gather`)."""
        dev = self.base.device
        lens, held = torch.tensor(lengths, device=dev), torch.tensor(past, device=dev)
        total = lens + held
        cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        cu_k = F.pad(total.cumsum(0), (1, 0)).to(torch.int32)
        base = self.base[torch.tensor(slots, device=dev)]
        pos = (torch.arange(int(lens.sum()), device=dev) - torch.repeat_interleave(cu[:-1].long(), lens)
               + torch.repeat_interleave(held, lens))
        key_pos = torch.arange(int(total.sum()), device=dev) - torch.repeat_interleave(cu_k[:-1].long(), total)
        mask = None
        if not self.flash:
            seq_q = torch.repeat_interleave(torch.arange(len(lengths), device=dev), lens)
            seq_k = torch.repeat_interleave(torch.arange(len(lengths), device=dev), total)
            mask = (seq_q[:, None] == seq_k[None]) & (key_pos[None] <= pos[:, None])  # [N, Nk]
        return Pass(self, torch.repeat_interleave(base, lens) + pos, cu, max(lengths), None, mask, pos,
                    gather=torch.repeat_interleave(base, total) + key_pos, cu_k=cu_k, max_k=int(total.max()),
                    key_positions=key_pos)


@dataclass
class Pass:
    """What one forward's attention layers need. Decode: `used` keys per slot; prefill: `used` None."""

    cache: SlotCache
    write: torch.Tensor
    """[N] cache index of each token's keys and values."""
    cu_q: torch.Tensor
    """[n + 1] int32 boundaries of the queries of each sequence."""
    max_q: int
    used: torch.Tensor | None
    mask: torch.Tensor | None
    """The SDPA mask when flash attention does not apply."""
    positions: torch.Tensor
    """[N] position of each token within its sequence (sliding windows)."""
    gather: torch.Tensor | None = None
    """A prefill after copied prefixes: [Nk] cache index of every key its tokens attend over, packed by sequence
    (boundaries `cu_k`, positions `key_positions`)."""
    cu_k: torch.Tensor | None = None
    max_k: int = 0
    key_positions: torch.Tensor | None = None

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
               window: int | None) -> torch.Tensor:
        """query [B, H, T, D], key/value [B, Hk, T, D] (B = slots and T = 1, or B = 1 and T = the packed tokens)
        -> [B, T, H, D]."""
        c = self.cache
        keys, values = c.keys[layer], c.values[layer]
        decode = self.used is not None
        if decode:
            q, k, v = query[:, :, 0], key[:, :, 0], value[:, :, 0]  # [S, H, D], [S, Hk, D]
        else:
            q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [N, H, D], [N, Hk, D]
        keys.index_copy_(0, self.write, k)
        values.index_copy_(0, self.write, v)
        left, right = (None, None) if window is None else (window - 1, 0)
        if decode and c.decode_flash:
            out = torch.ops.aten._flash_attention_forward(
                q, keys, values, self.cu_q, c.cu_slots[: len(q) + 1], 1, c.length, 0.0, False, False, scale=scaling,
                window_size_left=left, window_size_right=right, seqused_k=self.used)[0]
            return out[:, None]
        if self.gather is not None:
            return self._attend_after(keys, values, query, q, scaling, window)
        if not decode and c.flash:
            out = torch.ops.aten._flash_attention_forward(
                q, k, v, self.cu_q, self.cu_q, self.max_q, self.max_q, 0.0, True, False, scale=scaling,
                window_size_left=left, window_size_right=right)[0]
            return out[None]
        if decode:
            kk, vv = (x.view(c.slots, c.length, *x.shape[1:])[: len(q)].transpose(1, 2) for x in (keys, values))
            mask = self.mask
            if window is not None:
                mask = mask & (torch.arange(c.length, device=q.device) > self.positions[:, None] - window)[:, None, None]
            out = F.scaled_dot_product_attention(query, kk, vv, attn_mask=mask, scale=scaling, enable_gqa=True)
            return out.transpose(1, 2)  # [S, 1, H, D]
        mask = self.mask
        if window is not None:
            mask = mask & (self.positions[None, None, None] > self.positions[None, None, :, None] - window)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2)

    def _attend_after(self, keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, q: torch.Tensor,
                      scaling: float | None, window: int | None) -> torch.Tensor:
        """Prompt tokens after copied prefixes, over their slots' keys up to their own (the causal mask aligned at
        the end of each sequence: flash attention's rule when keys outnumber queries)."""
        assert self.gather is not None and self.cu_k is not None and self.key_positions is not None
        kk, vv = keys.index_select(0, self.gather), values.index_select(0, self.gather)  # [Nk, Hk, D]
        if self.cache.flash:
            left, right = (None, None) if window is None else (window - 1, 0)
            out = torch.ops.aten._flash_attention_forward(
                q, kk, vv, self.cu_q, self.cu_k, self.max_q, self.max_k, 0.0, True, False, scale=scaling,
                window_size_left=left, window_size_right=right)[0]
            return out[None]
        mask = self.mask
        if window is not None:
            mask = mask & (self.key_positions[None] > self.positions[:, None] - window)
        out = F.scaled_dot_product_attention(query, kk.transpose(0, 1)[None], vv.transpose(0, 1)[None],
                                             attn_mask=mask[None, None], scale=scaling, enable_gqa=True)
        return out.transpose(1, 2)  # [1, N, H, D]


def slot_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   slot_pass: Pass | None = None, sliding_window: int | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The engine's forwards go through `slot_pass`; any other forward (a warm-up without padding) through SDPA."""
    if slot_pass is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    return slot_pass.attend(module.layer_idx, query, key, value, scaling, sliding_window), None


AttentionInterface.register(SLOT_ATTENTION, slot_attention)
