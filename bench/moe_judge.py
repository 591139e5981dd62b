"""An MoE VLM judge on the continuous engine against transformers' `generate` (issue 19), one GPU: Qwen3-VL-30B-A3B-
shaped random weights (48 layers of 128 experts, 8 per token; vision tower as Qwen3-VL's), built on the GPU (no disk),
judging image + answer pairs -> 64 tokens, no EOS.

  generate     transformers as shipped, in a process of its own that imports nothing of evalfleet (`isolated.py`):
               the model built from the same config and seed, SDPA, transformers' kernels and experts, the pairs
               templated as a script would (`stock.encode`); one untimed batch first, at the batch size timed:
                 - in batches of 16, on --baseline-rows pairs: what a user's script does
                 - in batches of --slots, on --same-batch-rows pairs (default: one batch): as many rows at once as
                   the engine has slots, where memory allows (the table says so where it does not)
  continuous   --rows pairs through the engine (--slots slots: 512, what the plan gives this model on an H200
               since 2026-12-03), evalfleet's kernels, its experts forward
               (`backends/transformers/kernels/experts.py`) and, for comparison, transformers' `grouped_mm` experts

The processor's work is done before any of them is timed. The `generate` processes run first, before this one builds
its model (62 GB in bf16: two would not fit an H200 beside a batch). Each ratio is printed with what it measures:
  continuous / generate at batch 16     the engine and the batch size together, against a user's script
                                        (the issue's target: >= 5)
  continuous / generate at batch --slots   the engine's own gain, at the same batch size
  evalfleet's experts / grouped_mm      the experts forward's gain, same engine and slots

    PYTHONPATH=src python bench/moe_judge.py [--rows 1024] [--baseline-rows 128] [--layers 48] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import isolated
import torch
from models import SUBJECTS, images, tiny_vlm
from transformers import AutoTokenizer, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

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


def questions(n: int) -> list[str]:
    answers = ["red", "a blue circle", "green, I think", "it is yellow and round", "black"]
    return [f"Question: What colour is {SUBJECTS[i % 5]}?\nAnswer: {answers[i % 5]}.\n"
            "Is the answer correct? Reply yes or no, then explain." for i in range(n)]


def build(path: Path) -> tuple[object, float]:
    """The model of `path`'s config, random weights (seed 0) built in GPU memory, and the seconds it took."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if GPU else "cpu"):
        model = Qwen3VLMoeForConditionalGeneration._from_config(Qwen3VLMoeConfig.from_pretrained(path),
                                                                 dtype=torch.bfloat16 if GPU else torch.float32)
    return model.eval(), time.perf_counter() - t0


def stock_generate(job: dict) -> dict:
    """(In a process of its own, nothing of evalfleet imported.) Seconds of transformers' `generate` answering the
    job's rows in batches of job["batch"], each row exactly job["new"] tokens, after one untimed batch."""
    import stock  # bench/stock.py: the templating of a script; nothing of evalfleet
    from transformers import AutoProcessor

    model, built = build(Path(job["path"]))
    processor = AutoProcessor.from_pretrained(job["path"])
    processor.tokenizer.padding_side = "left"
    rows, batch, new = job["rows"], job["batch"], job["new"]
    batches = [stock.encode("vlm", processor, processor.tokenizer, rows[i : i + batch])
               for i in range(0, len(rows), batch)]
    with torch.inference_mode():
        for warm in (True, False):
            stock.sync()
            t0 = time.perf_counter()
            for inputs in batches[:1] if warm else batches:
                model.generate(**inputs.to(model.device), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               pad_token_id=processor.tokenizer.pad_token_id)
            stock.sync()
            seconds = time.perf_counter() - t0
    prompt = sum(int(b["attention_mask"].sum()) for b in batches) / len(rows)
    return {"seconds": seconds, "rows": len(rows), "batch": batch, "tokens": len(rows) * new,
            "prompt_tokens": prompt, "built_s": built}


