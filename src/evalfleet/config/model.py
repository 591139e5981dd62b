"""A model's settings: where it is, how it generates, which backend serves it."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationConfig(_Strict):
    """Decoding settings passed to the backend."""

    max_new_tokens: int = Field(64, ge=1)
    """Upper bound of generated tokens per sample."""
    temperature: float = Field(0.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (only used when temperature > 0)."""
    top_k: int = Field(0, ge=0)
    """Sample among the k likeliest tokens only; 0: no such limit (only used when temperature > 0)."""


class DiffusionConfig(_Strict):
    """Denoising settings of a diffusers image-editing pipeline."""

    steps: int = Field(20, ge=1)
    """Denoising steps per image."""
    guidance: float = Field(7.5, ge=0)
    """Text guidance scale."""
    image_guidance: float = Field(1.5, ge=0)
    """Image guidance scale (InstructPix2Pix-style pipelines)."""


class ServerConfig(_Strict):
    """OpenAI-compatible endpoints (`backend: openai`) or servers evalfleet starts (`backend: server`)."""

    urls: list[str] = []
    """`openai`: base URLs, e.g. http://host:8000/v1; requests go to the least-loaded one."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    max_in_flight: int = Field(16, ge=1)
    """Concurrent requests per endpoint."""
    timeout_s: float = Field(600.0, gt=0)
    """Per request."""
    retries: int = Field(6, ge=0)
    """Retries with exponential backoff on connection errors, timeouts, 429 and 5xx."""
    preset: Literal["vllm", "sglang", "llama.cpp"] | None = None
    """`server`: a ready command (see `backends/server.py`); `command` overrides it."""
    command: str | None = None
    """`server`: command template with {model}, {port}, {gpus}, {gpu_layers}, {threads}, {name}."""
    startup_timeout_s: float = Field(900.0, gt=0)
    """`server`: how long a server may take to answer before the replica fails."""


class ModelConfig(_Strict):
    """A model of one stage."""

    backend: Literal["transformers", "diffusers", "openai", "server"] = "transformers"
    """`transformers` for LLMs and VLMs, `diffusers` for image-editing pipelines, `openai` for OpenAI-compatible
    endpoints (`path` is the served model name), `server` for a server per replica that evalfleet starts."""
    path: str
    """Local folder of a Hugging Face checkpoint (or a hub id when the hub is reachable)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is bfloat16 on GPU and float32 on CPU."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    engine: Literal["auto", "continuous", "generate"] = "auto"
    """Decoder (transformers): `continuous` (continuous batching over decode slots, the decode step replayed as a
    CUDA graph on GPU; text models and the Qwen-VL and GLM-4.1V families, greedy or sampled, on one GPU or the
    CPU), `generate` (whole batches through transformers' `generate`); `auto`: continuous where it runs the model,
    else generate (a replica over several GPUs, another VLM). The plan says which (`evalfleet plan`). `static` is
    read as `continuous` (the static engine is gone)."""
    share_prefixes: bool = True
    """The continuous engine: a prompt that begins as one held in a slot (the same system prompt and few-shot
    turns, the same image before another question) copies that prefix's keys and values and prefills only the
    rest; an image in a copied prefix is not encoded again. Greedy answers are the same either way."""
    system_prompt: str | None = None
    """Optional system message put before each question."""
    batch_size: int | Literal["auto"] = "auto"
    """Requests a replica works on at once: the continuous engine's decode slots, or the rows of a whole batch;
    `auto` sizes it from GPU memory headroom (8 on CPU). Fewer at once on out-of-memory."""
    generation: GenerationConfig = GenerationConfig()
    """Decoding settings (transformers)."""
    diffusion: DiffusionConfig = DiffusionConfig()
    """Denoising settings (diffusers)."""
    server: ServerConfig = ServerConfig()
    """Endpoints or managed servers (`openai`, `server`)."""

    @model_validator(mode="after")
    def _server_settings(self) -> ModelConfig:
        if self.backend == "openai" and not self.server.urls:
            raise ValueError("backend openai needs server.urls (OpenAI-compatible base URLs)")
        if self.backend == "server" and not (self.server.preset or self.server.command):
            raise ValueError("backend server needs server.preset (vllm, sglang, llama.cpp) or server.command")
        return self

    @field_validator("engine", mode="before")
    @classmethod
    def _static_is_continuous(cls, v: Any) -> Any:
        if v == "static":
            warnings.warn("model.engine `static` is gone; `continuous` runs instead", DeprecationWarning, stacklevel=2)
            return "continuous"
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 or `auto`")
        return v

    def load_key(self) -> str:
        """What a loaded replica holds (backend, weights, dtype, engine, server): two settings with the same key can
        share a replica, their generation settings, system prompt and batch size aside."""
        return self.model_dump_json(include={"backend", "path", "dtype", "trust_remote_code", "engine", "server"})

    def served_by(self, loaded: ModelConfig) -> bool:
        """Whether a replica that loaded `loaded` (its engine resolved by a plan) can answer for these settings: the
        same `load_key`, an `auto` engine taking the replica's."""
        mine = self.model_copy(update={"engine": loaded.engine}) if self.engine == "auto" else self
        return mine.load_key() == loaded.load_key()

    def resolved_dtype(self, *, on_gpu: bool) -> str:
        """`auto` is bfloat16 on GPUs and float32 on CPUs."""
        return ("bfloat16" if on_gpu else "float32") if self.dtype == "auto" else self.dtype
