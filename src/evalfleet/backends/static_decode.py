"""Greedy decoding with a preallocated KV cache reused across batches; on CUDA each decode step is
one replay of a captured CUDA graph.

Why: `generate` spends ~70 ms of per-step overhead on a 7B model where the arithmetic takes ~10 ms
(`shared/BASELINES.md`), and compiling it costs ~60 s per worker. Here every decode step has the same
shapes — token [B, 1], positions [B, 1], mask [B, 1, 1, L], cache [B, heads, L, dim] — so the eager
forward is captured once (milliseconds, no compiler) and replayed; the host syncs with the GPU only
every `SYNC_EVERY` steps to see whether all rows reached EOS.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from transformers import StaticCache

from evalfleet.backends.attention import ATTENTION, prompt_boundaries

log = logging.getLogger("evalfleet")

SYNC_EVERY = 8
"""Decode steps between checks of whether every row has finished."""
LENGTH_QUANTUM = 16
"""Cache lengths are rounded up to this, so prompt-length changes rarely need a new cache. Not more: a decode step
attends over every slot (64 made the benchmark's 322 slots 384: +19% attention per step)."""


class _StepGraph:
    """One decode step (forward, argmax, finished rows -> pad) captured as a CUDA graph.

    Inputs are copied into static buffers before each replay; the 4D boolean mask is passed as is, so
    transformers builds no mask inside the graph (its mask helpers may sync with the host). The warm-up
    and the capture run on the first step's inputs (real ones, or dummies at load: `StaticDecoder.warm_up`): they
    write that step's keys and values into its own cache slot, which the first replay writes again.
    """

    def __init__(self, model: Any, cache_kw: str, cache: StaticCache, batch: int, length: int, pad_id: int,
                 first: tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]) -> None:
        dev = model.device
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=dev)
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self._load(*first)

        def step() -> torch.Tensor:
            logits = model(input_ids=self.token, attention_mask=self.mask, position_ids=self.pos,
                           cache_position=self.slot, use_cache=True, **{cache_kw: cache}).logits
            return torch.where(self.done, pad_id, logits[:, -1].argmax(-1))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (lazy inits, cuBLAS handles)
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = step()
        set_length(cache, first[2])  # the warm-up steps advanced it; the first replay writes this slot

    def _load(self, token: torch.Tensor, pos: torch.Tensor, slot: int, mask: torch.Tensor, done: torch.Tensor) -> None:
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.slot.fill_(slot)
        self.mask.copy_(mask[:, None, None, :])
        self.done.copy_(done)

    def __call__(self, token: torch.Tensor, pos: torch.Tensor, slot: int, mask: torch.Tensor,
                 done: torch.Tensor) -> torch.Tensor:
        self._load(token, pos, slot, mask, done)
        self.graph.replay()
        return self.out.clone()


def set_length(cache: StaticCache, n: int) -> None:
    """Make `n` the next slot written. Newer transformers keep the write position in each static layer (a
    tensor advanced by every update, inside the CUDA graph too) rather than taking `cache_position`."""
    for layer in cache.layers:
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
            layer.cumulative_length.fill_(n)


