"""Model memory estimates from checkpoint files alone (safetensors headers, config.json): no weights loaded."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalfleet.errors import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8,
               "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
TEMPLATE_TOKENS = 32
"""Chat-template tokens around each prompt (system line, role markers)."""
CHARS_PER_TOKEN = 3
"""Conservative characters per token, used when the checkpoint has no loadable tokenizer."""
LONGEST_PROMPTS = 64
"""Prompts tokenized to find the longest (the longest by characters)."""


@dataclass(frozen=True)
class ModelEstimate:
    """What placement needs to know about a model, with units in the names."""

    params: int
    weight_bytes: int
    """Parameters x bytes of the run dtype."""
    dtype: str
    kv_bytes_per_token: int
    """2 (K and V) x layers x kv heads x head dim x dtype bytes."""
    tokens_per_sample: int
    """Longest prompt of the data + template + image tokens + max_new_tokens."""
    image_tokens: int
    """Image tokens of the largest image seen in the data (0 for text)."""
    activation_bytes_per_sample: int
    """Peak prefill activations + last-position fp32 logits of one sample."""
    source: str
    """Where the parameter count came from."""

    @property
    def bytes_per_sample(self) -> int:
        """Memory one more sample in a batch costs: its KV cache plus its activations."""
        return self.kv_bytes_per_token * self.tokens_per_sample + self.activation_bytes_per_sample


def safetensors_headers(folder: Path) -> list[bytes]:
    """The JSON header of each `.safetensors` file in `folder`, in name order (tensor names, shapes, dtypes,
    offsets: what the weights are, without reading them)."""
    headers = []
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            headers.append(fh.read(n))
    return headers


def _safetensors_params(folder: Path) -> int | None:
    headers = [json.loads(h) for h in safetensors_headers(folder)]
    return sum(math.prod(t["shape"]) for h in headers for k, t in h.items() if k != "__metadata__") if headers else None


def _params_from_config(text: dict[str, Any], hidden: int, inter: int, vocab: int) -> int:
    layers, heads = text["num_hidden_layers"], text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    attn = hidden * head_dim * (heads * 2 + kv_heads * 2)
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings") else 2)
    return layers * (attn + 3 * hidden * inter) + embeddings


def _image_tokens(folder: Path, config: dict[str, Any], image_sizes: list[tuple[int, int]]) -> int:
    """Image tokens of the largest image: Qwen2-VL-style dynamic resolution, else a fixed grid."""
    if not image_sizes:
        return 0
    pre_path = folder / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    patch = pre.get("patch_size") or config.get("vision_config", {}).get("patch_size") or 14
    merge = pre.get("merge_size")
    if merge:  # Qwen2-VL family: pixels are clamped to [min_pixels, max_pixels], then (patch x merge)^2 each
        size = pre.get("size") or {}
        lo = pre.get("min_pixels") or size.get("shortest_edge") or 56 * 56
        hi = pre.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
        pixels = max(min(max(w * h for w, h in image_sizes), hi), lo)
        return math.ceil(pixels / (patch * merge) ** 2)
    if config.get("mm_tokens_per_image"):
        return int(config["mm_tokens_per_image"])
    side = config.get("vision_config", {}).get("image_size") or 336
    return (side // patch) ** 2


def longest_prompt_tokens(path: str, prompts: list[str]) -> int:
    """Tokens of the longest prompt, with the checkpoint's tokenizer (chars / 3 without one). A fast tokenizer's
    `tokenizer.json` is read by the `tokenizers` library alone: the driver then never imports transformers and
    torch (several seconds on a GPU machine, on the start-up's critical path: bench/startup.py)."""
    longest = sorted(prompts, key=len)[-LONGEST_PROMPTS:]
    if not longest:
        return 0
    if (Path(path) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
            return max(len(e.ids) for e in tok.encode_batch(longest))
        except Exception:  # a file the library cannot read: try transformers
            pass
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # no tokenizer files, or one that needs remote code
        return max(len(p) for p in longest) // CHARS_PER_TOKEN
    return max(len(ids) for ids in tok(longest)["input_ids"])


def estimate_model(
    path: str,
    *,
    dtype: str,
    max_new_tokens: int,
    prompt_tokens: int,
    image_sizes: list[tuple[int, int]] | None = None,
    images_per_sample: int = 0,
) -> ModelEstimate:
    """Estimate memory of `path` at `dtype` for prompts of up to `prompt_tokens` tokens."""
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"cannot estimate memory of {path}: no config.json there")
    config = json.loads(cfg_path.read_text())
    text = config.get("text_config") or config
    hidden = text["hidden_size"]
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    kv_heads = text.get("num_key_value_heads") or heads
    inter = text.get("intermediate_size") or 4 * hidden
    vocab = text.get("vocab_size") or config.get("vocab_size")
    nbytes = DTYPE_BYTES[dtype]

    params = _safetensors_params(folder)
    source = "safetensors headers"
    if params is None:
        params, source = _params_from_config(text, hidden, inter, vocab), "config.json (no safetensors)"
    image_tokens = _image_tokens(folder, config, image_sizes or [])
    tokens = prompt_tokens + TEMPLATE_TOKENS + image_tokens * images_per_sample + max_new_tokens
    # Prefill peak per token: residual + attention in/out + the MLP's gate/up (intermediate x 2), all in dtype.
    activation = tokens * (4 * hidden + 2 * inter) * nbytes + vocab * 4
    return ModelEstimate(
        params=params,
        weight_bytes=params * nbytes,
        dtype=dtype,
        kv_bytes_per_token=2 * text["num_hidden_layers"] * kv_heads * head_dim * nbytes,
        tokens_per_sample=tokens,
        image_tokens=image_tokens,
        activation_bytes_per_sample=activation,
        source=source,
    )
