"""Mixture-of-experts layers: evalfleet's forward for transformers' experts modules (Qwen3-MoE, Qwen3-VL-MoE and the
others that store gated experts as 3-D `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I] tensors), registered in
transformers' `ExpertsInterface` as "evalfleet" and switched in by the backend.

Its two grouped GEMMs are those of transformers' `grouped_mm` backend, on the same rows in the same order, and the
rest is the same arithmetic, so the outputs are that backend's, bit for bit. What differs is the glue around the
GEMMs, which `bench/moe_experts.py` found to be 23 % of a Qwen3-30B-A3B-shaped layer at 256 tokens (a decode step)
and 58-63 % at 4,096-16,384 (a prefill) on an H200: rows are gathered once with `index_select` and put back in
token order with `index_copy_` of the sort's permutation, instead of gathering the routing weights, building the
inverse permutation and gathering through it. (Compiling the activation and the weighted sum with torch.compile
made the layer slower there, so they stay eager.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

NAME = "evalfleet"


def _grouped_mm() -> Callable[..., torch.Tensor] | None:
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def experts_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """`self`: a transformers experts module with gated, concatenated, untransposed weights and no biases
    (`supports`): gate_up_proj [E, 2I, H], down_proj [E, H, I]."""
    tokens, hidden = hidden_states.shape
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    expert_of_row, order = torch.sort(flat)
    # histc, not bincount: no host sync, so the step can be captured as a CUDA graph (ints on CUDA, floats on CPU)
    counts = torch.histc(expert_of_row.int() if flat.is_cuda else expert_of_row.float(), bins=self.num_experts,
                         min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    mm = _grouped_mm()
    rows = hidden_states.index_select(0, order // k)
    out = mm(rows, self.gate_up_proj.transpose(-2, -1), offs=offsets)
    gate, up = out.chunk(2, dim=-1)
    out = mm(self.act_fn(gate) * up, self.down_proj.transpose(-2, -1), offs=offsets)
    back = torch.empty_like(out).index_copy_(0, order, out)  # token order: row t * k + j is token t's j-th expert
    return (back.view(tokens, k, hidden) * top_k_weights.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)


LAYOUT = {"has_gate": True, "is_concatenated": True, "is_transposed": False, "has_bias": False,
          "has_post_expert_norm": False, "_is_expert_parallel": False}
"""The experts layout this forward computes, as transformers' `use_experts_implementation` marks its modules; a
transformers version that does not mark one of these knows only this value of it."""


def supports(module: Any) -> bool:
    """Whether `module` is a transformers experts module of `LAYOUT` (gate_up_proj [E, 2I, H], down_proj [E, H, I],
    the default gate), which this forward computes exactly as the `grouped_mm` backend, with grouped GEMMs for its
    weights (on a GPU: bf16, compute capability 8.0 or later)."""
    up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if (_grouped_mm() is None or not isinstance(up, torch.Tensor) or not isinstance(down, torch.Tensor)
            or not hasattr(module, "config") or not callable(getattr(module, "act_fn", None))):
        return False
    if up.is_cuda and (up.dtype != torch.bfloat16 or torch.cuda.get_device_capability(up.device) < (8, 0)):
        return False
    gate = getattr(type(module), "_apply_gate", None)
    return (all(getattr(module, name, value) == value for name, value in LAYOUT.items())
            and (gate is None or gate.__name__ == "_default_apply_gate")
            and up.dim() == down.dim() == 3 and up.shape[0] == down.shape[0] == getattr(module, "num_experts", -1)
            and up.shape[1] == 2 * down.shape[2] and up.shape[2] == down.shape[1])


def use(model: Any) -> int:
    """Run the experts modules of `model` through `experts_forward` where every experts module that shares their
    config (which names the forward) `supports` it; how many were switched."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:  # a transformers without the experts interface: its own forward stays
        return 0
    by_config: dict[int, list[Any]] = {}
    for m in model.modules():
        if isinstance(getattr(m, "down_proj", None), torch.Tensor) and hasattr(m, "config"):
            by_config.setdefault(id(m.config), []).append(m)
    switched = [group for group in by_config.values() if all(map(supports, group))]
    if switched:
        ALL_EXPERTS_FUNCTIONS.register(NAME, experts_forward)
    for group in switched:
        group[0].config._experts_implementation = NAME
    return sum(map(len, switched))
