"""Memory estimates against real checkpoints: parameter counts, KV-cache bytes, image tokens."""

import shutil

import easy_vqa
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from evalfleet.plan.memory import estimate_model, longest_prompt_tokens


def test_params_and_kv_bytes_of_smollm2_match_the_loaded_model(smollm2, tmp_path):
    est = estimate_model(str(smollm2), dtype="float32", max_new_tokens=16, prompt_tokens=100)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert est.params == model.num_parameters()
    assert est.weight_bytes == 4 * model.num_parameters()
    n = 40
    with torch.inference_mode():
        cache = model(torch.ones(1, n, dtype=torch.long), use_cache=True).past_key_values
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert est.kv_bytes_per_token == kv // n
    assert est.tokens_per_sample == 100 + 32 + 16
    # Without safetensors the count comes from config.json, close to the real one.
    shutil.copy(smollm2 / "config.json", tmp_path / "config.json")
    rough = estimate_model(str(tmp_path), dtype="bfloat16", max_new_tokens=16, prompt_tokens=0)
    assert rough.source.startswith("config.json") and rough.params == pytest.approx(est.params, rel=0.01)


def test_image_tokens_of_qwen2vl_match_the_processor(tiny_qwen2vl):
    image = Image.open(easy_vqa.get_test_image_paths()[0])
    est = estimate_model(str(tiny_qwen2vl), dtype="float32", max_new_tokens=8, prompt_tokens=10,
                         image_sizes=[image.size], images_per_sample=1)
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert est.image_tokens == ids.count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) > 0


def test_longest_prompt_is_counted_with_the_checkpoints_tokenizer(smollm2, tmp_path):
    prompts = ["short", "What is the capital of France? " * 10, "a b"]
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert longest_prompt_tokens(str(smollm2), prompts) == len(tok(prompts[1])["input_ids"])
    assert longest_prompt_tokens(str(tmp_path), prompts) == len(prompts[1]) // 3  # no tokenizer there
