"""Random-weight checkpoints of real architectures for GPU benchmarks (no hub needed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from tiny_models import build_tiny_qwen2vl

QWEN25_SHAPES = {
    # hidden, intermediate, layers, heads, kv heads (vocab 152064, untied, as Qwen2.5-7B/14B)
    "7b": (3584, 18944, 28, 28, 4),
    "14b": (5120, 13824, 48, 40, 8),
    "tiny": (128, 256, 2, 2, 1),  # for a dry run of the scripts on a CPU
    "7b-4l": (3584, 18944, 4, 28, 4),  # 7B's layers, 4 of them: start-up costs per kernel, not per layer
}
QWEN25_VL_VISION = {
    # depth, hidden, intermediate, heads (as Qwen2.5-VL-7B's vision tower)
    "7b": (32, 1280, 3420, 16),
    "tiny": (2, 64, 128, 1),
    "7b-4l": (8, 1280, 3420, 16),
}


def _device_dtype():
    import torch

    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def tiny_vlm(work: Path) -> Path:
    """The tiny Qwen2-VL of the tests; its folder also provides a small tokenizer with a chat template."""
    folder = work / "tiny-qwen2-vl"
    return folder if (folder / "config.json").exists() else build_tiny_qwen2vl(folder)


def qwen25_text(work: Path, shape: str) -> Path:
    """A Qwen2.5-`shape`-shaped causal LM in bf16, built on the GPU and saved once.

    Its tokenizer is the tiny one (ids it lacks decode to nothing), and it has no EOS, so every
    sample generates exactly max_new_tokens: throughput equals that of real weights.
    """
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = work / f"qwen2.5-{shape}-shaped"
    if (folder / "config.json").exists():
        return folder
    hidden, inter, layers, heads, kv = QWEN25_SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    cfg = Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=152064,
                      max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False,
                      eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id)
    return _save_random(Qwen2ForCausalLM, cfg, tok, folder)


def _save_random(model_cls: type, cfg: object, tok: object, folder: Path) -> Path:
    """Initialise `model_cls(cfg)` on the GPU (CPU without one), without EOS; save it with `tok`."""
    import torch
    from transformers import GenerationConfig

    device, dtype = _device_dtype()
    with torch.device(device):
        model = model_cls(cfg).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def prompts(work: Path, n: int, tokens: int) -> list[str]:
    """`n` distinct prompts of about `tokens` tokens of the tiny tokenizer."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    rng = random.Random(0)
    vocab = [i for i in range(len(tok)) if not tok.convert_ids_to_tokens(i).startswith("<|")]
    out = []
    for _ in range(n):  # decode random ids, re-encode, cut to `tokens` ids: the text re-encodes to ~tokens
        text = tok.decode([rng.choice(vocab) for _ in range(2 * tokens)])
        out.append(tok.decode(tok(text)["input_ids"][:tokens]))
    return out


def chat_prompts(work: Path, n: int, tokens: int) -> list[str]:
    """`n` prompts whose chat-templated form (as the backend sends it) is about `tokens` tokens long."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    empty = tok.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    overhead = len(tok(empty, add_special_tokens=False)["input_ids"])
    return prompts(work, n, tokens - overhead)


def qwen25_vl(work: Path, shape: str) -> Path:
    """A Qwen2.5-VL-`shape`-shaped VLM (text as Qwen2.5-7B, vision tower as Qwen2.5-VL-7B's), no EOS,
    with the tiny tokenizer and an image processor that keeps 448x448 images at 256 image tokens."""
    import json
    import shutil

    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = work / f"qwen2.5-vl-{shape}-shaped"
    if (folder / "config.json").exists():
        return folder
    tiny = tiny_vlm(work)
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok.get_vocab()
    hidden, inter, layers, heads, kv = QWEN25_SHAPES[shape]
    depth, v_hidden, v_inter, v_heads = QWEN25_VL_VISION[shape]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=152064,
                         max_position_embeddings=32768, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,  # sections sum to head_dim / 2
                                          "mrope_section": [hidden // heads // 8, 3 * hidden // heads // 16,
                                                            3 * hidden // heads // 16]},
                         eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=depth, hidden_size=v_hidden, intermediate_size=v_inter, num_heads=v_heads,
                           out_hidden_size=hidden, fullatt_block_indexes=[7, 15, 23, 31][: max(1, depth // 8)],
                           window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    _save_random(Qwen2_5_VLForConditionalGeneration, cfg, tok, folder)
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    pre["size"] = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    shutil.copy(tiny / "chat_template.jinja", folder / "chat_template.jinja")
    return folder


SUBJECTS = ["the circle", "the background", "the largest shape", "the picture", "the top left corner"]
"""What questions about `images` ask about."""


def images(work: Path, n: int, size: int = 448) -> list[Path]:
    """`n` distinct PNG images of size x size (coloured shapes on noise)."""
    import random

    from PIL import Image, ImageDraw

    folder = work / f"images{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        if not path.exists():
            img = Image.effect_noise((size, size), 64).convert("RGB")
            draw = ImageDraw.Draw(img)
            x, y = rng.randrange(size // 2), rng.randrange(size // 2)
            draw.ellipse((x, y, x + size // 3, y + size // 3), fill=tuple(rng.randrange(256) for _ in range(3)))
            img.save(path)
        paths.append(path)
    return paths
