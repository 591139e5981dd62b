"""The continuous engine (CPU, fp32, real tiny models): greedy answers equal one-at-a-time `generate` when slots
are refilled mid-run; sampled answers depend on the sample alone, not on its slot or neighbours."""

import gc
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import continuous_answers as streamed
from conftest import drain
from conftest import loaded_backend as backend

from evalfleet.backends import Request
from evalfleet.backends.transformers.sampling import Sampler, uniform

QUESTIONS = [
    "What is 2 + 3?", "What is the capital of France? Answer in one word.", "Name a colour.",
    "How many legs does a spider have?", "What is 12 + 7?", "Say hello.", "What is the capital of Japan?",
    "Which planet is the largest in the solar system? Explain briefly.", "Count to five.", "Write a haiku.",
]


@pytest.fixture(scope="module")
def reference(smollm2):
    requests = [Request(q, [], 0) for q in QUESTIONS]
    b = backend(smollm2, "generate", new_tokens=20)
    return requests, [(g.text, g.n_tokens) for r in requests for g in b.generate(b.prepare([r]))]


def test_refilled_slots_give_one_at_a_time_answers(smollm2, reference):
    requests, expected = reference
    lengths = {n for _, n in expected}
    assert len(lengths) > 1 and min(lengths) < 20  # rows end at different steps (EOS), so slots are refilled
    b = backend(smollm2, "continuous", new_tokens=20)
    for slots in (3, 1, 10):
        assert streamed(b, requests, slots) == expected, slots


def test_the_tail_decodes_fewer_slots_with_the_same_answers(smollm2, reference):
    """Once the queue is dry, busy slots move to the front (keys, values, state and tokens) and steps decode only
    as many slots as the smallest width that holds them."""
    requests, expected = reference
    b = backend(smollm2, "continuous", new_tokens=20)
    for slots in (3, 6):
        engines: list = []
        assert streamed(b, requests, slots, engines) == expected, slots
        (engine,) = engines
        assert engine.moves >= 1 and min(engine.steps_at) == 1, (slots, engine.steps_at)


def test_a_dropped_engine_is_freed_at_once(smollm2, reference):
    """No reference cycle holds an engine (and its cache, tens of GB on a GPU) until the collector runs."""
    requests, _ = reference
    b = backend(smollm2, "continuous", new_tokens=4)
    stream = b.stream(3, None)
    drain(stream, b.prepare(requests[:4]))
    engine = weakref.ref(stream.engine)
    gc.disable()
    try:
        del stream
        assert engine() is None
    finally:
        gc.enable()


def test_fused_kernels_switched_in_mid_run_keep_the_answers(smollm2, reference):
    """No batch waits for the compile (issue 20): the engine decodes with transformers' forwards until the fused
    kernels are ready, then switches them in between two steps (graphs captured again) with the same answers. The
    kernels here are the functions the GPU compiles, run eagerly."""
    from concurrent.futures import Future

    from transformers.models.llama import modeling_llama

    from evalfleet.backends.transformers.kernels import compiled as kernels
    from evalfleet.backends.transformers.kernels import fused

    requests, expected = reference
    b = backend(smollm2, "continuous", new_tokens=20)
    compiled: Future = Future()
    b.kernels_changed = fused.fuse_when_ready(b.model, compiled)
    stream = b.stream(3, None)
    stream.engine.graphs.graphs[3] = None  # stands for a captured step: cleared when the kernels change
    answers: dict = {}
    stream.add(b.prepare(requests), list(range(len(requests))))
    try:
        switched_at = None
        while stream.busy:
            if switched_at is None and answers:  # mid-run: some rows done, others decoding, more waiting
                assert len(answers) < len(requests)
                stale = stream.engine.graphs.graphs[3] = object()  # stands for a step captured unfused
                compiled.set_result(kernels.Kernels(kernels.rms_norm, kernels.silu_mul, kernels.rotary_rows,
                                                    kernels.rotary_vision))
                switched_at = len(answers)
            answers.update(stream.step())
            if switched_at is not None:
                assert stream.engine.graphs.graphs[3] is not stale  # the decode step was captured again
        assert switched_at is not None
        patched = [m for m in b.model.modules() if "forward" in vars(m)]
        assert len(patched) == 3 * b.model.config.num_hidden_layers + 1  # two norms and an MLP a layer, final norm
        assert hasattr(modeling_llama.apply_rotary_pos_emb, "original")
    finally:
        modeling_llama.apply_rotary_pos_emb = getattr(modeling_llama.apply_rotary_pos_emb, "original",
                                                      modeling_llama.apply_rotary_pos_emb)
    assert [(answers[i].text, answers[i].n_tokens) for i in range(len(requests))] == expected
    assert not b.kernels_changed()  # once


