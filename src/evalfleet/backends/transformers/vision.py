"""VLM requests on the continuous engine: a processor's padded batch split into one request per sample, and the
extra inputs of a prefill (the images, 3-D rotary positions).

Qwen2-VL, Qwen2.5-VL, Qwen3-VL and GLM-4.1V place image tokens on a (time, height, width) grid of rotary
positions (the model's `get_rope_index`); the text after the image continues from the grid's largest position,
so a generated token's position is its index in the sequence plus a per-request offset (`delta`). The engine
keeps that offset per slot and adds it in its captured decode step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from evalfleet.backends.kinds import ENGINE_VLMS

MEDIA_KEYS = ("pixel_values", "image_grid_thw")
"""Per-image inputs a prefill concatenates over its requests (in request order, as the image tokens are)."""


def has_rope_index(config: Any) -> bool:
    """Whether the model places image tokens with 3-D rotary positions (`get_rope_index`)."""
    return getattr(config, "model_type", None) in ENGINE_VLMS


def rope_index(model: Any, ids: torch.Tensor, types: torch.Tensor, grids: torch.Tensor | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `get_rope_index` over a left-padded batch [B, L]: positions [3, B, L] and offsets [B, 1]."""
    return getattr(model, "model", model).get_rope_index(ids, types, image_grid_thw=grids, attention_mask=mask)


def split_batch(inputs: Any, images_per_row: list[int], image_token_id: int | None, dtype: torch.dtype,
                model: Any = None) -> list[tuple[list[int], dict]]:
    """A processor's left-padded batch -> per request (unpadded token ids, media): its images' patches (in the
    model's `dtype`), their grids and the token types of its ids (1 for image tokens); given the loaded `model`,
    also its rotary positions and offset, so that the engine's prefill does not compute them between decode steps
    (~6 % of a VLM's run, `bench/probes/vlm_profile.py`).

    The patches stay in pageable memory: pinning each sample's (~2.4 MB at 448x448) made a fresh replica's first
    451 samples take 11.0 s in the processor against 1.6-2.6 s in later runs, and 3.4 s then 1.1 s unpinned, while
    the prefills took as long from pageable memory (`bench/probes/first_job.py`, bench/RESULTS.md)."""
    mask = inputs["attention_mask"].bool()
    grids = inputs.get("image_grid_thw")
    patches = grids.prod(-1).tolist() if grids is not None else []
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = (inputs["input_ids"] == image_token_id).int()
    positions = deltas = None
    if model is not None:
        positions, deltas = rope_index(model, inputs["input_ids"], types, grids, inputs["attention_mask"])
    rows: list[tuple[list[int], dict]] = []
    image = patch = 0
    for i, n_images in enumerate(images_per_row):
        ids = inputs["input_ids"][i][mask[i]]
        media: dict[str, Any] = {"mm_token_type_ids": types[i][mask[i]]}
        if positions is not None and deltas is not None:
            media["positions"], media["delta"] = positions[:, i, mask[i]], int(deltas[i])
        if n_images:
            n_patches = sum(patches[image : image + n_images])
            media["image_grid_thw"] = grids[image : image + n_images]
            pixels = inputs["pixel_values"][patch : patch + n_patches].to(dtype)
            media["pixel_values"] = pixels
            image, patch = image + n_images, patch + n_patches
        rows.append((ids.tolist(), media))
    return rows


def prefill_inputs(model: Any, rows: list[Any], device: torch.device) -> tuple[torch.Tensor, list[int], dict]:
    """For requests packed into one row: their rotary positions [3, 1, N] (as prepared, or computed now), each
    one's offset for the tokens it generates, and the forward's image inputs (none if no request has an image)."""
    media = [r.media or {} for r in rows]  # a request without media is text: token type 0 throughout
    with_images = [m for m in media if "image_grid_thw" in m]
    extra = {k: torch.cat([m[k].to(device) for m in with_images]) for k in MEDIA_KEYS} \
        if with_images else {}
    if all("positions" in m for m in media):
        packed = torch.cat([m["positions"] for m in media], dim=1)[:, None].to(device)
        return packed, [m["delta"] for m in media], extra
    length = max(len(r.ids) for r in rows)
    ids = torch.stack([F.pad(torch.tensor(r.ids), (length - len(r.ids), 0)) for r in rows])
    types = torch.stack([F.pad(m.get("mm_token_type_ids", torch.zeros(len(r.ids))).int(), (length - len(r.ids), 0))
                         for r, m in zip(rows, media)])
    mask = torch.stack([F.pad(torch.ones(len(r.ids), dtype=torch.long), (length - len(r.ids), 0)) for r in rows])
    grids = torch.cat([m["image_grid_thw"] for m in with_images]) if with_images else None
    positions, deltas = rope_index(model, ids, types, grids, mask)
    packed = positions[:, mask.bool()][:, None].to(device)  # [3, 1, N], the requests' tokens in order
    return packed, deltas.flatten().tolist(), extra
