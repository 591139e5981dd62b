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
    return TransformersBackend(cfg, n_gpus=0)


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


def test_auto_engine_and_refusals(smollm2):
    assert backend(smollm2, "auto").engine == "generate"  # static is auto-chosen on one GPU only
    with pytest.raises(ValueError, match="engine static needs a text model and greedy decoding"):
        TransformersBackend(ModelConfig(path=str(smollm2), engine="static", generation={"temperature": 0.7}), 0)
