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
)

from evalfleet.backends import Generation, Request
from evalfleet.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_vision_model(config: Any) -> bool:
    """A checkpoint is treated as a VLM when its config has a vision tower."""
    return getattr(config, "vision_config", None) is not None


class TransformersBackend:
    """Batched `generate` with left padding; greedy unless the config asks for sampling."""

    def __init__(self, cfg: ModelConfig, n_gpus: int, max_memory_per_gpu: int | None = None) -> None:
        self.cfg = cfg
        dtype = DTYPES[cfg.resolved_dtype(on_gpu=n_gpus > 0)]
        if n_gpus == 0:
            device_map: Any = "cpu"
            self.label = f"CPU x{torch.get_num_threads()}"
        else:
            # One GPU: all on it. Several: accelerate's balanced device map, each GPU capped if asked.
            device_map = "cuda:0" if n_gpus == 1 else "balanced"
            self.label = torch.cuda.get_device_name(0) + (f" x{n_gpus}" if n_gpus > 1 else "")
            if max_memory_per_gpu is not None:
                for i in range(n_gpus):  # the cap binds the allocator too, not only the device map
                    total = torch.cuda.get_device_properties(i).total_memory
                    torch.cuda.set_per_process_memory_fraction(min(1.0, max_memory_per_gpu / total), i)
        max_memory = {i: max_memory_per_gpu for i in range(n_gpus)} if max_memory_per_gpu and n_gpus > 1 else None
        trust = cfg.trust_remote_code
        self.vision = is_vision_model(AutoConfig.from_pretrained(cfg.path, trust_remote_code=trust))
        if self.vision:
            self.processor = AutoProcessor.from_pretrained(cfg.path, trust_remote_code=trust)
            self.tokenizer = self.processor.tokenizer
            model_cls = AutoModelForImageTextToText
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=trust)
            model_cls = AutoModelForCausalLM
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model_cls.from_pretrained(
            cfg.path, dtype=dtype, device_map=device_map, max_memory=max_memory, trust_remote_code=trust
        )
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _messages(self, req: Request) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        if self.vision:
            content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.prompt}]
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "user", "content": req.prompt})
        return messages

    def _inputs(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        if self.vision:
            assert self.processor is not None
            texts = [
                self.processor.apply_chat_template(self._messages(r), add_generation_prompt=True, tokenize=False)
                for r in requests
            ]
            images = [r.images for r in requests] if any(r.images for r in requests) else None
            return self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        if self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(self._messages(r), add_generation_prompt=True, tokenize=False)
                for r in requests
            ]
            return self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        return self.tokenizer([r.prompt for r in requests], padding=True, return_tensors="pt")

    def _n_tokens(self, row: list[int]) -> int:
        for i, tok in enumerate(row):
            if tok in self.eos_ids:
                return i + 1
        return len(row)

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Generation]:
        gen = self.cfg.generation
        inputs = self._inputs(requests).to(self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if gen.temperature > 0:
            torch.manual_seed(requests[0].seed)
            kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()  # [batch, new_tokens]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(t.strip(), self._n_tokens(row)) for t, row in zip(texts, new)]
