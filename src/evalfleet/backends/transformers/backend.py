"""In-process transformers backend: text causal LMs (chat template) and VLMs (AutoProcessor), decoded by the
continuous engine (`engine.py`), or in whole batches by transformers' `generate` where the engine cannot run the
model (`kinds.engine_for`: a replica over several GPUs, a VLM the engine does not know)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BatchEncoding,
)

from evalfleet.backends.base import Backend, Generation, Prepared, Request, free_memory, is_out_of_memory
from evalfleet.backends.kinds import engine_for
from evalfleet.backends.transformers.engine import ContinuousEngine, Row
from evalfleet.backends.transformers.kernels import experts
from evalfleet.backends.transformers.kernels.attention import use_decode_attention, use_packed_vision_attention
from evalfleet.backends.transformers.kernels.compiled import compile_kernels
from evalfleet.backends.transformers.kernels.fused import fuse_elementwise, fuse_when_ready
from evalfleet.backends.transformers.prefix import prompt_blocks
from evalfleet.backends.transformers.processors import CachedImageProcessor, without_video_processor
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.backends.transformers.slot_cache import SLOT_ATTENTION
from evalfleet.backends.transformers.stream import TokenStream
from evalfleet.backends.transformers.vision import split_batch
from evalfleet.config import ModelConfig
from evalfleet.records import SOURCE_KEY

log = logging.getLogger("evalfleet")


def is_vision_model(config: Any) -> bool:
    """A checkpoint is treated as a VLM when its config has a vision tower."""
    return getattr(config, "vision_config", None) is not None


def _tensors(encoding: BatchEncoding) -> BatchEncoding:
    """Token ids as torch tensors by way of numpy: `return_tensors="pt"` builds them from nested lists, a third of
    the time of tokenizing 512 prompts."""
    return BatchEncoding({k: torch.from_numpy(v) for k, v in encoding.items()})


class TransformersBackend(Backend):
    """Prompts templated and tokenized, answers decoded; greedy unless the config asks for sampling.

    Its engine is the config's (the plan resolves `auto`, `plan/stage.py`; else it is chosen here by the same rule):
    `continuous` streams requests through the engine; `generate` answers whole batches, left-padded, with
    transformers' loop (`backends.stream_of` streams them).
    """

    def __init__(self, cfg: ModelConfig, n_gpus: int, max_memory_per_gpu: int | None = None) -> None:
        """Reads the config, and the tokenizer (or processor) in a thread: enough to `prepare`; `load` loads the
        weights."""
        self.cfg, self.n_gpus, self.max_memory_per_gpu = cfg, n_gpus, max_memory_per_gpu
        trust = cfg.trust_remote_code
        config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=trust)
        self.kernels, self.kernels_cached = None, False  # compiled while the tokenizer and the weights load
        self.set_up = threading.Event()  # lets a first compile on this machine start (`kernels.compile_kernels`)
        if n_gpus and torch.cuda.is_available():
            self.kernels, self.kernels_cached, self.set_up = compile_kernels(
                config, getattr(torch, cfg.resolved_dtype(on_gpu=True)), "cuda:0")
        self.vision = is_vision_model(config)
        self.picture_threads = min(8, torch.get_num_threads()) if n_gpus else 1
        self.image_token_id = getattr(config, "image_token_id", None)
        self.engine, _ = engine_for(cfg.engine, backend=cfg.backend, model_type=getattr(config, "model_type", None),
                                    vision=self.vision, gpus=n_gpus)
        self.continuous = self.engine == "continuous"  # (read by `_load_text`: set before its thread starts)
        self._text: Future[tuple[Any, Any]] = Future()  # (processor, tokenizer), read in a thread: it overlaps
        threading.Thread(target=self._load_text, name="tokenizer", daemon=True).start()  # the weights' loading
        where = (f"CPU x{torch.get_num_threads()}" if n_gpus == 0
                 else torch.cuda.get_device_name(0) + (f" x{n_gpus}" if n_gpus > 1 else ""))
        self.label = f"{where} [{self.engine}]"
        self.model: Any = None
        self.eos_ids: set[int] = set()
        self.kernels_changed: Any = lambda: False
        """True once, when the fused kernels compiled during the load have been switched in."""

    def _load_text(self) -> None:
        try:
            path, trust = self.cfg.path, self.cfg.trust_remote_code
            if self.vision:  # where torchvision cannot be imported: images only (it imports torchvision: here,
                without_video_processor()  # beside the weights, not before them)
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust) if self.vision else None
            if processor is not None and getattr(processor, "image_processor", None) is not None:
                processor.image_processor = CachedImageProcessor(  # (compact: the engine takes each request's
                    processor.image_processor, compact=self.continuous, dtype=self._dtype(),  # patches from it)
                    threads=self.picture_threads)
            tokenizer = processor.tokenizer if processor is not None else \
                AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._text.set_result((processor, tokenizer))
        except Exception as err:  # noqa: BLE001  # raised where the tokenizer is first used, and by `load`
            self._text.set_exception(err)

    processor = property(lambda self: self._text.result()[0], doc="The VLM's processor (None for text models).")
    tokenizer = property(lambda self: self._text.result()[1])

    def load(self) -> None:
        """Load the weights (one GPU: all on it; several: accelerate's balanced device map, each GPU capped if
        asked) and switch in evalfleet's attention and fused kernels."""
        cfg, n_gpus, cap = self.cfg, self.n_gpus, self.max_memory_per_gpu
        dtype = getattr(torch, cfg.resolved_dtype(on_gpu=n_gpus > 0))  # the config names torch dtypes
        device_map: Any = "cpu" if n_gpus == 0 else "cuda:0" if n_gpus == 1 else "balanced"
        if n_gpus and cap is not None:
            for i in range(n_gpus):  # the cap binds the allocator too, not only the device map
                total = torch.cuda.get_device_properties(i).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), i)
        max_memory = {i: cap for i in range(n_gpus)} if cap and n_gpus > 1 else None
        model_cls = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        t0 = time.perf_counter()
        model = model_cls.from_pretrained(cfg.path, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                          trust_remote_code=cfg.trust_remote_code)
        self._text.result()  # the tokenizer, read beside the weights: one that failed to load raises here
        t1 = time.perf_counter()
        self.use_model(model)
        self.startup = {"weights": round(t1 - t0, 3), "kernels": round(time.perf_counter() - t1, 3)}

    def use_model(self, model: Any) -> None:
        """Take `model` (loaded, or built in memory by a benchmark) and switch in evalfleet's attention and fused
        kernels for the engine."""
        self.model = model
        self.model.eval()
        if self.continuous:
            self.model.set_attn_implementation(SLOT_ATTENTION)
        use_decode_attention(self.model)
        experts.use(self.model)  # MoE layers: transformers' grouped GEMMs, less glue around them
        if self.vision:
            use_packed_vision_attention(self.model)
        if self.kernels is None or self.kernels_cached:  # waited for: seconds from the cache
            self.set_up.set()  # (a first compile waits for this event: nothing is left to overlap it with)
            fuse_elementwise(self.model, self.kernels)
        else:  # never compiled here: no batch waits for it; the kernels are switched in between steps once compiled
            self.kernels_changed = fuse_when_ready(self.model, self.kernels)  # (now, if they are: before a capture)
            self.kernels_changed()
        self.kernels = None
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def stream(self, slots: int, first: Prepared | None) -> TokenStream | None:
        """The continuous engine with `slots` decode slots, its cache sized for prompts as long as `first`'s longest
        (it grows when a longer one comes); None with the `generate` engine."""
        if not self.continuous:
            return None
        self.kernels_changed()  # compiled since the load: switched in before the engine captures its steps
        gen = self.cfg.generation
        longest = max((len(r.ids) for r in first.inputs), default=0) if first is not None else 0
        sampler = Sampler(gen.temperature, gen.top_p, gen.top_k)
        if self.n_gpus:
            sampler.compile()
        notes = []
        while True:  # a cache that does not fit: half the slots, down to one
            try:
                engine = ContinuousEngine(self.model, slots=slots, length=longest + gen.max_new_tokens,
                                          max_new_tokens=gen.max_new_tokens, eos_ids=self.eos_ids, sampler=sampler,
                                          cuda_graphs=self.n_gpus > 0, share_prefixes=self.cfg.share_prefixes)
                self.set_up.set()  # its first steps captured: a first compile on this machine may start now
                engine.log += notes
                return TokenStream(engine, self._decode, self.kernels_changed)
            except Exception as err:
                if not is_out_of_memory(err) or slots == 1:
                    raise
            free_memory()
            notes.append(f"out of memory allocating {slots} decode slots; trying {slots // 2}")
            slots //= 2

    def _decode(self, tokens: list[int]) -> Generation:
        return Generation(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens))

    def prepare(self, requests: list[Request]) -> Prepared:
        """Template, tokenize and preprocess images on the CPU (runs in the worker's prefetch thread)."""
        system = self.cfg.system_prompt
        if self.vision:
            assert self.processor is not None
            texts = [
                self.processor.apply_chat_template(
                    r.messages(system, [*({"type": "image"} for _ in r.images), {"type": "text", "text": r.prompt}]),
                    add_generation_prompt=True, tokenize=False)
                for r in requests
            ]
            images = [r.images for r in requests] if any(r.images for r in requests) else None
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
            if self.continuous:  # one request per sample, unpadded, with its own images
                known = [getattr(i, "info", {}).get(SOURCE_KEY) for r in requests for i in r.images]
                cached = self.processor.image_processor
                pictures = cached.pictures() if images and isinstance(cached, CachedImageProcessor) else None
                rows = split_batch(inputs, [len(r.images) for r in requests], self.image_token_id, self._dtype(),
                                   model=self.model, known=known, pictures=pictures)  # the model: once loaded
                inputs = [Row(None, ids, r.seed, media, images, self._blocks(ids, images))
                          for (ids, media, images), r in zip(rows, requests)]
        else:
            templated = bool(self.tokenizer.chat_template)
            texts = [self.tokenizer.apply_chat_template(r.messages(system, r.prompt), add_generation_prompt=True,
                                                        tokenize=False) if templated else r.plain_text(system)
                     for r in requests]
            special = {"add_special_tokens": False} if templated else {}  # the template has them
            if self.continuous:  # no padding: each request is a list of ids, with its seed
                ids = self.tokenizer(texts, **special)["input_ids"]
                inputs = [Row(None, row, r.seed, blocks=self._blocks(row, [])) for row, r in zip(ids, requests)]
            else:
                inputs = _tensors(self.tokenizer(texts, padding=True, return_tensors="np", **special))
        return Prepared(inputs, requests, texts)

    def _dtype(self) -> torch.dtype:
        return getattr(torch, self.cfg.resolved_dtype(on_gpu=self.n_gpus > 0))

    def _blocks(self, ids: list[int], images: list[tuple[int, int, bytes]]) -> list[bytes]:
        """The prompt's block hashes, by which the engine finds a held prefix (`prefix.py`); none when sharing is
        off."""
        return prompt_blocks(ids, images) if self.cfg.share_prefixes else []

    def _n_tokens(self, row: list[int]) -> int:
        for i, tok in enumerate(row):
            if tok in self.eos_ids:
                return i + 1
        return len(row)

    @torch.inference_mode()
    def generate(self, prepared: Prepared) -> list[Generation]:
        """A left-padded batch's answers by transformers' `generate` (the `generate` engine)."""
        assert not self.continuous, "the continuous engine answers through `stream`"
        gen = self.cfg.generation
        self.set_up.set()  # the model's first forwards are done (or about to be): a first compile may start
        self.kernels_changed()
        inputs = prepared.inputs.to(self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if gen.temperature > 0:
            torch.manual_seed(prepared.seed)
            kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        new = self.model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :].tolist()  # [batch, new]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(t.strip(), self._n_tokens(row)) for t, row in zip(texts, new)]