class StaticDecoder:
    """Batched greedy decoding for a causal LM: the tokens of `generate(do_sample=False)` with the same attention
    kernels (tests, CPU fp32); on CUDA the prompt's flash attention rounds differently from SDPA in bf16."""

    def __init__(self, model: Any, *, cuda_graphs: bool) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in newer transformers
        ours = model.config._attn_implementation == ATTENTION
        self.use_graphs = cuda_graphs and ours
        # evalfleet's attention takes the prompt's boundaries (flash attention) and the cache's sink through the
        # forward's kwargs: the prompt's keys and values go straight into the static cache, with no dynamic cache
        self.sink = ours and any(p.kind is p.VAR_KEYWORD for p in params.values())
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.flash = (model.device.type == "cuda" and torch.cuda.get_device_capability(model.device)[0] >= 8
                      and head_dim <= 256)  # flash attention's limits (Ampere or newer)
        self.graph: _StepGraph | None = None
        self.cache: StaticCache | None = None
        self.shape = (0, 0)  # (batch, cache length) of self.cache

    def _cache_for(self, batch: int, length: int) -> StaticCache:
        if self.cache is not None and batch == self.shape[0] and length <= self.shape[1]:
            self.cache.reset()  # in place: the captured graph keeps pointing at the same tensors
            return self.cache
        length = -(-max(length, self.shape[1]) // LENGTH_QUANTUM) * LENGTH_QUANTUM
        self.cache = self.graph = None  # free the old ones first
        self.cache = StaticCache(config=self.model.config, max_cache_len=length)
        self.shape = (batch, length)
        return self.cache

    def _step(self, token: torch.Tensor, pos: torch.Tensor, slot: int, mask: torch.Tensor, done: torch.Tensor,
              pad_id: int) -> torch.Tensor:
        if self.use_graphs and self.graph is None:
            try:
                self.graph = _StepGraph(self.model, self.cache_kw, self.cache, *self.shape, pad_id,
                                        (token, pos, slot, mask, done))
            except Exception as err:  # an op that cannot be captured: decode eagerly from now on
                log.warning("CUDA graph capture failed (%s: %s); decoding without graphs", type(err).__name__, err)
                self.use_graphs = False
                set_length(self.cache, slot)  # the warm-up steps may have advanced it
        if self.graph is not None:
            return self.graph(token, pos, slot, mask, done)
        logits = self.model(input_ids=token, attention_mask=mask, position_ids=pos, use_cache=True,
                            cache_position=torch.tensor([slot], device=mask.device), **{self.cache_kw: self.cache}).logits
        return torch.where(done, pad_id, logits[:, -1].argmax(-1))

    def _prefill(self, cache: StaticCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """The prompt's forward, attending over its T tokens rather than the cache's L slots; its keys and
        values end in slots [0, T) of `cache`. Returns the last position's logits."""
        prompt_len = input_ids.shape[1]
        if not self.sink:  # another attention: a dynamic cache for the prompt, then copied
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=True, logits_to_keep=1)
            slots = {"cache_position": torch.arange(prompt_len, device=input_ids.device)}
            for i, layer in enumerate(out.past_key_values.layers):
                cache.update(layer.keys, layer.values, i, slots)
            return out.logits

        stored: set[int] = set()

        def store(layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
            layer = cache.layers[layer_idx]
            if not layer.is_initialized:  # allocates the layer's tensors (an update of no tokens)
                cache.update(key[:, :, :0], value[:, :, :0], layer_idx, {"cache_position": key.new_zeros(0, dtype=torch.long)})
            layer.keys[:, :, :prompt_len].copy_(key)  # a plain strided copy: index_copy_ was ~10x slower here
            layer.values[:, :, :prompt_len].copy_(value)
            stored.add(layer_idx)

        extra = prompt_boundaries(attention_mask) if self.flash else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            use_cache=False, logits_to_keep=1, kv_sink=store, **extra).logits
        if len(stored) != len(cache.layers):  # a module of this model did not pass the sink on: copy instead
            log.warning("%d of %d layers stored their keys and values; prompts now go through a dynamic cache",
                        len(stored), len(cache.layers))
            self.sink = False
            return self._prefill(cache, input_ids, attention_mask, positions)
        set_length(cache, prompt_len)
        return logits

    @torch.inference_mode()
    def warm_up(self, rows: int, prompt_len: int, max_new_tokens: int, pad_id: int) -> None:
        """Allocate the cache and capture the decode step for batches of `rows` prompts of `prompt_len` tokens
        (at load, before the worker reports ready, rather than in the first batch); nothing without CUDA graphs."""
        if not self.use_graphs:
            return
        cache = self._cache_for(rows, prompt_len + max_new_tokens)
        device = self.model.device
        mask = torch.zeros(rows, self.shape[1], dtype=torch.long, device=device)
        mask[:, : prompt_len + 1] = 1
        token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        pos = torch.full((rows, 1), prompt_len, dtype=torch.long, device=device)
        set_length(cache, prompt_len)
        self._step(token, pos, prompt_len, mask, torch.zeros(rows, dtype=torch.bool, device=device), pad_id)

    @torch.inference_mode()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, eos_ids: set[int],
        pad_id: int,
    ) -> torch.Tensor:
        """New tokens [rows, max_new_tokens] for left-padded `input_ids` [rows, T]; after EOS, `pad_id`.

        A batch with more than half the rows of the current cache is padded up to it (repeating its
        first row, dropped from the result), so the short last batch of a dataset reuses the cache and
        the graph; a batch of half or fewer (e.g. after an out-of-memory halving) gets its own.
        """
        rows, prompt_len = input_ids.shape
        batch = self.shape[0] if self.shape[0] // 2 < rows <= self.shape[0] else rows
        if batch > rows:
            input_ids = torch.cat([input_ids, input_ids[:1].expand(batch - rows, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[:1].expand(batch - rows, -1)])
        device = input_ids.device
        cache = self._cache_for(batch, prompt_len + max_new_tokens)
        mask = torch.zeros(batch, self.shape[1], dtype=attention_mask.dtype, device=device)  # [B, L]
        mask[:, :prompt_len] = attention_mask
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T], as generate derives them
        logits = self._prefill(cache, input_ids, attention_mask, positions)  # [B, 1, vocab]
        token = logits[:, -1].argmax(-1)  # [B]
        eos = torch.tensor(sorted(eos_ids) or [-1], device=device)
        done = torch.isin(token, eos)
        out = [token]
        pos = positions[:, -1:]  # [B, 1]
        for step in range(1, max_new_tokens):
            if step % SYNC_EVERY == 0 and bool(done.all()):
                break
            slot = prompt_len + step - 1  # cache slot of the token being fed
            mask[:, slot] = 1
            pos = pos + 1
            token = self._step(token[:, None], pos, slot, mask, done, pad_id)
            done |= torch.isin(token, eos)
            out.append(token)
        new = torch.stack(out, dim=1)[:rows]  # [rows, steps]
        if new.shape[1] < max_new_tokens:
            new = torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=pad_id)
        return new
