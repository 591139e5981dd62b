"""Random-weight checkpoints of real architectures for GPU benchmarks (no hub needed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from tiny_models import build_tiny_qwen2vl  # noqa: E402

QWEN25_SHAPES = {
    # hidden, intermediate, layers, heads, kv heads (vocab 152064, untied, as Qwen2.5-7B/14B)
    "7b": (3584, 18944, 28, 28, 4),
    "14b": (5120, 13824, 48, 40, 8),
}


def tiny_vlm(work: Path) -> Path:
    """The tiny Qwen2-VL of the tests; its folder also provides a small tokenizer with a chat template."""
    folder = work / "tiny-qwen2-vl"
    return folder if (folder / "config.json").exists() else build_tiny_qwen2vl(folder)


def qwen25_text(work: Path, shape: str) -> Path:
    """A Qwen2.5-`shape`-shaped causal LM in bf16, built on the GPU and saved once.

    Its tokenizer is the tiny one (ids it lacks decode to nothing), and it has no EOS, so every
    sample generates exactly max_new_tokens: throughput equals that of real weights.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    folder = work / f"qwen2.5-{shape}-shaped"
    if (folder / "config.json").exists():
        return folder
    hidden, inter, layers, heads, kv = QWEN25_SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
    cfg = Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=152064,
                      max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False,
                      eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
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
