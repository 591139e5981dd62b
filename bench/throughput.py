"""Throughput of the transformers backend on one GPU, each figure beside a baseline measured in this run.

Text: a Qwen2.5-7B-shaped model (random weights, no EOS: every request generates exactly 64 tokens),
512 requests of 256 prompt tokens.
  - baseline: `generate` one prompt at a time (8 requests), and `generate` in static batches of 256;
  - evalfleet's backend alone (engine `static`), batches of 256 and of 512: first pass (includes the
    CUDA-graph capture) and second pass; exactness against `generate` on the same GPU;
  - `evalfleet run` end to end (store, progress, scoring) on the same requests, generation phase.
VLM: a Qwen2.5-VL-7B-shaped model, one 448x448 image + ~32-token question -> 32 tokens.
  - baseline: one sample at a time; evalfleet backend in batches; `evalfleet run` end to end.

    PYTHONPATH=src python bench/throughput.py [--shape 7b|tiny] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from models import chat_prompts, images, qwen25_text, qwen25_vl

from evalfleet.backends import Request
from evalfleet.backends.attention import use_decode_attention, use_packed_vision_attention
from evalfleet.backends.static_decode import StaticDecoder
from evalfleet.backends.transformers_backend import TransformersBackend
from evalfleet.config import ModelConfig

ROWS: list[tuple[str, str, str]] = []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def record(name: str, value: str, note: str = "") -> None:
    ROWS.append((name, value, note))
    print(f"{name}: {value} {note}", flush=True)


def timed_backend(backend: TransformersBackend, requests: list[Request], batch: int) -> tuple[float, list]:
    """Seconds to answer `requests` in batches of `batch` (prepare + generate, sequentially), and the answers."""
    sync()
    t0 = time.perf_counter()
    gens = []
    for i in range(0, len(requests), batch):
        gens += backend.generate(backend.prepare(requests[i : i + batch]))
    sync()
    return time.perf_counter() - t0, gens


def hf_generate(backend: TransformersBackend, requests: list[Request], batch: int, new: int) -> tuple[float, list]:
    """Plain `model.generate` (dynamic cache) in static batches: the baseline."""
    model, tok = backend.model, backend.tokenizer
    sync()
    t0 = time.perf_counter()
    outs = []
    for i in range(0, len(requests), batch):
        inputs = backend.prepare(requests[i : i + batch]).inputs.to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
        outs += out[:, inputs["input_ids"].shape[1] :].tolist()
    sync()
    return time.perf_counter() - t0, outs


def run_cli(work: Path, name: str, model: Path, data: Path, new: int, batch: int) -> dict:
    cfg = {"name": name, "output_dir": str(work / "runs"), "progress_every": 10**6, "metrics": ["exact_match"],
           "model": {"path": str(model), "batch_size": batch, "generation": {"max_new_tokens": new}},
           "datasets": [{"name": "d", "path": str(data)}]}
    if not torch.cuda.is_available():
        cfg["workers"] = 1
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(path), "--fresh"], check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    return {**summary["performance"]["generate"], "wall_s": wall, "errors": summary["datasets"]["d"]["errors"]}


def busy(perf: dict) -> str:
    """Each worker's share of the generation phase spent in `Backend.generate`."""
    return ", ".join(f"{w['busy_fraction'] or 0:.0%}" for w in perf["workers"].values())


def text_bench(work: Path, shape: str, n: int, prompt_tokens: int, new: int) -> None:
    path = qwen25_text(work, shape)
    reqs = [Request(p, [], 0) for p in chat_prompts(work, n, prompt_tokens)]
    n_gpus = int(torch.cuda.is_available())
    gen = TransformersBackend(ModelConfig(path=str(path), engine="generate", generation={"max_new_tokens": new}),
                              n_gpus)
    gen.load()
    gen.model.set_attn_implementation("sdpa")  # baselines: transformers as shipped
    timed_backend(gen, reqs[:2], 2)  # warm up kernels once so no figure pays CUDA/cuBLAS initialisation
    s, _ = timed_backend(gen, reqs[:8], 1)
    one = 8 * new / s
    record("text: generate, one prompt at a time (8 requests)", f"{one:,.0f} tok/s", "baseline (sdpa)")
    s, ref = hf_generate(gen, reqs, 256, new)
    record("text: generate, static batches of 256", f"{n * new / s:,.0f} tok/s",
           f"{n * new / s / one:.0f}x baseline (sdpa)")
    use_decode_attention(gen.model)
    s, _ = hf_generate(gen, reqs, 256, new)
    record("text: generate with evalfleet's decode attention, batches of 256", f"{n * new / s:,.0f} tok/s",
           f"{n * new / s / one:.0f}x baseline (engine `generate`)")
    sync()
    t0 = time.perf_counter()
    gen.prepare(reqs)
    record(f"text: prepare {n} requests (chat template, tokenize; CPU)", f"{time.perf_counter() - t0:.3f} s",
           "included in every backend figure below")
    by_batch = {}
    for batch in (256, 512):  # the same loaded weights, with the static engine's decoder
        gen.decoder = StaticDecoder(gen.model, cuda_graphs=n_gpus > 0)
        for attempt in ("first pass", "second pass"):
            s, gens = timed_backend(gen, reqs, batch)
            toks = sum(g.n_tokens for g in gens)
            record(f"text: evalfleet static engine, batches of {batch}, {attempt}", f"{toks / s:,.0f} tok/s",
                   f"{toks / s / one:.0f}x baseline; {s:.2f} s for {len(gens)} requests")
        by_batch[batch] = gens
    ref_texts = gen.tokenizer.batch_decode(ref, skip_special_tokens=True)
    same = sum(a.text == b.strip() for a, b in zip(by_batch[256], ref_texts))
    record("text: static engine (batches of 256) output identical to generate (batches of 256, sdpa)",
           f"{same}/{len(ref_texts)} requests", "bf16, random weights: near-flat logits flip on rounding")
    alone = toks / s
    del gen
    torch.cuda.empty_cache() if n_gpus else None
    data = work / "text.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": r.prompt}) + "\n" for i, r in enumerate(reqs)))
    perf = run_cli(work, "text-e2e", path, data, new, 512)
    record("text: evalfleet run end to end (batch 512, generation phase)", f"{perf['generated_tokens_per_s']:,.0f} tok/s",
           f"{perf['generated_tokens_per_s'] / alone:.0%} of the backend alone (its second pass); generation phase "
           f"{perf['generate_wall_s']} s, in `generate` {busy(perf)}; load {perf['load_wall_s']} s, whole command "
           f"{perf['wall_s']:.0f} s, errors {perf['errors']}")


