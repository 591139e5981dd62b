"""The baseline a researcher would write: transformers as shipped, in a process of its own, nothing of evalfleet
imported or patched in. `bench/throughput.py` and `bench/startup.py` run it; `bench/moe_judge.py`'s baselines
template their rows with its `encode`.

Reads the same JSONL file `evalfleet run` reads (`question`, and `image` for a VLM), loads the model fresh with
`from_pretrained` (bf16 on a GPU, SDPA attention), and answers the rows in order with `generate` (greedy) in
batches of `--batch`: the chat template, tokenizing, image decoding and preprocessing are timed with the batch,
as a script would run them. One untimed batch of the same size first warms kernels at the shape that is timed;
then `--count` rows are timed. Prints one JSON object:
  start_s   process start (interpreter, imports, CUDA init) to the model loaded, load_s of which `from_pretrained`
  warm_s    the warm-up batch
  timed_s, samples, tokens   the timed rows (tokens: generated ids up to EOS or the limit, per row)

    python bench/stock.py text|vlm MODEL DATA.jsonl --batch 256 --count 512 --new 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.perf_counter()

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def encode(kind: str, processor: object, tokenizer: object, part: list[dict]) -> object:
    """Template and tokenize a batch of rows (`question`, and `image` for a VLM: decoded and preprocessed), left
    padded, as a script would."""
    if kind == "vlm":
        chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]}]
                 for r in part]
        texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        pics = [Image.open(r["image"]).convert("RGB") for r in part]
        return processor(text=texts, images=pics, padding=True, return_tensors="pt")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                           tokenize=False) for r in part]
    return tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["text", "vlm"])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--new", type=int, required=True)
    args = ap.parse_args()
    assert "evalfleet" not in sys.modules
    with open(args.data) as f:
        rows = [json.loads(line) for line in f]
    need = args.batch + args.count
    if len(rows) < need:
        sys.exit(f"{args.data}: {len(rows)} rows, the warm-up and timed batches need {need}")
    cuda = torch.cuda.is_available()
    dtype, device = (torch.bfloat16, "cuda:0") if cuda else (torch.float32, "cpu")
    t = time.perf_counter()
    auto = AutoModelForImageTextToText if args.kind == "vlm" else AutoModelForCausalLM
    model = auto.from_pretrained(args.model, dtype=dtype, device_map=device, attn_implementation="sdpa").eval()
    if args.kind == "vlm":
        processor = AutoProcessor.from_pretrained(args.model)
        tokenizer = processor.tokenizer
    else:
        processor = tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    sync()
    loaded = time.perf_counter()
    load_s = loaded - t

    def answer(part: list[dict]) -> tuple[int, int]:
        """Template, tokenize (decode and preprocess images) and generate one batch: (rows, generated tokens)."""
        inputs = encode(args.kind, processor, tokenizer, part).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=args.new, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        eos = model.generation_config.eos_token_id
        ends = [eos] if isinstance(eos, int) else list(eos or [])
        n = sum(next((i + 1 for i, tok in enumerate(row) if tok in ends), len(row)) for row in new.tolist())
        return len(part), n

    t = time.perf_counter()
    answer(rows[: args.batch])
    sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    samples = tokens = 0
    for i in range(args.batch, need, args.batch):
        k, n = answer(rows[i : min(i + args.batch, need)])
        samples, tokens = samples + k, tokens + n
    sync()
    timed_s = time.perf_counter() - t
    print(json.dumps({"start_s": round(loaded - T0, 3), "load_s": round(load_s, 3), "warm_s": round(warm_s, 3),
                      "timed_s": round(timed_s, 3), "samples": samples, "tokens": tokens,
                      "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}))


if __name__ == "__main__":
    main()
