"""evalfleet's MoE experts forward (CPU, fp32, a real Qwen3-MoE sparse block with random weights): the outputs of
transformers' `grouped_mm` backend bit for bit, and of its reference loop within rounding."""

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from evalfleet.backends.transformers.kernels.experts import NAME, experts_forward, supports, use


@pytest.fixture(scope="module")
def block():
    config = Qwen3MoeConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    torch.manual_seed(0)
    b = Qwen3MoeSparseMoeBlock(config).eval()
    for p in b.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return b


@pytest.mark.parametrize("tokens", [1, 3, 37, 256])
def test_the_grouped_backends_outputs(block, tokens):
    """One token touches 2 of the 8 experts (the rest get no rows); 256 touch all of them."""
    assert supports(block.experts)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
    _, weights, index = block.gate(x)
    config = block.experts.config
    with torch.no_grad():
        config._experts_implementation = "grouped_mm"
        grouped = block.experts(x, index, weights)
        config._experts_implementation = "eager"
        loop = block.experts(x, index, weights)
        ours = experts_forward(block.experts, x, index, weights)
    config._experts_implementation = "grouped_mm"
    assert torch.equal(ours, grouped)
    torch.testing.assert_close(ours, loop, rtol=1e-4, atol=1e-4)  # the loop sums in another order
    assert not torch.equal(ours, torch.zeros_like(ours))


def test_only_the_layout_it_computes_is_switched(block):
    """A transformers that does not mark an attribute (5.17: no `has_post_expert_norm`, `_is_expert_parallel`)
    knew only its default; a module marked otherwise, or with weights of another layout, keeps its own forward."""
    experts = block.experts
    saved = {name: experts.__dict__.pop(name) for name in ("has_post_expert_norm", "_is_expert_parallel")}
    try:
        assert supports(experts)
    finally:
        experts.__dict__.update(saved)
    for name, other in (("has_bias", True), ("is_transposed", True), ("has_gate", False)):
        value = getattr(experts, name)
        setattr(experts, name, other)
        try:
            assert not supports(experts), name
        finally:
            setattr(experts, name, value)
    assert supports(experts)


def test_a_config_is_switched_only_if_every_experts_module_under_it_is_supported():
    """The forward is named in the config its experts modules share: one module it cannot compute keeps them all
    on transformers' own."""
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=8,
                            num_experts_per_tok=2, moe_intermediate_size=32)
    model = Qwen3MoeForCausalLM(config)
    before = model.config._experts_implementation
    model.model.layers[1].mlp.experts.has_bias = True
    assert use(model) == 0 and model.config._experts_implementation == before
    model.model.layers[1].mlp.experts.has_bias = False
    assert use(model) == 2 and model.config._experts_implementation == NAME
