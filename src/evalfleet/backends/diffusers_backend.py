"""diffusers backend: image editing (InstructPix2Pix, Qwen-Image-Edit, FLUX Kontext ... pipelines that take
an image and an instruction). Each edited image is saved as a PNG in the run folder; the answer is its path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from evalfleet.backends.base import Backend, Generation, Prepared, Request
from evalfleet.config import ModelConfig


class DiffusersBackend(Backend):
    """Batched image editing with one seeded generator per sample (reproducible whatever the batch)."""

    def __init__(self, cfg: ModelConfig, n_gpus: int, output_dir: str) -> None:
        self.cfg = cfg
        self.device = "cuda" if n_gpus else "cpu"
        self.pipe: Any = None
        self.label = (torch.cuda.get_device_name(0) if n_gpus else f"CPU x{torch.get_num_threads()}") + " [diffusers]"
        self.run_dir = Path(output_dir)
        self.on_step: Callable[[int, int], None] | None = None
        """Called with (step, steps) after each denoising step, e.g. to draw a progress bar."""

    def load(self) -> None:
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, self.cfg.resolved_dtype(on_gpu=self.device == "cuda"))  # the config names torch dtypes
        self.pipe = DiffusionPipeline.from_pretrained(self.cfg.path, torch_dtype=dtype,
                                                      trust_remote_code=self.cfg.trust_remote_code).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def prepare(self, requests: list[Request]) -> Prepared:
        missing = [r.name for r in requests if not r.images]
        if missing:
            raise ValueError(f"an edit needs an input image; none for {', '.join(missing)}")
        return Prepared(None, requests, [r.prompt for r in requests])

    @torch.inference_mode()
    def generate(self, prepared: Prepared) -> list[Generation]:
        requests = prepared.requests
        d = self.cfg.diffusion
        kwargs: dict[str, Any] = {"num_inference_steps": d.steps, "guidance_scale": d.guidance}
        if "image_guidance_scale" in self.pipe.__call__.__code__.co_varnames:
            kwargs["image_guidance_scale"] = d.image_guidance
        if self.on_step is not None:
            report = self.on_step

            def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                report(step + 1, d.steps)
                return tensors

            kwargs["callback_on_step_end"] = step_end
        images = self.pipe(
            prompt=[r.prompt for r in requests], image=[r.images[0] for r in requests],
            generator=[torch.Generator(self.device).manual_seed(r.seed) for r in requests], output_type="pil",
            **kwargs,
        ).images
        out = []
        for r, image in zip(requests, images):
            rel = Path("edits") / f"{r.name}.png"  # name is dataset/id
            (self.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(self.run_dir / rel)
            out.append(Generation(str(rel), 0))
        return out
