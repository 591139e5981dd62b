"""The fused kernels' maths (backends/transformers/kernels/compiled.py) against transformers' own modules, in eager mode on the CPU: the
GPU compiles exactly these functions, so a wrong formula shows up here, not only on a GPU."""

from __future__ import annotations

import pytest
import torch
from conftest import drain
from tiny_models import VLM_ARCHS, build_tiny_qwen2vl
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama

from evalfleet.backends.transformers.kernels.compiled import rms_norm, rotary_rows, silu_mul
from evalfleet.backends.transformers.kernels.fused import _fused_rotary


def config() -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-5, hidden_act="silu")


def test_rms_norm_equals_transformers_in_fp32_and_bf16():
    torch.manual_seed(0)
    norm = modeling_llama.LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)  # not ones: a formula that drops the weight must fail
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 0.0)):
        x = (torch.randn(3, 7, 64) * 3).to(dtype)
        n = norm.to(dtype)
        ours = rms_norm(x, n.weight, n.variance_epsilon)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, n(x), atol=tol, rtol=tol)


def test_silu_gate_equals_the_mlp_of_transformers():
    torch.manual_seed(0)
    mlp = modeling_llama.LlamaMLP(config())
    x = torch.randn(2, 5, 64)
    ours = mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
    torch.testing.assert_close(ours, mlp(x), atol=1e-6, rtol=1e-6)


def test_rotary_rows_equal_apply_rotary_pos_emb_with_positions_per_row():
    torch.manual_seed(0)
    cfg = config()
    rope = modeling_llama.LlamaRotaryEmbedding(cfg)
    b, t, hq, hk, d = 3, 6, 4, 2, 16
    q_proj = torch.randn(1, t, hq, d).expand(b, t, hq, d).contiguous()  # the same query in every row; memory
    # order [B, T, H, D] as the projections give it, viewed as [B, H, T, D]
    k_proj = torch.randn(b, t, hk, d)
    q, k = q_proj.transpose(1, 2), k_proj.transpose(1, 2)
    positions = torch.stack([torch.arange(t) + offset for offset in (0, 5, 11)])  # left padding: rows differ
    cos, sin = rope(q, positions)
    fused = _fused_rotary(modeling_llama.apply_rotary_pos_emb, rotary_rows)
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    got = fused(q, k, cos, sin)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got[0][0], got[0][1])  # same query, other positions: rotated otherwise
    # Calls it does not handle go to the original.
    assert fused.original is modeling_llama.apply_rotary_pos_emb


def test_vision_rotary_equals_transformers_on_strided_heads_in_bf16():
    """Qwen2-VL's vision rotary (q, k as strided views of one qkv projection, as its attention makes them)."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    from evalfleet.backends.transformers.kernels.compiled import rotary_vision

    torch.manual_seed(0)
    qkv = torch.randn(37, 3, 4, 16).to(torch.bfloat16)  # [N, 3, H, D]
    q, k, _ = qkv.permute(1, 0, 2, 3).unbind(0)
    freqs = torch.randn(37, 8)
    emb = torch.cat((freqs, freqs), dim=-1)
    expected = modeling_qwen2_5_vl.apply_rotary_pos_emb_vision(q, k, emb.cos(), emb.sin())
    ours = rotary_vision(q, k, emb.cos(), emb.sin())
    for a, b in zip(ours, expected):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_a_run_compiles_no_kernel_variant_that_was_not_compiled_ahead(arch, tmp_path, monkeypatch):
    """A fresh replica's first VLM job met 9 kernel variants that were not compiled yet and spent seconds on them
    (bench/probes/first_job.py). Here the kernels go through torch.compile with its eager backend, whose guards, and so
    whose recompiles, are the inductor backend's: after the ahead compile and the load's warm-up, a continuous run
    with slots refilled must compile nothing, and answer as unfused."""
    import sys
    from concurrent.futures import Future

    from conftest import loaded_backend
    from test_continuous_vlm import requests

    from evalfleet.backends.transformers.kernels import compiled as kernels
    from evalfleet.backends.transformers.kernels import fused

    def answers() -> list[tuple[str, int]]:  # 3 slots, refilled as rows end
        return [(g.text, g.n_tokens) for g in drain(b.stream(3, None), b.prepare(requests()))]

    path = build_tiny_qwen2vl(tmp_path / arch, arch=arch)
    b = loaded_backend(path, "continuous", 8)  # on the CPU: transformers' own forwards
    unfused = answers()
    for module in {sys.modules[type(m).__module__] for m in b.model.modules()}:  # patched by an earlier test
        for name in ("apply_rotary_pos_emb", "apply_rotary_pos_emb_vision"):
            if hasattr(fn := getattr(module, name, None), "original"):
                monkeypatch.setattr(module, name, fn.original)
    torch._dynamo.reset()
    try:
        compiled: Future = Future()
        compiled.set_result(kernels._compile(kernels.Shapes.of(b.model.config), torch.float32, "cpu", backend="eager"))
        with torch._dynamo.config.patch(error_on_recompile=True):
            assert fused.fuse_elementwise(b.model, compiled) > 0
            assert answers() == unfused
    finally:
        torch._dynamo.reset()


def test_a_first_compile_on_a_machine_starts_once_the_replica_is_set_up(monkeypatch, tmp_path):
    """A process compiling beside a replica's first forwards slowed them (bench/probes/cold_start.py): on a machine that
    never compiled the kernels, the compiling process waits for the backend's signal (here the process is replaced
    by a recorder: what is tested is when it starts)."""
    import threading

    from evalfleet.backends.transformers.kernels import compiled as kernels

    started = threading.Event()
    monkeypatch.setattr(kernels, "_marker", lambda shapes, dtype: tmp_path / "never-compiled.done")
    monkeypatch.setattr(kernels, "_compile_apart", lambda *args: started.set())
    compiling = kernels.compile_kernels(config(), torch.float32, "cpu")
    assert not compiling.cached
    assert not started.wait(0.5) and not compiling.kernels.done()
    compiling.start.set()
    assert compiling.kernels.result(timeout=30) is None and started.is_set()
