"""Exactness of the GPU engine that can fail (issue 17): token ids, not decoded text, against stock transformers.

A random-weight model gives near-flat logits, so any two kernels disagree on the argmax by rounding alone and
decoded text from a 369-token tokenizer matches by chance. Here the model is *peaked*: 16 rows of its lm_head
are scaled 30x, so the winning logit stands ~10 logit units clear of the next while still depending on the
context (each step picks one of 16 tokens, from the hidden state). Kernels that compute the same function then
agree on (nearly) every token; a broken kernel does not (the `sabotaged` row flips the rotary embedding's sign
inside evalfleet's fused kernel and must collapse).

Each variant runs in its own process on the same saved weights and prompts (256 prompts of 16-200 random tokens,
left-padded in batches of 64, 64 new tokens, no EOS):
  stock        transformers as shipped: `generate`, SDPA, nothing of evalfleet imported
  engine       evalfleet's backend as `evalfleet run` loads it: static cache, CUDA-graph decode captured at
               warm-up, fused RMSNorm/SiLU/rotary kernels, flash-attention prefill
  eager        the engine without CUDA graphs
  no-warmup    the engine without the warm-up capture (captured in the first batch)
  unfused      the engine without the fused kernels
  sdpa-prefill the engine with SDPA instead of flash attention in the prefill
  sabotaged    the engine with a wrong rotary embedding (the check must fail here)
Pairs are compared on token agreement, rows identical, the first diverging step, and the first step's logits
(max |difference|, argmax agreement), in fp32 and bf16.

    python bench/gpu_exactness.py [--work /tmp/exact] [--out DIR] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = ["stock", "engine", "eager", "no-warmup", "unfused", "sdpa-prefill", "sabotaged"]
PAIRS = [("stock", "engine"), ("eager", "engine"), ("no-warmup", "engine"), ("unfused", "engine"),
         ("sdpa-prefill", "engine"), ("stock", "sabotaged")]
N_PROMPTS, BATCH, NEW_TOKENS, BOOSTED, BOOST = 256, 64, 64, 16, 30.0


def build(work: Path) -> Path:
    """A Qwen2-shaped model (head dim 128, grouped-query attention 8/2, 4 layers, vocab 152,064) with a peaked
    lm_head, saved in fp32 with the tiny tokenizer of the tests."""
    import torch
    from models import tiny_vlm
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = work / "peaked-qwen2"
    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    cfg = Qwen2Config(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=152064, max_position_embeddings=4096, rope_theta=1e6,
                      tie_word_embeddings=False, eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).float()
    boosted = torch.randperm(150000, generator=torch.Generator().manual_seed(1))[:BOOSTED] + 1000
    with torch.no_grad():
        model.lm_head.weight[boosted.cuda()] *= BOOST
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompts(pad: int) -> list[tuple[object, object]]:
    """Batches of (input_ids, attention_mask), left-padded, prompts of uneven lengths."""
    import torch

    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(16, 201, (N_PROMPTS,), generator=g).tolist()
    rows = [torch.randint(1000, 150000, (n,), generator=g) for n in lengths]
    out = []
    for i in range(0, N_PROMPTS, BATCH):
        part = rows[i : i + BATCH]
        t = max(len(r) for r in part)
        ids = torch.full((len(part), t), pad, dtype=torch.long)
        mask = torch.zeros((len(part), t), dtype=torch.long)
        for j, r in enumerate(part):
            ids[j, t - len(r):], mask[j, t - len(r):] = r, 1
        out.append((ids.cuda(), mask.cuda()))
    return out


def run_variant(name: str, dtype: str, folder: Path, out: Path) -> None:
    """In this process: generate every batch with `name`'s kernels; save tokens and the first batch's logits."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    from transformers import AutoTokenizer

    pad = AutoTokenizer.from_pretrained(folder).pad_token_id
    batches = prompts(pad)
    first: list[torch.Tensor] = []
    tokens = []
    if name == "stock":
        from transformers import AutoModelForCausalLM

        assert "evalfleet" not in sys.modules
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), device_map="cuda:0").eval()
        for ids, mask in batches:
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad, output_logits=True,
                                 return_dict_in_generate=True)
            tokens.append(gen.sequences[:, ids.shape[1]:].cpu())
            first.append(gen.logits[0].float().cpu())
    else:
        import evalfleet.backends.transformers.backend as tb
        from evalfleet.backends.transformers.kernels import compiled as kernels
        from evalfleet.config import ModelConfig

        if name == "unfused":
            tb.fuse_elementwise = lambda model, kernels=None: 0
        if name == "sabotaged":
            kernels.rotate_half = lambda x: torch.cat((x[..., x.shape[-1] // 2:], -x[..., : x.shape[-1] // 2]), -1)
        backend = tb.TransformersBackend(ModelConfig(path=str(folder), dtype=dtype, engine="static",
                                                     generation={"max_new_tokens": NEW_TOKENS}), 1)
        backend.load()
        dec = backend.decoder
        assert dec is not None
        dec.use_graphs = dec.use_graphs and name != "eager"
        dec.flash = dec.flash and name != "sdpa-prefill"
        if name != "no-warmup":
            dec.warm_up(*batches[0][0].shape, NEW_TOKENS, pad)
        prefill = dec._prefill

        def recording(*args: object, **kw: object) -> torch.Tensor:
            logits = prefill(*args, **kw)
            first.append(logits[:, -1].float().cpu())
            return logits

        dec._prefill = recording
        with torch.inference_mode():
            for ids, mask in batches:
                tokens.append(dec.generate(ids, mask, max_new_tokens=NEW_TOKENS, eos_ids=set(), pad_id=pad).cpu())
    torch.save({"tokens": torch.cat(tokens), "first_logits": first[0]}, out)


def compare(a: dict, b: dict) -> dict:
    import torch

    ta, tb_ = a["tokens"], b["tokens"]
    same = ta == tb_
    diverged = (~same).any(1)
    first_bad = torch.where(diverged, (~same).int().argmax(1), torch.full_like(diverged, NEW_TOKENS, dtype=torch.long))
    la, lb = a["first_logits"], b["first_logits"]
    top2 = la.topk(2, -1).values
    return {"token_agreement": round(same.float().mean().item(), 4),
            "rows_identical": f"{int((~diverged).sum())}/{len(ta)}",
            "first_divergence_min": int(first_bad.min()) if diverged.any() else None,
            "first_divergence_median": float(first_bad[diverged].float().median()) if diverged.any() else None,
            "first_step_max_abs_logit_diff": round((la - lb).abs().max().item(), 5),
            "first_step_argmax_agreement": round((la.argmax(-1) == lb.argmax(-1)).float().mean().item(), 4),
            "first_step_top1_top2_gap_median": round((top2[:, 0] - top2[:, 1]).median().item(), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/exact"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        run_variant(args.variant, args.dtype, args.work / "peaked-qwen2", args.to)
        return
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    build(args.work)
    report = {}
    for dtype in args.dtypes.split(","):
        results = {}
        for v in VARIANTS:
            path = args.work / f"{v}-{dtype}.pt"
            subprocess.run([sys.executable, __file__, "--work", str(args.work), "--variant", v, "--dtype", dtype,
                            "--to", str(path)], check=True)
            results[v] = torch.load(path)
        report[dtype] = {f"{a} vs {b}": compare(results[a], results[b]) for a, b in PAIRS}
    print(f"{'dtype':9} {'pair':26} {'tokens':>7} {'rows same':>10} {'1st div min/med':>16} {'max|dlogit|':>12} "
          f"{'argmax':>7} {'gap med':>8}")
    for dtype, pairs in report.items():
        for pair, r in pairs.items():
            div = f"{r['first_divergence_min']}/{r['first_divergence_median']}" if r["first_divergence_min"] is not None else "-"
            print(f"{dtype:9} {pair:26} {r['token_agreement']:7.4f} {r['rows_identical']:>10} {div:>16} "
                  f"{r['first_step_max_abs_logit_diff']:12.5f} {r['first_step_argmax_agreement']:7.4f} "
                  f"{r['first_step_top1_top2_gap_median']:8.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_exactness.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
