"""Shared prefixes on the continuous engine (issue 37; CPU, fp32, real tiny models): prompts that begin alike (few-shot
turns, the same picture) copy the held prefix's keys and values and prefill the rest; greedy answers equal the
engine's without sharing, the same question over different pictures of one size included (image tokens are one
placeholder id: only the pictures' content tells those prompts apart)."""

import easy_vqa
import numpy as np
import pytest
from conftest import continuous_answers as streamed
from conftest import loaded_backend as backend
from PIL import Image
from tiny_models import VLM_ARCHS, build_tiny_qwen2vl

from evalfleet.backends import Request
from evalfleet.backends.transformers.prefix import BLOCK, PrefixIndex, prompt_blocks, reusable

FEW_SHOT = [
    {"role": "system", "content": "Answer each arithmetic question with the number alone, as in the examples."},
    *[turn for a, b in [(3, 4), (10, 5), (7, 8), (12, 9), (6, 6)]
      for turn in ({"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)})],
]


def text_requests() -> list[Request]:
    questions = [f"What is {a} + {b}?" for a, b in [(2, 3), (11, 4), (9, 9), (15, 1), (8, 13), (4, 4), (20, 7)]]
    shot = [Request(q, [], k, context=FEW_SHOT) for k, q in enumerate(questions)]
    return shot + [Request("Name a colour.", [], 9), shot[0]]  # one without the turns; one asked twice


def test_few_shot_prompts_prefill_their_shared_turns_once(smollm2):
    """Slots 2: prefixes copied from busy and from freed slots; 9: one admission, the turns prefilled by its first
    request and copied by the others in a second pass."""
    requests = text_requests()
    expected = streamed(backend(smollm2, "continuous", 12, share_prefixes=False), requests, 9)
    shared = backend(smollm2, "continuous", 12)
    for slots in (2, 9):
        engines: list = []
        assert streamed(shared, requests, slots, engines) == expected, slots
        counts = engines[0].counts
        turns = len(shared.prepare(requests[:1]).inputs[0].ids) - 12  # about the few-shot prefix's length
        assert counts["shared_tokens"] >= 7 * (turns - BLOCK), (slots, counts)
        assert counts["prompt_tokens"] == sum(len(r.ids) for r in shared.prepare(requests).inputs)


def vlm_requests() -> list[Request]:
    """One picture asked five questions (one twice), one question over two other pictures of the same size (noise,
    black, white: pictures that change this random model's answer; the black one is asked a second question too),
    the first picture at another size, and a text question."""
    questions, _, _ = easy_vqa.get_test_questions()
    a = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    b, c = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))
    system = [{"role": "system", "content": "Look at the picture, then answer the question in one or two words."}]
    out = [
        *[Request(q, [a], seed=k) for k, q in enumerate(questions[:4])],
        Request(questions[0], [b], seed=4), Request(questions[0], [c], seed=5),
        Request(questions[0], [a.resize((112, 112))], seed=6), Request(questions[5], [], seed=7),
        Request(questions[0], [a], seed=8), Request(questions[1], [b], seed=9),
    ]
    for r in out:
        r.context = system
    return out


@pytest.fixture(scope="module", params=VLM_ARCHS)
def vlm(request, tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / request.param, arch=request.param)


def test_a_picture_asked_many_questions_is_encoded_once(vlm):
    requests = vlm_requests()
    unshared = backend(vlm, "continuous", 8, share_prefixes=False)
    expected = streamed(unshared, requests, 10)
    # The test has teeth where other pictures change the answer to the same question: a match blind to the pictures'
    # content would then change answers. So for the Qwen models; this random GLM-4.1V answers the three alike.
    assert len({expected[0], expected[4], expected[5]}) > 1 or vlm.name == "glm4v", expected
    shared = backend(vlm, "continuous", 8)
    for slots in (10, 2):
        engines: list = []
        assert streamed(shared, requests, slots, engines) == expected, slots
        counts = engines[0].counts
        assert counts["images"] == 9, counts
        if slots == 10:  # one admission: each distinct picture (and size) through the vision tower once (the black
            assert counts["images_encoded"] == 4, counts  # one's first question prefilled first, for its second)
        assert counts["images_encoded"] < counts["images"] and counts["shared_tokens"] > 0, (slots, counts)


def test_a_picture_is_preprocessed_once_into_the_same_inputs(vlm):
    """The processor's image processor keeps each picture's patches (issue 37): a batch of 8 pictures, 4 of them
    distinct objects, is preprocessed 4 times, into the inputs the processor makes without the cache."""
    import torch

    b = backend(vlm, "continuous", 8)
    cached = b.processor.image_processor
    prepared = b.prepare(vlm_requests())
    assert cached.processed == 4
    assert b.prepare(vlm_requests()[:4]).inputs[0].ids == prepared.inputs[0].ids and cached.processed == 5  # (new a)
    from evalfleet.records import SOURCE_KEY  # a picture that names its source is keyed by it (not hashed)

    named = vlm_requests()
    named[0].images[0].info[SOURCE_KEY] = b"s" * 16
    assert b.prepare(named[:1]).inputs[0].images[0][2] == b"s" * 16
    from evalfleet.backends.transformers.processors import CachedImageProcessor

    threaded = CachedImageProcessor(cached.inner, compact=True, dtype=cached.dtype, threads=3)  # a GPU worker's
    b.processor.image_processor = threaded  # (its new pictures preprocessed three at once)
    try:
        in_threads = b.prepare(vlm_requests())
        b.processor.image_processor = cached.inner
        plain = b.prepare(vlm_requests())
    finally:
        b.processor.image_processor = cached
    assert threaded.processed == 4
    for inputs in (prepared.inputs, in_threads.inputs):
        for got, want in zip(inputs, plain.inputs):
            assert got.ids == want.ids and got.images == want.images
            for key in ("pixel_values", "image_grid_thw", "mm_token_type_ids"):
                assert (key in got.media) == (key in want.media) and (key not in got.media
                                                                      or torch.equal(got.media[key], want.media[key]))


def test_prefix_cuts_and_the_index():
    ids = list(range(100))
    image = (20, 60, b"a" * 16)
    blocks = prompt_blocks(ids, [image])
    assert len(blocks) == 100 // BLOCK
    assert prompt_blocks(ids, [(20, 60, b"b" * 16)])[1:] != blocks[1:]  # another picture: other blocks from its first
    assert prompt_blocks(ids, [(20, 60, b"b" * 16)])[0] == blocks[0]  # (the block before it is the same)
    assert reusable(48, 100, [image]) == 20 and reusable(30, 100, [(10, 60, b"a")]) == 0  # never inside an image
    assert reusable(64, 100, [image]) == 64 and reusable(100, 100, []) == 99 and reusable(10, 100, []) == 0
    index = PrefixIndex(4)
    index.hold(1, ids, [image], blocks)
    assert index.lookup(ids, [image], blocks) == (1, 100)
    other = ids[:40] + [0] * 60
    assert index.lookup(other, [image], prompt_blocks(other, [image])) == (1, 40)  # on past the last whole block
    b_image = (20, 60, b"b" * 16)  # another picture in the same place: the match stops where its tokens begin
    assert index.lookup(ids, [b_image], prompt_blocks(ids, [b_image])) == (1, 20)
    index.move([1], [0])
    assert index.lookup(ids, [image], blocks) == (0, 100)
    index.forget(0)
    assert index.lookup(ids, [image], blocks)[0] == 1  # slot 1 still holds its copy until overwritten
    index.forget(1)
    assert index.lookup(ids, [image], blocks) == (None, 0)