def test_moe_refilled_slots_give_one_at_a_time_answers(tmp_path):
    """A Qwen3-MoE (Qwen3-30B-A3B's architecture, tiny): its experts (evalfleet's forward around transformers'
    grouped GEMMs) in the engine's prefills and decode steps give the answers of transformers' own experts."""
    from conftest import spread_answer_lengths
    from tiny_models import build_tiny_moe

    path = build_tiny_moe(tmp_path / "moe")
    requests = [Request(q, [], 0) for q in QUESTIONS]
    spread_answer_lengths(path, requests, 16)
    ref = backend(path, "generate", new_tokens=16)
    ref.model.config._experts_implementation = "grouped_mm"  # transformers' default, as loaded
    expected = [(g.text, g.n_tokens) for r in requests for g in ref.generate(ref.prepare([r]))]
    assert len({n for _, n in expected}) > 1
    b = backend(path, "continuous", new_tokens=16)
    assert b.model.config._experts_implementation == "evalfleet"
    for slots in (3, 10):
        assert streamed(b, requests, slots) == expected, slots


def test_a_prompt_longer_than_the_cache_grows_it_while_others_decode(smollm2, reference):
    """The slots grow in place, each keeping what it holds (no waiting for the busy slots to drain)."""
    requests, expected = reference
    long = Request(" ".join(QUESTIONS * 2), [], 0)  # ~170 tokens: past the first cache's 64 positions
    ref = backend(smollm2, "generate", new_tokens=20)
    expected = expected + [(g.text, g.n_tokens) for g in ref.generate(ref.prepare([long]))]
    b = backend(smollm2, "continuous", new_tokens=20)
    stream = b.stream(4, b.prepare(requests[:1]))  # sized for the first prompt only
    assert stream is not None
    before = stream.engine.length
    assert [(g.text, g.n_tokens) for g in drain(stream, b.prepare([*requests, long]))] == expected
    assert stream.engine.length > before
    assert any("grown" in line and "requests decoding" in line for line in stream.log), stream.log


def test_sampled_answers_depend_on_the_sample_alone(smollm2):
    requests = [Request(q, [], seed) for q in QUESTIONS for seed in (1, 2)]
    b = backend(smollm2, "continuous", new_tokens=16, temperature=0.9, top_p=0.9)
    wide = streamed(b, requests, 20)
    narrow = streamed(b, requests[::-1], 3)[::-1]  # other slots, other neighbours, another order
    assert wide == narrow
    assert sum(a != b for a, b in zip(wide[::2], wide[1::2])) >= 3  # the seed matters: sampling happened
    greedy = streamed(backend(smollm2, "continuous", new_tokens=16), requests, 20)
    assert wide != greedy


def test_sampler_keeps_the_nucleus_and_draws_by_seed_and_step():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(20000, 1)
    seeds, steps = torch.arange(20000), torch.zeros(20000, dtype=torch.long)
    probs = logits[0].softmax(-1)
    drawn = torch.bincount(Sampler(1.0)(logits, seeds, steps), minlength=5) / 20000
    assert torch.allclose(drawn, probs, atol=0.01)
    nucleus = torch.bincount(Sampler(1.0, top_p=0.7)(logits, seeds, steps), minlength=5) / 20000
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - probs[0] / probs[:2].sum()) < 0.01
    top2 = torch.bincount(Sampler(1.0, top_k=2)(logits, seeds, steps), minlength=5) / 20000
    assert top2[2:].sum() == 0
    assert not torch.equal(uniform(seeds, steps), uniform(seeds, steps + 1))
    assert torch.equal(uniform(seeds[:5], steps[:5]), uniform(seeds, steps)[:5])


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_model_equals_generate(tmp_path, smollm2, arch):
    """A 6-token window: prompts longer than the window attend over the window only. Mistral: every layer;
    Gemma 3: sliding layers beside a full one, each kind with its own rotary base, queries scaled apart."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    shape = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, sliding_window=6, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "mistral":
        MistralForCausalLM(MistralConfig(**shape)).save_pretrained(tmp_path)
    else:
        config = Gemma3TextConfig(**shape, head_dim=32, query_pre_attn_scalar=24,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"])
        Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    requests = [Request(q, [], 0) for q in QUESTIONS[:5]]
    ref = backend(tmp_path, "generate", new_tokens=10)
    expected = [(g.text, g.n_tokens) for r in requests for g in ref.generate(ref.prepare([r]))]
    assert streamed(backend(tmp_path, "continuous", new_tokens=10), requests, 2) == expected


def test_slots_that_do_not_fit_in_memory_are_halved(smollm2):
    """Under an address-space limit 1.5 GB above the loaded model, 4,096 slots (~12 GB of cache) cannot be allocated:
    the engine starts with fewer slots and still answers."""
    script = f"""
import resource
from evalfleet.backends import Request
from evalfleet.config import ModelConfig
from evalfleet.backends.transformers.backend import TransformersBackend
b = TransformersBackend(ModelConfig(path={str(smollm2)!r}, dtype="float32", engine="continuous",
                                    generation={{"max_new_tokens": 8}}), n_gpus=0)
b.load()
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 1_500_000_000, resource.RLIM_INFINITY))
stream = b.stream(4096, None)
print("slots", stream.engine.slots)
stream.add(b.prepare([Request("Say hello.", [], 0)]), [0])
while stream.busy:
    for _, g in stream.step():
        print("answer", g.text)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    slots = int(out.stdout.split("slots ")[1].split()[0])
    assert 1 <= slots < 4096 and "answer Hello" in out.stdout, out.stdout
