"""The fast paths give exactly the predictions of one-at-a-time `generate` (CPU, fp32, real tiny models)."""

import easy_vqa
import pytest
from PIL import Image

from evalfleet.backends import Request
from evalfleet.backends.transformers_backend import TransformersBackend
from evalfleet.config import ModelConfig

QUESTIONS = [
    "What is 2 + 3?", "What is the capital of France? Answer in one word.", "Name a colour.",
    "How many legs does a spider have?", "What is 12 + 7?", "Say hello.", "What is the capital of Japan?",
    "Which planet is the largest in the solar system? Explain briefly.",
]


def backend(path, engine: str, new_tokens: int = 12) -> TransformersBackend:
    cfg = ModelConfig(path=str(path), dtype="float32", engine=engine, generation={"max_new_tokens": new_tokens})
    b = TransformersBackend(cfg, n_gpus=0)
    b.load()
    return b


def answers(b: TransformersBackend, requests: list[Request], batch: int) -> list[tuple[str, int]]:
    out = []
    for i in range(0, len(requests), batch):
        out += [(g.text, g.n_tokens) for g in b.generate(b.prepare(requests[i : i + batch]))]
    return out


@pytest.fixture(scope="module")
def one_at_a_time(smollm2):
    requests = [Request(q, [], 0) for q in QUESTIONS]
    return requests, answers(backend(smollm2, "generate"), requests, 1)


def test_static_engine_equals_one_at_a_time_generate(smollm2, one_at_a_time):
    requests, reference = one_at_a_time
    static = backend(smollm2, "static")
    assert static.engine == "static"
    assert answers(static, requests, 8) == reference
    # A short last batch reuses the cache (padded rows), a batch of half or fewer gets its own cache.
    assert answers(static, requests, 5) == reference
    assert answers(static, requests, 2) == reference


def test_batched_generate_equals_one_at_a_time(smollm2, one_at_a_time):
    requests, reference = one_at_a_time
    assert answers(backend(smollm2, "generate"), requests, 8) == reference


def test_vlm_batches_equal_one_at_a_time(tiny_qwen2vl):
    paths = easy_vqa.get_test_image_paths()
    texts, _, image_ids = easy_vqa.get_test_questions()
    requests = [Request(texts[i], [Image.open(paths[image_ids[i]]).convert("RGB")], 0) for i in range(6)]
    b = backend(tiny_qwen2vl, "auto", new_tokens=6)
    assert b.engine == "generate"  # VLMs use transformers' loop
    assert answers(b, requests, 6) == answers(b, requests, 1)


def test_sliding_window_models_are_recognised():
    """Their static cache layers are rolling buffers: they go to transformers' `generate`."""
    from transformers import Gemma3TextConfig, MistralConfig, Qwen2Config

    from evalfleet.backends.transformers_backend import has_sliding_window

    assert has_sliding_window(MistralConfig(sliding_window=4096)) and has_sliding_window(Gemma3TextConfig())
    assert not has_sliding_window(MistralConfig(sliding_window=None)) and not has_sliding_window(Qwen2Config())


def test_auto_engine_and_refusals(smollm2):
    assert backend(smollm2, "auto").engine == "generate"  # static is auto-chosen on one GPU only
    with pytest.raises(ValueError, match="engine static needs a text model without sliding-window attention and greedy"):
        TransformersBackend(ModelConfig(path=str(smollm2), engine="static", generation={"temperature": 0.7}), 0)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_packed_vision_attention_equals_attention_per_image(tiny_qwen2vl, tiny_qwen25vl, arch):
    """Images of two sizes: one SDPA call per size and layer instead of one per image (or window), same output."""
    import torch
    from torch.profiler import profile
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evalfleet.backends.attention import VISION_ATTENTION, use_packed_vision_attention

    path = tiny_qwen2vl if arch == "qwen2_vl" else tiny_qwen25vl
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    paths = easy_vqa.get_test_image_paths()
    sizes = [(56, 56), (112, 84), (56, 56), (112, 84), (112, 84)]
    images = [Image.open(paths[i]).convert("RGB").resize(size) for i, size in enumerate(sizes)]
    inputs = AutoProcessor.from_pretrained(path).image_processor(images=images, return_tensors="pt")

    def features() -> tuple[torch.Tensor, int]:
        with torch.no_grad(), profile() as prof:
            out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        calls = sum(e.count for e in prof.key_averages() if e.key == "aten::scaled_dot_product_attention")
        return torch.cat(list(out)), calls

    reference, calls_per_image = features()
    assert use_packed_vision_attention(model) == 1
    assert model.model.visual.config._attn_implementation == VISION_ATTENTION
    packed, calls_packed = features()
    assert torch.equal(packed, reference)
    layers = model.config.vision_config.depth
    assert calls_per_image >= len(images) * layers and calls_packed == 2 * layers


def test_prompt_boundaries_separate_each_rows_padding_and_tokens():
    """Flash attention over left-padded prompts: a sequence per padding run and per row's tokens, in [B * T] order."""
    import torch

    from evalfleet.backends.attention import prompt_boundaries

    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    b = prompt_boundaries(mask)
    assert b["cu_seq_lens_q"].tolist() == [0, 2, 4, 8, 9, 12] and b["cu_seq_lens_q"].dtype == torch.int32
    assert b["max_length_q"] == 4 and b["cu_seq_lens_k"] is b["cu_seq_lens_q"]


def test_static_engine_one_token_prompts_equal_generate(smollm2):
    """Prompts of a single token take the decode-step attention path; their keys and values must still be cached."""
    import torch

    from evalfleet.backends.static_decode import StaticDecoder

    model = backend(smollm2, "static").model
    ids = torch.tensor([[504], [2133]])
    mask = torch.ones_like(ids)
    ours = StaticDecoder(model, cuda_graphs=False).generate(ids, mask, max_new_tokens=6, eos_ids=set(), pad_id=0)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                               eos_token_id=None)[:, 1:]
    assert torch.equal(ours, reference)


def test_static_engine_falls_back_when_a_layer_does_not_pass_the_sink_on(smollm2):
    """A model whose attention module drops unknown keyword arguments: the prompt goes through a dynamic cache."""
    import torch

    from evalfleet.backends.static_decode import StaticDecoder

    model = backend(smollm2, "static").model
    attn = model.model.layers[3].self_attn
    original = attn.forward

    def drops_extras(*args, kv_sink=None, **kwargs):
        return original(*args, **kwargs)

    attn.forward = drops_extras
    ids = torch.tensor([[504, 2133, 30], [2133, 504, 91]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    decoder = StaticDecoder(model, cuda_graphs=False)
    ours = decoder.generate(ids, mask, max_new_tokens=5, eos_ids=set(), pad_id=0)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                               eos_token_id=None)[:, 3:]
    assert not decoder.sink and torch.equal(ours, reference)
