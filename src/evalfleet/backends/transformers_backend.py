"""In-process transformers backend: text causal LMs (chat template) and VLMs (AutoProcessor)."""

from __future__ import annotations

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

from evalfleet.backends.attention import use_decode_attention, use_packed_vision_attention
from evalfleet.backends.base import Backend, Generation, Prepared, Request
from evalfleet.backends.fused import fuse_elementwise
from evalfleet.backends.static_decode import StaticDecoder
from evalfleet.config import ModelConfig


def is_vision_model(config: Any) -> bool:
    """A checkpoint is treated as a VLM when its config has a vision tower."""
    return getattr(config, "vision_config", None) is not None


def has_sliding_window(config: Any) -> bool:
    """Some layers attend over a window only (Mistral v0.1, Gemma 3, Phi-3): their static cache layers are
    rolling buffers, which the static engine's prompt writes do not handle."""
    if types := getattr(config, "layer_types", None):
        return any("sliding" in t for t in types)
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


def _tensors(encoding: BatchEncoding) -> BatchEncoding:
    """Token ids as torch tensors by way of numpy: `return_tensors="pt"` builds them from nested lists, a third of
    the time of tokenizing 512 prompts."""
    return BatchEncoding({k: torch.from_numpy(v) for k, v in encoding.items()})


class TransformersBackend(Backend):
    """Batched generation with left padding; greedy unless the config asks for sampling.

    Engines: `static` (preallocated KV cache, CUDA-graph decode step; text models, greedy) and
    `generate` (transformers' own loop; VLMs, sampling, CPU by default).
    """

    def __init__(self, cfg: ModelConfig, n_gpus: int, max_memory_per_gpu: int | None = None) -> None:
        """Reads the config and the tokenizer (or processor): enough to `prepare`; `load` loads the weights."""
        self.cfg, self.n_gpus, self.max_memory_per_gpu = cfg, n_gpus, max_memory_per_gpu
        trust = cfg.trust_remote_code
        config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=trust)
        self.vision = is_vision_model(config)
        self.sliding = has_sliding_window(getattr(config, "text_config", config))
        if self.vision:
            self.processor = AutoProcessor.from_pretrained(cfg.path, trust_remote_code=trust)
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=trust)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.engine = self._choose_engine(n_gpus)
        where = (f"CPU x{torch.get_num_threads()}" if n_gpus == 0
                 else torch.cuda.get_device_name(0) + (f" x{n_gpus}" if n_gpus > 1 else ""))
        self.label = f"{where} [{self.engine}]"
        self.model: Any = None
        self.decoder: StaticDecoder | None = None
        self.eos_ids: set[int] = set()

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
        self.model = model_cls.from_pretrained(cfg.path, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                               trust_remote_code=cfg.trust_remote_code)
        self.model.eval()
        use_decode_attention(self.model)
        if self.vision:
            use_packed_vision_attention(self.model)
        fuse_elementwise(self.model)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.engine == "static":
            self.decoder = StaticDecoder(self.model, cuda_graphs=n_gpus > 0)

    def warm_up(self, prepared: Prepared) -> None:
        """Get ready for batches shaped like `prepared` (the static engine captures its decode step now)."""
        if self.decoder is not None:
            rows, prompt_len = prepared.inputs["input_ids"].shape
            self.decoder.warm_up(rows, prompt_len, self.cfg.generation.max_new_tokens, self.tokenizer.pad_token_id)

    def _choose_engine(self, n_gpus: int) -> str:
        """`auto`: the static-cache engine for greedy text models without sliding windows on one GPU, `generate`
        otherwise."""
        engine = self.cfg.engine
        static_ok = not self.vision and not self.sliding and self.cfg.generation.temperature == 0
        if engine == "static" and not static_ok:
            raise ValueError("engine static needs a text model without sliding-window attention and greedy "
                             "decoding (temperature 0)")
        if engine == "auto":
            engine = "static" if static_ok and n_gpus == 1 else "generate"
        return engine

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
        elif self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(r.messages(system, r.prompt), add_generation_prompt=True,
                                                   tokenize=False)
                for r in requests
            ]
            inputs = _tensors(self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="np"))
        else:
            texts = [r.plain_text(system) for r in requests]
            inputs = _tensors(self.tokenizer(texts, padding=True, return_tensors="np"))
        return Prepared(inputs, requests[0].seed, texts)

    def _n_tokens(self, row: list[int]) -> int:
        for i, tok in enumerate(row):
            if tok in self.eos_ids:
                return i + 1
        return len(row)

    @torch.inference_mode()
    def generate(self, prepared: Prepared) -> list[Generation]:
        gen = self.cfg.generation
        inputs = prepared.inputs.to(self.model.device)
        pad = self.tokenizer.pad_token_id
        if self.decoder is not None:
            new_t = self.decoder.generate(inputs["input_ids"], inputs["attention_mask"],
                                          max_new_tokens=gen.max_new_tokens, eos_ids=self.eos_ids, pad_id=pad)
        else:
            kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "pad_token_id": pad}
            if gen.temperature > 0:
                torch.manual_seed(prepared.seed)
                kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            new_t = self.model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
        new = new_t.tolist()  # [batch, new_tokens]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(t.strip(), self._n_tokens(row)) for t, row in zip(texts, new)]
