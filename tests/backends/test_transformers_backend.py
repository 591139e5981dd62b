"""The transformers backend: whole batches give exactly the predictions of one-at-a-time `generate`, the engine is
chosen by one rule, and packed vision attention equals attention per image (CPU, fp32, real tiny models). The
continuous engine's own tests are test_continuous*.py."""

import easy_vqa
import pytest
from PIL import Image

from evalfleet.backends import Request
from evalfleet.backends.transformers.backend import TransformersBackend
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


def test_batched_generate_equals_one_at_a_time(smollm2, one_at_a_time):
    requests, reference = one_at_a_time
    assert answers(backend(smollm2, "generate"), requests, 8) == reference


def test_vlm_batches_equal_one_at_a_time(tiny_qwen2vl):
    paths = easy_vqa.get_test_image_paths()
    texts, _, image_ids = easy_vqa.get_test_questions()
    requests = [Request(texts[i], [Image.open(paths[image_ids[i]]).convert("RGB")], 0) for i in range(6)]
    b = backend(tiny_qwen2vl, "generate", new_tokens=6)
    assert answers(b, requests, 6) == answers(b, requests, 1)


def test_auto_engine_is_the_continuous_one_where_it_runs_the_model(smollm2, tiny_qwen2vl):
    """One rule (`kinds.engine_for`) for the plan and the backend: the continuous engine for text models and the
    VLMs it knows, on one GPU or the CPU; whole batches through `generate` otherwise."""
    from evalfleet.backends.kinds import engine_for

    assert backend(smollm2, "auto").engine == "continuous"
    assert TransformersBackend(ModelConfig(path=str(tiny_qwen2vl)), 0).engine == "continuous"
    rule = {"backend": "transformers", "model_type": "llava", "vision": True}
    assert engine_for("auto", **rule, gpus=1)[0] == "generate"  # a VLM the engine does not know
    assert engine_for("auto", **{**rule, "model_type": "qwen2_5_vl"}, gpus=2)[0] == "generate"  # over 2 GPUs
    assert engine_for("auto", **{**rule, "model_type": "qwen2_5_vl"}, gpus=1)[0] == "continuous"
    assert engine_for("auto", backend="diffusers", model_type=None, vision=False, gpus=1)[0] == "generate"
    with pytest.raises(ValueError, match="engine continuous cannot run this model: it is a VLM \\(llava\\)"):
        engine_for("continuous", **rule, gpus=1)
    with pytest.raises(ValueError, match="its replicas span several GPUs"):
        engine_for("continuous", backend="transformers", model_type="qwen2", vision=False, gpus=4)


def test_the_static_engine_setting_reads_as_continuous(smollm2):
    with pytest.warns(DeprecationWarning, match="static"):
        cfg = ModelConfig(path=str(smollm2), engine="static")
    assert cfg.engine == "continuous"


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_packed_vision_attention_equals_attention_per_image(tiny_qwen2vl, tiny_qwen25vl, arch):
    """Images of two sizes: one SDPA call per size and layer instead of one per image (or window), same output."""
    import torch
    from torch.profiler import profile
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evalfleet.backends.transformers.kernels.attention import VISION_ATTENTION, use_packed_vision_attention

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