def vlm_bench(work: Path, shape: str, n: int, new: int) -> None:
    path = qwen25_vl(work, shape)
    pics = images(work, n)
    question = "Describe the coloured shape in this picture: its colour, its position and its size, briefly."
    reqs = [Request(question, [], 0) for _ in range(n)]
    from PIL import Image

    def with_images(rs: list[Request], ps: list[Path]) -> list[Request]:
        return [Request(r.prompt, [Image.open(p).convert("RGB")], 0) for r, p in zip(rs, ps)]

    n_gpus = int(torch.cuda.is_available())
    b = TransformersBackend(ModelConfig(path=str(path), generation={"max_new_tokens": new}), n_gpus)
    b.load()
    b.model.set_attn_implementation("sdpa")  # the baseline: transformers as shipped
    timed_backend(b, with_images(reqs[:2], pics[:2]), 2)  # warm-up
    k = 16
    t0 = time.perf_counter()
    timed_backend(b, with_images(reqs[:k], pics[:k]), 1)  # image decode included, as a script would do
    one = k / (time.perf_counter() - t0)
    record("VLM: one sample at a time", f"{one:.2f} samples/s", "baseline (sdpa)")
    t0 = time.perf_counter()
    decoded = with_images(reqs[:256], pics[:256])
    t1 = time.perf_counter()
    b.prepare(decoded)
    t2 = time.perf_counter()
    record(f"VLM: prepare {len(decoded)} samples (decode images, preprocess, template, tokenize; CPU)",
           f"{t2 - t0:.2f} s", f"decode {t1 - t0:.2f} s, {type(b.processor.image_processor).__name__} and tokenizer "
           f"{t2 - t1:.2f} s; included in the backend figures below")
    use_decode_attention(b.model)  # also the vision tower: per-image (per-window) SDPA calls, as before packing
    for packed, batch in ((False, 256), (True, 128), (True, 256)):
        if packed:
            use_packed_vision_attention(b.model)
        t0 = time.perf_counter()
        timed_backend(b, with_images(reqs, pics), batch)
        rate = n / (time.perf_counter() - t0)
        vision = "packed vision attention" if packed else "vision attention per image/window"
        record(f"VLM: evalfleet backend alone, batches of {batch}, {vision} (no prefetch)", f"{rate:.2f} samples/s",
               f"{rate / one:.1f}x baseline")
    del b
    torch.cuda.empty_cache() if n_gpus else None
    data = work / "vlm.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": question, "image": str(p)}) + "\n"
                            for i, p in enumerate(pics)))
    perf = run_cli(work, "vlm-e2e", path, data, new, 256)
    record("VLM: evalfleet run end to end (batch 256, prefetching images)", f"{perf['samples_per_s']:.2f} samples/s",
           f"{perf['samples_per_s'] / one:.1f}x baseline; generation phase {perf['generate_wall_s']} s, worker busy "
           f"{busy(perf)}; errors {perf['errors']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--shape", default="7b", choices=["7b", "tiny"])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--skip", choices=["text", "vlm"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)  # shows a failed CUDA-graph capture, if any
    if torch.cuda.is_available():
        record("device", torch.cuda.get_device_name(0), f"torch {torch.__version__}")
    if args.skip != "text":
        text_bench(args.work, args.shape, args.requests, 256, 64)
    if args.skip != "vlm":
        vlm_bench(args.work, args.shape, args.images, 32)
    table = "| measurement | value | note |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in ROWS)
    print(table)
    if args.out:
        (args.out / "throughput.md").write_text(table)


if __name__ == "__main__":
    main()