def engines(args: argparse.Namespace, path: Path, paths: list[Path]) -> dict:
    """The continuous engine in this process (evalfleet imported here only): with transformers' `grouped_mm` experts,
    then with evalfleet's. Seconds and tokens of each, and what was built."""
    from continuous_vlm import continuous
    from PIL import Image

    from evalfleet.backends import Request
    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig

    model, built = build(path)
    reqs = [Request(q, [Image.open(p).convert("RGB")], seed=i)
            for i, (q, p) in enumerate(zip(questions(args.rows), paths))]
    c = TransformersBackend(ModelConfig(path=str(path), engine="continuous", generation={"max_new_tokens": 64}),
                            n_gpus=int(GPU))
    c.use_model(model)
    batches = [c.prepare(reqs[i : i + 256]) for i in range(0, args.rows, 256)]
    text_config = model.config.text_config
    experts = text_config._experts_implementation  # evalfleet's (backends/transformers/kernels/experts.py), where it applies
    text_config._experts_implementation = "grouped_mm"  # transformers' own, as loaded: the same GEMMs, more glue
    theirs_s, theirs_tokens, _ = continuous(model, batches, args.slots, 64)
    text_config._experts_implementation = experts
    ours_s, ours_tokens, captured = continuous(model, batches, args.slots, 64)
    return {"theirs": theirs_tokens / theirs_s, "ours": ours_tokens / ours_s, "experts": experts,
            "captured": captured, "built_s": built, "params": sum(p.numel() for p in model.parameters()) / 1e9,
            "layers": text_config.num_hidden_layers,
            "prompt_tokens": sum(len(r.ids) for p in batches for r in p.inputs) / args.rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--baseline-rows", type=int, default=128, help="rows of generate in batches of 16")
    ap.add_argument("--same-batch-rows", type=int, default=None,
                    help="rows of generate in batches of --slots (default: --slots, one batch; 0: not run)")
    ap.add_argument("--slots", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None, help="text layers (default: all of the shape's)")
    ap.add_argument("--shape", default="30b-a3b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = isolated.parse_args(ap, {"stock": stock_generate})
    if args is None:  # this process was the stock baseline's
        return
    same_rows = args.slots if args.same_batch_rows is None else args.same_batch_rows
    args.work.mkdir(parents=True, exist_ok=True)
    path = folder(args.work, args.shape, args.layers)
    paths = images(args.work, max(args.rows, args.baseline_rows, same_rows))
    rows = [{"question": q, "image": str(p)} for q, p in zip(questions(len(paths)), paths)]
    generate = {batch: isolated.run(__file__, "stock", {"path": str(path), "rows": rows[:n], "batch": batch, "new": 64},
                                    args.work)
                for batch, n in ((16, args.baseline_rows), (args.slots, same_rows)) if n}
    e = engines(args, path, paths)

    theirs = ", ".join(f"{r['prompt_tokens']:.0f}" for r in generate.values() if "error" not in r) or "-"
    print(f"\n{torch.cuda.get_device_name() if GPU else 'CPU'}, Qwen3-VL-MoE {args.shape}-shaped, {e['layers']} text "
          f"layers, {e['params']:.1f}B parameters (built in {e['built_s']:.0f} s); prompts of {e['prompt_tokens']:.0f} "
          f"tokens (templated by generate's script: {theirs}); "
          f"decode step {'captured as a CUDA graph' if e['captured'] else 'eager'}\n")
    print("| engine | rows | samples/s | generated tok/s |\n|---|---|---|---|")
    ratios = []
    for batch, r in generate.items():
        label = f"transformers generate (own process), batches of {batch}"
        if "error" in r:
            print(f"| {label} | - | not measured: {r['error']} | |")
            continue
        rate = r["tokens"] / r["seconds"]
        print(f"| {label} | {r['rows']} | {rate / 64:,.1f} | {rate:,.0f} |")
        what = ("the same batch size as the slots: the engine's own gain" if batch == args.slots else
                f"batch {batch} against {args.slots} slots: the engine and the batch size together, against what a "
                "user's script does (target >= 5)")
        ratios.append(f"continuous / generate at batch {batch}: {e['ours'] / rate:.1f}x, {what}")
    print(f"| continuous, {args.slots} slots, transformers' grouped_mm experts | {args.rows} | {e['theirs'] / 64:,.1f} | "
          f"{e['theirs']:,.0f} |")
    print(f"| continuous, {args.slots} slots, {e['experts']} experts | {args.rows} | {e['ours'] / 64:,.1f} | "
          f"{e['ours']:,.0f} |")
    ratios.append(f"{e['experts']} experts / transformers' grouped_mm experts: {e['ours'] / e['theirs']:.2f}x, the "
                  "experts forward's gain (same engine, same slots)")
    print("\n" + "\n".join(ratios))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_judge.json").write_text(json.dumps(
            {"generate": {str(b): {**r, "tok_per_s": r["tokens"] / r["seconds"]} if "error" not in r else r
                          for b, r in generate.items()},
             "continuous": e["ours"], "continuous, transformers' experts": e["theirs"]}))


if __name__ == "__main__":
    main()
