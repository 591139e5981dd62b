"""The expert layers of a Qwen3-30B-A3B-shaped MoE (issue 19, item 3: profile them, fix what is slow), one GPU.

  experts   one sparse block's 128 experts (hidden 2048, expert intermediate 768, 8 per token; Qwen3-VL-30B-A3B's
            text layers are the same), routed by its own random router, at the token counts the engine meets:
            decode widths (8-256 slots) and prefill chunks. Each transformers experts backend (`grouped_mm`,
            `batched_mm` where its copied weights fit, `eager`), the two `grouped_mm` GEMMs alone on tokens
            already sorted by expert (the floor of that backend: the rest is its routing glue), and evalfleet's
            forward (`backends/transformers/kernels/experts.py`, the same GEMMs with less glue). CUDA graphs where
            the backend can be captured (as in the engine), --layers blocks in turn so no weights stay in L2.
  step      (--step) the captured decode step of a 48-layer Qwen3-30B-A3B-shaped text model on the continuous
            engine at each width, beside 48 x the experts' time: the experts' share of a step.

Columns: ms per layer; experts touched; weight bytes read per second (an H200 peaks at 4.8 TB/s); TFLOP/s.

    PYTHONPATH=src python bench/moe_experts.py [--layers 4] [--step] [--shape 30b-a3b|tiny] [--work DIR]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch
from continuous import width_table
from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from evalfleet.backends.transformers.kernels.experts import LAYOUT, experts_forward, supports

GPU = torch.cuda.is_available()
DEV, DTYPE = ("cuda", torch.bfloat16) if GPU else ("cpu", torch.float32)
SHAPES = {  # hidden, layers, heads, kv heads, head dim, experts, per token, expert intermediate (Qwen3-30B-A3B)
    "30b-a3b": (2048, 48, 32, 4, 128, 128, 8, 768),
    "tiny": (64, 2, 2, 1, 32, 8, 2, 32),
}
TOKENS = (8, 32, 64, 128, 256, 1024, 4096, 16384)


def config(shape: str, layers: int | None = None) -> Qwen3MoeConfig:
    hidden, n, heads, kv, head_dim, experts, k, inter = SHAPES[shape]
    cfg = Qwen3MoeConfig(hidden_size=hidden, intermediate_size=6144, num_hidden_layers=layers or n,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, num_experts=experts,
                         num_experts_per_tok=k, moe_intermediate_size=inter, decoder_sparse_step=1,
                         vocab_size=151936, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    cfg._experts_implementation = "grouped_mm"
    return cfg


def timed(fn, reps: int, graph: bool) -> float | None:
    """Seconds a call of `fn`, replayed as a CUDA graph where `graph` (None if it cannot be captured)."""
    fn()
    fn()
    sync()
    if graph and GPU:
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                fn()
        except RuntimeError:
            return None
        fn = g.replay
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def call_all(calls: list) -> None:
    for call in calls:
        call()


def sync() -> None:
    torch.cuda.synchronize() if GPU else None


def gemms_only(expert, x: torch.Tensor, idx: torch.Tensor):
    """The backend's two grouped GEMMs on rows already sorted by expert, with their offsets: nothing else."""
    order = torch.sort(idx.reshape(-1)).indices
    rows = x[order // idx.shape[1]].contiguous()
    counts = torch.bincount(idx.reshape(-1), minlength=expert.num_experts)
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    mm = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
    up, down = expert.gate_up_proj.transpose(-2, -1), expert.down_proj.transpose(-2, -1)
    half = torch.empty(rows.shape[0], expert.intermediate_dim, device=x.device, dtype=x.dtype)
    return lambda: mm(half.copy_(mm(rows, up, offs=offs)[:, : expert.intermediate_dim]), down, offs=offs)


def experts_table(shape: str, n_layers: int, reps: int) -> dict[int, float]:
    cfg = config(shape)
    torch.manual_seed(0)
    with torch.device(DEV):
        blocks = [Qwen3MoeSparseMoeBlock(cfg).to(DTYPE) for _ in range(n_layers)]
    for b in blocks:
        for p in b.parameters():
            torch.nn.init.normal_(p, std=0.02)
            p.requires_grad_(False)
    hidden, inter, k = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts_per_tok
    per_expert = 3 * hidden * inter * blocks[0].experts.gate_up_proj.element_size()
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, Qwen3-MoE {shape}-shaped sparse block: {cfg.num_experts}"
          f" experts of {per_expert / 1e6:.1f} MB, {k} per token; {n_layers} blocks in turn, {DTYPE}\n")
    e = blocks[0].experts
    marks = {name: getattr(e, name, "unmarked") for name in LAYOUT}
    print(f"transformers' marks of the experts module: {marks}; evalfleet's forward applies: {supports(e)}\n")
    print("| tokens | backend | ms a layer | experts touched | weights GB/s | TFLOP/s |\n|---|---|---|---|---|---|")
    grouped: dict[int, float] = {}
    with torch.inference_mode():
        for t in TOKENS if GPU else TOKENS[:3]:
            x = torch.randn(t, hidden, device=DEV, dtype=DTYPE)
            routes = [b.gate(x)[1:] for b in blocks]
            touched = sum(int(torch.unique(idx).numel()) for _, idx in routes) / n_layers
            flop = 2 * t * k * 3 * hidden * inter
            cases = [(name, True) for name in ("grouped_mm", "batched_mm") if name == "grouped_mm" or
                     t * k * per_expert < 8e9] + [("eager", False), ("grouped GEMMs alone", True), ("evalfleet", True)]
            layers = [(b.experts, x, idx, w) for b, (w, idx) in zip(blocks, routes)]
            for name, graph in cases:
                if name == "evalfleet":
                    calls = [partial(experts_forward, *layer) for layer in layers]
                elif name == "grouped GEMMs alone":
                    calls = [gemms_only(e, x, idx) for e, x, idx, _ in layers]
                else:
                    cfg._experts_implementation = name
                    calls = [partial(e, x, idx, w) for e, x, idx, w in layers]
                s = timed(partial(call_all, calls), reps if name != "eager" else max(2, reps // 5), graph)
                cfg._experts_implementation = "grouped_mm"
                if s is None:
                    print(f"| {t} | {name} | not capturable | | | |")
                    continue
                ms = s / n_layers * 1e3
                grouped.setdefault(t, ms) if name == "evalfleet" else None
                print(f"| {t} | {name} | {ms:.3f} | {touched:.0f} | {touched * per_expert / (ms / 1e3) / 1e9:,.0f} | "
                      f"{flop / (ms / 1e3) / 1e12:.1f} |")
    blocks.clear()
    torch.cuda.empty_cache() if GPU else None
    return grouped


def step_table(shape: str, work: Path, grouped: dict[int, float], slots: int, steps: int) -> None:
    """The continuous engine's captured decode step on a Qwen3-MoE text model built in memory, at each width."""
    from models import tiny_vlm

    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.backends.transformers.engine import ContinuousEngine
    from evalfleet.backends.transformers.sampling import Sampler
    from evalfleet.config import ModelConfig

    cfg = config(shape)
    folder = work / f"qwen3-moe-{shape}-config"
    cfg.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_vlm(work)).save_pretrained(folder)
    t0 = time.perf_counter()
    with torch.device(DEV):
        model = Qwen3MoeForCausalLM._from_config(cfg, dtype=DTYPE)
    model.eval()
    built = time.perf_counter() - t0
    b = TransformersBackend(ModelConfig(path=str(folder), engine="continuous"), n_gpus=int(GPU))
    b.use_model(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 100000, (slots, 256), generator=g).tolist()
    engine = ContinuousEngine(model, slots=slots, length=256 + 64, max_new_tokens=64, eos_ids=set(),
                              sampler=Sampler(), cuda_graphs=GPU)
    print(f"\n{cfg.num_hidden_layers}-layer Qwen3-MoE {shape}-shaped text model, built in memory in {built:.0f} s; "
          f"experts: {model.config._experts_implementation}; {slots} slots of prompts of 256 tokens\n")
    widths = width_table(engine, ids, steps)
    print("\n| width | ms a step | experts (evalfleet) x layers, ms | experts' share |\n|---|---|---|---|")
    for w, ms in widths.items():
        if w in grouped:
            e = grouped[w] * cfg.num_hidden_layers
            print(f"| {w} | {ms:.2f} | {e:.2f} | {e / ms:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="30b-a3b" if GPU else "tiny")
    ap.add_argument("--layers", type=int, default=4, help="sparse blocks timed in turn")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--step", action="store_true", help="also the whole decode step of a 48-layer text model")
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    grouped = experts_table(args.shape, args.layers, args.reps)
    if args.step:
        step_table(args.shape, args.work, grouped, args.slots, args.steps)


if __name__ == "__main__":
    main()
