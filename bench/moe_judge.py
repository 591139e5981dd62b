"""An MoE VLM judge on the continuous engine against transformers' `generate` in batches of 16 (issue 19), one GPU:
Qwen3-VL-30B-A3B-shaped random weights (48 layers of 128 experts, 8 per token; vision tower as Qwen3-VL's), built
on the GPU (no disk), judging image + answer pairs -> 64 tokens, no EOS.

  generate     --baseline-rows pairs through `model.generate` in batches of 16 (SDPA, transformers' kernels)
  continuous   --rows pairs through the engine (--slots slots: 512, what the plan gives this model on an H200
               since 2026-12-03), evalfleet's kernels, its experts forward
               (`backends/transformers/kernels/experts.py`) and, for comparison, transformers' `grouped_mm` experts

The processor's work is done before either is timed. The issue's target: continuous >= 5 x generate.

    PYTHONPATH=src python bench/moe_judge.py [--rows 1024] [--baseline-rows 128] [--layers 48] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from continuous_vlm import SUBJECTS, continuous, sync
from models import images, tiny_vlm
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from evalfleet.backends import Request
from evalfleet.backends.transformers.backend import TransformersBackend
from evalfleet.config import ModelConfig

GPU = torch.cuda.is_available()
SHAPES = {
    # text: hidden, layers, heads, kv heads, head dim, experts, per token, expert intermediate;
    # vision: depth, hidden, intermediate, heads
    "30b-a3b": ((2048, 48, 32, 4, 128, 128, 8, 768), (27, 1152, 4304, 16)),
    "tiny": ((64, 2, 2, 1, 32, 8, 2, 32), (2, 64, 128, 1)),
}


def folder(work: Path, shape: str, layers: int | None) -> Path:
    """Config, tokenizer (the tests' tiny one) and an image processor keeping 448x448 (196 image tokens)."""
    (hidden, n_layers, heads, kv, head_dim, experts, per_token, inter), (depth, v_hidden, v_inter, v_heads) = \
        SHAPES[shape]
    out = work / f"qwen3-vl-moe-{shape}-{layers or n_layers}"
    tiny = tiny_vlm(work)
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok.get_vocab()
    cfg = Qwen3VLMoeConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=6144, num_hidden_layers=layers or n_layers,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, num_experts=experts,
                         num_experts_per_tok=per_token, moe_intermediate_size=inter, decoder_sparse_step=1,
                         vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                                          "mrope_section": [head_dim * 3 // 16, head_dim * 5 // 32,
                                                            head_dim * 5 // 32]},
                         eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=depth, hidden_size=v_hidden, intermediate_size=v_inter, num_heads=v_heads,
                           out_hidden_size=hidden, patch_size=16, deepstack_visual_indexes=[8, 16, 24][: depth // 9]
                           or [0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    pre.update(patch_size=16, min_pixels=64 * 64, max_pixels=448 * 448,
               size={"shortest_edge": 64 * 64, "longest_edge": 448 * 448})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    shutil.copy(tiny / "chat_template.jinja", out / "chat_template.jinja")
    return out


def requests(paths: list[Path]) -> list[Request]:
    answers = ["red", "a blue circle", "green, I think", "it is yellow and round", "black"]
    return [Request(f"Question: What colour is {SUBJECTS[i % 5]}?\nAnswer: {answers[i % 5]}.\n"
                    "Is the answer correct? Reply yes or no, then explain.", [Image.open(p).convert("RGB")], seed=i)
            for i, p in enumerate(paths)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--baseline-rows", type=int, default=128)
    ap.add_argument("--slots", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None, help="text layers (default: all of the shape's)")
    ap.add_argument("--shape", default="30b-a3b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = folder(args.work, args.shape, args.layers)
    dtype = torch.bfloat16 if GPU else torch.float32
    t0 = time.perf_counter()
    with torch.device("cuda" if GPU else "cpu"):
        model = Qwen3VLMoeForConditionalGeneration._from_config(Qwen3VLMoeConfig.from_pretrained(path), dtype=dtype)
    model.eval()
    built = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters()) / 1e9
    reqs = requests(images(args.work, args.rows))

    b = TransformersBackend(ModelConfig(path=str(path), engine="generate", batch_size=16,
                                        generation={"max_new_tokens": 64}), n_gpus=int(GPU))
    batches = [b.prepare(reqs[i : i + 16]) for i in range(0, args.baseline_rows, 16)]
    pad = b.tokenizer.pad_token_id
    with torch.inference_mode():
        for warm in (True, False):
            sync()
            t0 = time.perf_counter()
            for p in batches[:1] if warm else batches:
                model.generate(**p.inputs.to(model.device), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                               pad_token_id=pad)
            sync()
            base_s = time.perf_counter() - t0

    c = TransformersBackend(ModelConfig(path=str(path), engine="continuous", generation={"max_new_tokens": 64}),
                            n_gpus=int(GPU))
    c.use_model(model)
    batches = [c.prepare(reqs[i : i + 256]) for i in range(0, args.rows, 256)]
    text_config = model.config.text_config
    experts = text_config._experts_implementation  # evalfleet's (backends/transformers/kernels/experts.py), where it applies
    text_config._experts_implementation = "grouped_mm"  # transformers' own, as loaded: the same GEMMs, more glue
    theirs_s, theirs_tokens, _ = continuous(model, batches, args.slots, 64)
    text_config._experts_implementation = experts
    cont_s, tokens, captured = continuous(model, batches, args.slots, 64)

    base, cont = args.baseline_rows * 64 / base_s, tokens / cont_s
    prompt = sum(len(r.ids) for p in batches for r in p.inputs) / args.rows
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, Qwen3-VL-MoE {args.shape}-shaped, "
          f"{model.config.text_config.num_hidden_layers} text layers, {params:.1f}B parameters (built in {built:.0f} s); "
          f"prompts of {prompt:.0f} tokens; "
          f"decode step {'captured as a CUDA graph' if captured else 'eager'}\n")
    print("| engine | rows | samples/s | generated tok/s |\n|---|---|---|---|")
    print(f"| transformers generate, batches of 16 | {args.baseline_rows} | {base / 64:,.1f} | {base:,.0f} |")
    theirs = theirs_tokens / theirs_s
    print(f"| continuous, {args.slots} slots, transformers' grouped_mm experts | {args.rows} | {theirs / 64:,.1f} | "
          f"{theirs:,.0f} |")
    print(f"| continuous, {args.slots} slots, {experts} experts | {args.rows} | {cont / 64:,.1f} | {cont:,.0f} |")
    print(f"\ncontinuous / generate: {cont / base:.1f}x (target >= 5)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_judge.json").write_text(json.dumps({"generate": base, "continuous": cont,
                                                              "continuous, transformers' experts": theirs}))


if __name__ == "__main__":
    main()
