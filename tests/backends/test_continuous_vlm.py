"""VLMs on the continuous engine (CPU, fp32, tiny random Qwen2-VL, Qwen2.5-VL, Qwen3-VL and GLM-4.1V): the images
go through the vision tower inside a packed prefill, generated tokens take 3-D rotary positions from a per-slot
offset, and greedy answers equal one-at-a-time `generate` while slots are refilled mid-run."""

import easy_vqa
import pytest
from conftest import continuous_answers as streamed
from conftest import drain, spread_answer_lengths
from conftest import loaded_backend as backend
from PIL import Image
from tiny_models import VLM_ARCHS, build_tiny_qwen2vl

from evalfleet.backends import Request

NEW_TOKENS = 16


def requests() -> list[Request]:
    """Questions with one image, none, or two (one with its image twice: the same grid in two places)."""
    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    image = [Image.open(paths[i]).convert("RGB") for i in image_ids[:12]]
    out = []
    for k, question in enumerate(questions[:12]):
        images = [] if k % 5 == 0 else [image[k], image[k - 1]] if k % 5 == 3 else [image[k]]
        out.append(Request(question, images, seed=k))
    return out


@pytest.fixture(scope="module", params=VLM_ARCHS)
def vlm(request, tmp_path_factory):
    """A tiny VLM whose EOS ids include the generated token that makes answers end at the most different steps."""
    path = build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / request.param, arch=request.param)
    spread_answer_lengths(path, requests(), NEW_TOKENS)
    return path


def test_refilled_slots_give_one_at_a_time_answers(vlm):
    reference = backend(vlm, "generate", NEW_TOKENS)
    expected = [(g.text, g.n_tokens) for r in requests() for g in reference.generate(reference.prepare([r]))]
    lengths = [n for _, n in expected]
    assert len(set(lengths)) > 1 and min(lengths) < NEW_TOKENS, lengths  # rows end apart: slots are refilled
    b = backend(vlm, "continuous", NEW_TOKENS)
    for slots in (3, 1, 12):
        assert streamed(b, requests(), slots) == expected, slots


def test_sampled_vlm_answers_depend_on_the_sample_alone(vlm):
    b = backend(vlm, "continuous", NEW_TOKENS, temperature=0.9, top_p=0.9)
    wide = streamed(b, requests(), 12)
    assert streamed(b, requests()[::-1], 2)[::-1] == wide  # other slots, neighbours and order
    assert wide != streamed(backend(vlm, "continuous", NEW_TOKENS), requests(), 12)


def test_text_rows_without_media_on_a_vlm(vlm):
    """Requests added as plain token ids (no media) are text: the same answers as with their token types."""
    from dataclasses import replace

    b = backend(vlm, "continuous", NEW_TOKENS)
    text_only = [r for r in requests() if not r.images]
    prepared = b.prepare(text_only)
    stream = b.stream(2, None)
    expected = [(g.text, g.n_tokens) for g in drain(stream, prepared)]
    prepared.inputs = [replace(r, media=None) for r in prepared.inputs]
    assert [(g.text, g.n_tokens) for g in drain(stream, prepared)] == expected


def test_rotary_positions_prepared_with_the_model_or_computed_at_prefill_agree(vlm):
    """A batch prepared before the model loaded (a worker's first) has its rotary positions computed in the
    engine's prefill; later batches bring them from the prefetch thread: the answers are the same."""
    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig

    early = TransformersBackend(ModelConfig(path=str(vlm), dtype="float32", engine="continuous",
                                            generation={"max_new_tokens": NEW_TOKENS}), n_gpus=0)
    before = early.prepare(requests())  # no model yet
    early.load()
    after = early.prepare(requests())
    assert not any("positions" in r.media for r in before.inputs)
    assert all("positions" in r.media for r in after.inputs)
    stream = early.stream(3, None)
    assert [g.text for g in drain(stream, before)] == [g.text for g in drain(stream, after)]
