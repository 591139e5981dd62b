"""What each backend kind needs and does, declared once and readable without importing any backend (config, plan,
engine and run ask here instead of testing the kind's name), and which decoder a transformers replica runs
(`engine_for`, one rule for the plan and the backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Engine = Literal["continuous", "generate"]
"""The decoder of a replica: `continuous` (the in-process engine: continuous batching over decode slots) or
`generate` (whole batches through the backend's `generate`, streamed by `backends/batched.py`)."""


@dataclass(frozen=True)
class Kind:
    """What a backend kind needs of the worker and of the run."""

    imports_torch: bool
    """Loading it imports torch and transformers (5-14 s): worker processes get them preloaded."""
    remote: bool
    """Endpoints elsewhere do the work: one worker sends the requests, `path` names the served model (no local
    weights to check), and nothing is kept loaded between stages."""
    output: Literal["text", "images"]
    """What it answers with: text (generate and judge stages) or edited images (edit stages)."""
    streams: bool
    """It can batch continuously (its engine may be `continuous`); else it answers whole batches."""


KINDS: dict[str, Kind] = {
    "transformers": Kind(imports_torch=True, remote=False, output="text", streams=True),
    "diffusers": Kind(imports_torch=True, remote=False, output="images", streams=False),
    "openai": Kind(imports_torch=False, remote=True, output="text", streams=False),
    "server": Kind(imports_torch=False, remote=False, output="text", streams=False),
}


def kind(backend: str) -> Kind:
    return KINDS[backend]


ENGINE_VLMS = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe"})
"""VLMs (`config.model_type`) the continuous engine runs: their processors and `get_rope_index` share one
interface (`backends/transformers/vision.py`)."""


def engine_for(setting: str, *, backend: str, model_type: str | None, vision: bool, gpus: int) -> tuple[Engine, str]:
    """The decoder of a replica on `gpus` GPUs (0: the CPU) and why: `setting` (`auto`, `continuous`, `generate`;
    `static` is `continuous`) for a model of `model_type` (`vision`: it has a vision tower). The continuous engine
    runs text models and the VLMs of `ENGINE_VLMS` on one GPU or the CPU; a replica over several GPUs, another
    VLM and every backend but transformers answer whole batches. Raises ValueError when `continuous` is asked of
    a model or layout it cannot run."""
    if not kind(backend).streams:
        return "generate", f"the {backend} backend answers whole batches"
    why_not = ("its replicas span several GPUs" if gpus > 1
               else f"it is a VLM ({model_type}) the engine does not know" if vision and model_type not in ENGINE_VLMS
               else None)
    if setting in ("continuous", "static"):
        if why_not:
            raise ValueError(f"engine continuous cannot run this model: {why_not} (it runs text models and the VLMs "
                             "Qwen2-VL, Qwen2.5-VL, Qwen3-VL (MoE too) and GLM-4.1V on one GPU or the CPU)")
        return "continuous", "engine continuous as configured"
    if setting == "generate":
        return "generate", "engine generate as configured"
    if why_not:
        return "generate", f"whole batches through transformers' generate: {why_not}"
    return "continuous", "the continuous engine"
