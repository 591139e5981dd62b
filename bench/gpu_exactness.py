"""Exactness of the default decoding path against stock transformers, token ids on every row (issue 36, item 2).

The engine is loaded as `evalfleet run` loads it (`make_backend` -> `load` -> `stream_of`: slot attention, decode
steps captured as CUDA graphs at every width, fused kernels compiled apart on a fresh cache and switched in mid-run,
evalfleet's MoE experts) and fed `Row`s as a worker feeds it. Each model is *peaked*: 16 rows of its lm_head are
scaled 30x, so each step's winner stands ~10 logit units clear of the next while still depending on the context,
and one of the 16 is the EOS token, so rows end at different steps and slots are refilled. Kernels that compute the
same function agree on every token; a broken engine does not.

Text and MoE prompts come in groups of four that share their first 60 %, and each VLM picture is asked three
questions: the engine copies held prefixes (issue 37) as it does by default.
The workload of each model: prompts of ~20 to ~2,000 tokens (log-normal, median ~150), added shortest first to an
engine whose cache starts at `max_new_tokens` positions, so that it grows while other rows decode; 64 decode slots,
so the tail narrows through widths 64, 32, 16 and 8; up to 64 new tokens.

Models (random weights, built on the GPU, saved once in fp32):
  text   Qwen2-shaped: hidden 1024, 4 layers, heads 8/2 (head dim 128), vocab 152,064
  vlm    Qwen2.5-VL-shaped: the text above with 3-D rotary positions, a 4-layer Qwen2.5-VL vision tower (windowed
         and full attention), images of 112-448 px and questions of 10-1,200 tokens
  moe    Qwen3-MoE-shaped: hidden 1024, 4 layers, heads 8/2, 128 experts, 8 per token

Variants, each model and dtype; `stock` in a process of its own that imports nothing of evalfleet (`generate`, SDPA,
transformers' own experts, left-padded batches of 16), the others in processes per `GROUPS`:
  float32   stock, engine; on the text model each sabotage in a process of its own: sabotage-move (the tail's moves
            leave the moved slots' keys and values behind), sabotage-slot (decode steps write each slot's keys into
            its neighbour's), sabotage-graph (graphs are not captured again when the cache grows or the kernels
            change: stale graphs), sabotage-prefix (a copied prefix misses its last position); a sabotage that
            crashes the engine counts as caught
  bfloat16  stock, engine, graphs-off (every step eager), flash-off (SDPA with masks instead of flash attention in
            prefills and decode steps), fused-off (transformers' elementwise forwards), share-off (every prompt
            prefilled whole, no prefix copied); and stock in batches of 7
            beside stock in batches of 16 (`stock-b7`): the bf16 noise of batch composition alone
The check: float32 engine == stock on every row; every sabotage must fail it.

    python bench/gpu_exactness.py [--models text,vlm,moe] [--dtypes float32,bfloat16] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BOOSTED, BOOST, NEW_TOKENS = 16, 30.0, 64
SHAPES = {  # hidden, intermediate, layers, heads, kv heads; vision depth, hidden, intermediate, heads; experts
    "gpu": (1024, 2816, 4, 8, 2, (4, 1280, 3420, 16), 128),
    "tiny": (128, 256, 2, 2, 1, (2, 64, 128, 2), 8),  # a dry run on the CPU
}
ROWS = {"gpu": {"text": 192, "vlm": 128, "moe": 192}, "tiny": {"text": 40, "vlm": 24, "moe": 40}}
SLOTS = {"gpu": 64, "tiny": 16}
LONGEST = {"gpu": 2000, "tiny": 300}
GROUPS = {"float32": ["engine,share-off", "sabotage-move", "sabotage-slot", "sabotage-graph", "sabotage-prefix"],
          "bfloat16": ["engine,graphs-off,flash-off,share-off", "fused-off"]}
"""Processes of engine variants per dtype (a comma joins those run in one process). Each sabotage has a process of its
own: a broken engine may crash it (a device-side assert ends the CUDA context), and a crash fails the check too."""
SABOTAGED_MODELS = ("text",)
"""Models whose engine is sabotaged: showing that the check can fail takes one."""


def build(work: Path, model: str, shape: str) -> Path:
    """A peaked random-weight model of `model`'s architecture in `work`, saved in fp32 with the tests' tiny Qwen
    tokenizer (and its image processor for the VLM); its EOS is one of the boosted tokens."""
    import shutil

    import torch
    from models import tiny_vlm
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    folder = work / f"peaked-{model}-{shape}"
    if (folder / "config.json").exists():
        return folder
    hidden, inter, layers, heads, kv, (depth, v_hidden, v_inter, v_heads), experts = SHAPES[shape]
    tiny = tiny_vlm(work)
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok.get_vocab()
    text = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=152064, max_position_embeddings=8192, tie_word_embeddings=False,
                bos_token_id=None, eos_token_id=None, pad_token_id=tok.pad_token_id)
    head_dim = hidden // heads
    if model == "text":
        cls, cfg = Qwen2ForCausalLM, Qwen2Config(**text, rope_theta=1e6)
    elif model == "moe":
        cls, cfg = Qwen3MoeForCausalLM, Qwen3MoeConfig(**text, head_dim=head_dim, num_experts=experts,
                                                        num_experts_per_tok=min(8, experts), decoder_sparse_step=1,
                                                        moe_intermediate_size=inter // 8, rope_theta=1e6)
    else:
        cls = Qwen2_5_VLForConditionalGeneration
        cfg = Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [
                head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}},
            vision_config=dict(depth=depth, hidden_size=v_hidden, intermediate_size=v_inter, num_heads=v_heads,
                               out_hidden_size=hidden, fullatt_block_indexes=[depth - 1], window_size=112),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        m = cls(cfg).float()
    boosted = (torch.randperm(150000, generator=torch.Generator().manual_seed(1))[:BOOSTED] + 1000).tolist()
    with torch.no_grad():
        m.lm_head.weight[torch.tensor(boosted, device=device)] *= BOOST
    m.generation_config = GenerationConfig(eos_token_id=boosted[0], pad_token_id=tok.pad_token_id)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    if model == "vlm":
        pre = json.loads((tiny / "preprocessor_config.json").read_text())
        pre["size"] = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
        shutil.copy(tiny / "chat_template.jinja", folder / "chat_template.jinja")
    return folder


def lengths(n: int, longest: int, seed: int) -> list[int]:
    """Log-normal prompt lengths (median ~150), from ~20 to `longest`, the extremes included."""
    import random

    rng = random.Random(seed)
    out = [min(longest, max(20, int(rng.lognormvariate(5.0, 0.9)))) for _ in range(n - 2)]
    return [20, *out, longest]


def token_rows(n: int, longest: int) -> list[list[int]]:
    """Text prompts as token ids (random, from the ids no special token uses). Rows come in groups of four whose
    first 60 % are one group prefix's (of different lengths, so the engine copies part of a held prompt: issue 37)."""
    import random

    rng = random.Random(2)
    groups = [[rng.randrange(1000, 150000) for _ in range(longest)] for _ in range(-(-n // 4))]
    rows = []
    for i, k in enumerate(lengths(n, longest, 3)):
        shared = k * 6 // 10
        rows.append(groups[i // 4][:shared] + [rng.randrange(1000, 150000) for _ in range(k - shared)])
    return rows


def vlm_requests(work: Path, n: int, longest: int) -> list[tuple[str, Path]]:
    """(question, image) pairs: images of 112-448 px, questions of ~10 to ~`longest` tokens of the tiny vocabulary."""
    import random

    from models import images

    rng = random.Random(4)
    words = "what colour shape is the in this picture left right top bottom large small circle square".split()
    sizes = [112, 224, 336, 448]
    pictures = {s: images(work, n, s) for s in sizes}
    out = []
    for i, k in enumerate(lengths(n, longest, 5)):
        # each picture asked three questions (the engine encodes it once and copies its prefix: issue 37)
        question = " ".join(rng.choice(words) for _ in range(max(5, k // 2))) + "?"
        out.append((question, pictures[sizes[i // 3 % 4]][i // 3]))
    return out


def run_stock(model: str, folder: Path, dtype: str, args: argparse.Namespace) -> dict:
    """Transformers as shipped, nothing of evalfleet imported: `generate` over left-padded batches of 16 (and, in
    bf16, of 7: the noise of batch composition alone)."""
    tokens, gaps = stock_tokens(model, folder, dtype, args, 16)
    out = {"stock": tokens, "stock-gaps": gaps}
    if dtype != "float32":
        out["stock-b7"] = stock_tokens(model, folder, dtype, args, 7)[0]
    return out


def vlm_processor(folder: Path):  # -> a processor
    """transformers' processor, or where torchvision is missing (its video part needs it) the same steps from its
    parts: the image processor's patches and grids, each `<|image_pad|>` repeated once per merged patch, the
    tokenizer (left padding), the token types (1 for image tokens: the model places them on its 3-D grid)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature

    try:
        proc = AutoProcessor.from_pretrained(folder)
        proc.tokenizer.padding_side = "left"
        return proc
    except ImportError:
        pass
    images, tok = AutoImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    merge = images.merge_size ** 2

    def process(text: list[str], images: list, padding: bool, return_tensors: str):  # noqa: ARG001
        pix = image_processor(images=[i for row in images for i in row], return_tensors="pt")
        counts = iter((pix["image_grid_thw"].prod(-1) // merge).tolist())
        expanded = []
        for t in text:
            parts = t.split("<|image_pad|>")
            expanded.append(parts[0] + "".join("<|image_pad|>" * next(counts) + p for p in parts[1:]))
        enc = tok(expanded, padding=True, return_tensors="pt")
        types = (enc["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).int()  # 1: image (3-D positions)
        return BatchFeature({**enc, **pix, "mm_token_type_ids": types})

    image_processor = images
    return process


def stock_tokens(model: str, folder: Path, dtype: str, args: argparse.Namespace,
                 batch: int) -> tuple[list[list[int]], list[list[float]]]:
    """Stock's token ids per row, and at each of its steps the gap between its two largest logits (how close a
    tie it broke: a row that another engine answers differently at a step where this gap is ~1e-6 met a tie)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    assert not any(m.startswith("evalfleet") for m in sys.modules)
    cls = AutoModelForImageTextToText if model == "vlm" else AutoModelForCausalLM
    m = cls.from_pretrained(folder, dtype=getattr(torch, dtype), device_map=args.device).eval()
    eos, pad = m.generation_config.eos_token_id, m.generation_config.pad_token_id
    gen = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
           "eos_token_id": eos, "pad_token_id": pad, "output_logits": True, "return_dict_in_generate": True}
    out: list[list[int]] = []
    gaps: list[list[float]] = []

    def generate(**inputs) -> list[list[int]]:
        with torch.inference_mode():
            r = m.generate(**inputs, **gen)
        top2 = torch.stack([step.float().topk(2, dim=-1).values for step in r.logits], 1)  # [rows, steps, 2]
        gaps.extend((top2[..., 0] - top2[..., 1]).tolist())
        return r.sequences[:, inputs["input_ids"].shape[1]:].tolist()

    if model == "vlm":
        from PIL import Image

        proc = vlm_processor(folder)

        texts = json.loads((args.work / f"prompts-{model}-{args.shape}.json").read_text())
        pairs = vlm_requests(args.work, ROWS[args.shape][model], LONGEST[args.shape])
        batches = [(texts[i : i + batch], [[Image.open(p).convert("RGB")] for _, p in pairs[i : i + batch]])
                   for i in range(0, len(texts), batch)]
        for text, imgs in batches:
            inputs = proc(text=text, images=imgs, padding=True, return_tensors="pt").to(args.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
            out += generate(**inputs)
    else:
        rows = token_rows(ROWS[args.shape][model], LONGEST[args.shape])
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            t = max(len(r) for r in part)
            ids = torch.tensor([[pad] * (t - len(r)) + r for r in part], device=args.device)
            mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in part], device=args.device)
            out += generate(input_ids=ids, attention_mask=mask)
    return [row[: row.index(eos) + 1] if eos in row else row for row in out], gaps


def run_engine(model: str, folder: Path, dtype: str, args: argparse.Namespace, names: list[str]) -> dict:
    """The engine as `evalfleet run` loads it, once per variant in `names` (the model loaded once)."""
    import torch

    from evalfleet.backends import Generation, Prepared, Request, make_backend, stream_of
    from evalfleet.backends.transformers import backend as tb
    from evalfleet.backends.transformers import engine as te
    from evalfleet.backends.transformers import graphs, slot_cache
    from evalfleet.backends.transformers.engine import Row
    from evalfleet.backends.transformers.prefix import prompt_blocks
    from evalfleet.config import ModelConfig

    if names == ["fused-off"]:  # transformers' own elementwise forwards, from the start and throughout
        tb.fuse_elementwise = lambda model, kernels=None: 0
        tb.fuse_when_ready = lambda model, kernels: (lambda: False)
    on_gpu = args.device == "cuda"
    cfg = ModelConfig(path=str(folder), dtype=dtype, engine="continuous", generation={"max_new_tokens": NEW_TOKENS})
    backend = make_backend(cfg, 1 if on_gpu else 0)
    compiling = backend.kernels  # the fused kernels' future, compiled apart on this (fresh) cache
    backend.load()
    steps = [0]
    switched: list[int] = []
    changed = backend.kernels_changed

    def kernels_changed() -> bool:  # no earlier than step 24: so that the switch happens mid-run, deterministically
        if steps[0] < 24 or switched:
            return False
        if compiling is not None and names != ["fused-off"]:
            compiling.result()
        if changed():
            switched.append(steps[0])
            return True
        return False

    backend.kernels_changed = kernels_changed
    if model == "vlm":
        from PIL import Image

        pairs = vlm_requests(args.work, ROWS[args.shape][model], LONGEST[args.shape])
        requests = [Request(q, [Image.open(p).convert("RGB")], 0) for q, p in pairs]
        prepared = backend.prepare(requests)
        (args.work / f"prompts-{model}-{args.shape}.json").write_text(json.dumps(prepared.prompts))
        rows = prepared.inputs
    else:
        rows = [Row(None, ids, 0, blocks=prompt_blocks(ids, []))
                for ids in token_rows(ROWS[args.shape][model], LONGEST[args.shape])]
    # Shortest first, so that the cache grows mid-run; a picture's three questions together (by their shortest),
    # as the worker's queue hands them over (`engine/queue.make_chunks`), so that the later ones copy its prefix.
    group = (lambda i: i // 3) if model == "vlm" else (lambda i: i)
    shortest: dict[int, int] = {}
    for i, r in enumerate(rows):
        shortest[group(i)] = min(shortest.get(group(i), len(r.ids)), len(r.ids))
    order = sorted(range(len(rows)), key=lambda i: (shortest[group(i)], group(i), len(rows[i].ids)))
    results = {}
    for name in names:
        patches = []

        def patch(owner: object, attr: str, value: object) -> None:
            patches.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, value)

        if name == "sabotage-move":  # the tail's moves leave the keys and values behind
            patch(slot_cache.SlotCache, "move", lambda self, src, dst: None)
        if name == "sabotage-slot":
            original_decode = slot_cache.SlotCache.decode

            def off_by_one(self, pos):  # each slot's new keys and values go to its neighbour's slot
                p = original_decode(self, pos)
                p.write = (p.write + self.length) % (self.slots * self.length)
                return p

            patch(slot_cache.SlotCache, "decode", off_by_one)
        if name == "sabotage-graph":
            patch(graphs.DecodeGraphs, "clear", lambda self: None)
        if name == "flash-off":  # SDPA with masks for prompts and decode steps, as in fp32
            patch(slot_cache, "flash_ok", lambda *a: False)
        if name == "sabotage-prefix":  # a copied prefix's last position is not copied (stale keys and values)
            original_copy = slot_cache.SlotCache.copy
            patch(slot_cache.SlotCache, "copy", lambda self, src, dst, counts: original_copy(
                self, src, dst, [n - 1 for n in counts]))
        if name == "share-off":  # every prompt prefilled whole
            patch(backend.cfg, "share_prefixes", False)
        stream = stream_of(backend, SLOTS[args.shape], None)
        engine = stream.engine
        if name == "graphs-off":
            engine.graphs.clear()
            engine.graphs.enabled = False
        tokens: dict[int, list[int]] = {}
        stream.decode = lambda toks: Generation("", len(toks))  # the ids are what is compared (kept below)
        stream.add(Prepared([rows[i] for i in order], [], []), order)
        t0 = time.perf_counter()
        original_release = te.ContinuousEngine._release

        def release(self, slots):  # the ended rows' token ids, as the engine hands them over
            done = original_release(self, slots)
            tokens.update((d.key, d.tokens) for d in done)
            return done

        te.ContinuousEngine._release = release
        try:
            while stream.busy:
                stream.step()
                steps[0] += 1
        finally:
            te.ContinuousEngine._release = original_release
            for owner, attr, value in reversed(patches):
                setattr(owner, attr, value)
        if on_gpu:
            torch.cuda.synchronize()
        print(f"  {model} {dtype} {name}: {time.perf_counter() - t0:.1f} s, {steps[0]} steps", file=sys.stderr,
              flush=True)
        results[name] = {"tokens": [tokens.get(i, []) for i in range(len(rows))],
                         "seconds": round(time.perf_counter() - t0, 2),
                         "widths": dict(sorted(engine.steps_at.items())), "moves": engine.moves,
                         "grown": sum("grown" in line for line in stream.log), "fused_at_step": list(switched),
                         "graphs": engine.use_graphs and engine.graphs.enabled,
                         "shared": f"{engine.counts['shared_tokens']}/{engine.counts['prompt_tokens']}",
                         "encoded": f"{engine.counts['images_encoded']}/{engine.counts['images']}"}
        del stream, engine
    return results


def compare(ref: list[list[int]], got: list[list[int]], gaps: list[list[float]] | None = None) -> dict:
    """Row and token agreement of `got` with `ref` (stock); with stock's top-2 logit gaps, the largest gap at a
    diverging row's first differing step: ~1e-6 in fp32 says every divergence broke a tie another way."""
    same = [a == b for a, b in zip(ref, got)]
    diverging = [(k, next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
                 for k, (a, b, s) in enumerate(zip(ref, got, same)) if not s]
    first = [i for _, i in diverging]
    at = [gaps[k][i] for k, i in diverging if gaps and i < len(gaps[k])]
    total = sum(max(len(a), len(b)) for a, b in zip(ref, got))
    agree = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(ref, got))
    return {"rows_identical": f"{sum(same)}/{len(same)}", "token_agreement": round(agree / total, 4),
            "first_divergence_min": min(first) if first else None,
            "mean_new_tokens": round(sum(len(a) for a in ref) / len(ref), 1),
            "distinct_lengths": len({len(a) for a in ref}),
            "stock_gap_at_divergence_max": float(f"{max(at):.3g}") if at else None}


def table(report: dict) -> str:
    lines = [f"{'model dtype':16} {'variant':15} {'rows same':>10} {'tokens':>7} {'1st div':>7} {'new':>5} "
             f"{'lengths':>7} {'grown':>5} {'fused@':>6} {'moves':>5} {'gap@div':>8} {'tokens shared':>15} "
             f"{'encoded':>8}  widths"]
    for key, variants in report.items():
        for name, r in variants.items():
            if "crashed" in r:
                lines.append(f"{key:16} {name:15} crashed: {r['crashed']}")
                continue
            lines.append(f"{key:16} {name:15} {r['rows_identical']:>10} {r['token_agreement']:7.4f} "
                         f"{str(r['first_divergence_min']):>7} {r['mean_new_tokens']:5} {r['distinct_lengths']:7} "
                         f"{r.get('grown', '-'):>5} {str(r.get('fused_at_step', '-')):>6} {r.get('moves', '-'):>5} "
                         f"{str(r.get('stock_gap_at_divergence_max', '-')):>8} {r.get('shared', '-'):>15} "
                         f"{r.get('encoded', '-'):>8}  "
                         f"{r.get('widths', '')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/exact"))
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--models", default="text,vlm,moe")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shape", default="gpu", choices=list(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        folder = args.work / f"peaked-{args.model}-{args.shape}"
        out = (run_stock(args.model, folder, args.dtype, args) if args.variant == "stock"
               else run_engine(args.model, folder, args.dtype, args, args.variant.split(",")))
        args.to.write_text(json.dumps(out))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    for model in args.models.split(","):
        folder = build(args.work, model, args.shape)
        for dtype in args.dtypes.split(","):
            runs = {}
            groups = [g for g in GROUPS[dtype] if not g.startswith("sabotage") or model in SABOTAGED_MODELS
                      and (args.device == "cuda" or g != "sabotage-graph")]
            if args.device != "cuda":  # no CUDA graphs to turn off
                groups = [g.replace(",graphs-off", "") for g in groups]
            for group in [*groups, "stock"]:  # stock after the engine: the VLM's templated prompts come from it
                path = args.work / f"{model}-{dtype}-{group.split(',')[0]}.json"
                # One kernel cache for a model and dtype: the engine's first process compiles on a fresh one (its
                # fused kernels switched in mid-run); the later ones find them compiled.
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(args.work / f"inductor-{model}-{dtype}")}
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--shape", args.shape,
                                       "--device", args.device, "--variant", group, "--model", model, "--dtype",
                                       dtype, "--to", str(path)], env=env, capture_output=True, text=True)
                if proc.returncode == 0:
                    runs.update(json.loads(path.read_text()))
                elif group.startswith("sabotage"):  # it crashed: caught, as a failed run is
                    why = next((line for line in reversed(proc.stderr.splitlines()) if "Error" in line), "")
                    runs[group] = {"crashed": f"exit {proc.returncode}: {why[:120]}"}
                else:
                    sys.exit(f"{model} {dtype} {group} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
                print(f"{model} {dtype} {group}: {time.perf_counter() - t0:.1f} s", flush=True)
            stock, gaps = runs.pop("stock"), runs.pop("stock-gaps")
            report[f"{model} {dtype}"] = {
                name: r if "crashed" in r else {**compare(stock, r if isinstance(r, list) else r["tokens"], gaps),
                                                **({} if isinstance(r, list) else
                                                   {k: v for k, v in r.items() if k != "tokens"})}
                for name, r in runs.items()}
            print(table({f"{model} {dtype}": report[f"{model} {dtype}"]}), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_exactness.json").write_text(json.dumps(report, indent=1))  # so far

    def differs(r: dict) -> bool:
        same, rows = r["rows_identical"].split("/")
        return same != rows

    failures = [f"{key} {name}" for key, v in report.items() for name, r in v.items()
                if key.endswith("float32") and name == "engine" and differs(r)]
    caught = [f"{key} {name}" for key, v in report.items() for name, r in v.items()
              if name.startswith("sabotage") and ("crashed" in r or differs(r))]
    print("\n" + table(report))
    print(f"\nfloat32 engine rows not identical to stock: {failures or 'none'}")
    print(f"sabotages caught (some row differs, or the engine crashed): {caught}")


if __name__ == "__main__":
    main()
