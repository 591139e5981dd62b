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
from evalfleet.backends.transformers.prefix import image_key

MEDIA_KEYS = ("pixel_values", "image_grid_thw")
"""Per-image inputs a prefill concatenates over its requests (in request order, as the image tokens are)."""


def has_rope_index(config: Any) -> bool:
    """Whether the model places image tokens with 3-D rotary positions (`get_rope_index`)."""
    return getattr(config, "model_type", None) in ENGINE_VLMS


def rope_index(model: Any, ids: torch.Tensor, types: torch.Tensor, grids: torch.Tensor | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `get_rope_index` over a left-padded batch [B, L]: positions [3, B, L] and offsets [B, 1]."""
    return getattr(model, "model", model).get_rope_index(ids, types, image_grid_thw=grids, attention_mask=mask)


def image_spans(types: torch.Tensor) -> list[tuple[int, int]]:
    """(first, end) of each run of image tokens (token type 1) in one request's ids: one run per image."""
    flags = (types == 1).int().tolist()
    spans, start = [], None
    for i, f in enumerate([*flags, 0]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            spans.append((start, i))
            start = None
    return spans


def split_batch(inputs: Any, images_per_row: list[int], image_token_id: int | None, dtype: torch.dtype,
                model: Any = None, known: list[bytes | None] | None = None, pictures: list[torch.Tensor] | None = None
                ) -> list[tuple[list[int], dict, list[tuple[int, int, bytes]]]]:
    """A processor's left-padded batch -> per request (unpadded token ids, media, images): its images' patches (in
    the model's `dtype`), their grids and the token types of its ids (1 for image tokens); given the loaded
    `model`, also its rotary positions and offset, so that the engine's prefill does not compute them between
    decode steps (~6 % of a VLM's run, `bench/probes/vlm_profile.py`). `images`: the first and end token of each
    image and the hash of its content (`prefix.image_key`), by which prompts that share a picture share its keys;
    `known`: each image's key where its source gave one (`worker_loop.DecodedImages`: no need to hash its patches);
    `pictures`: each image's patches, already in `dtype` (`processors.CachedImageProcessor.pictures`: a request
    holds its picture's kept patches, no copy, and the batch's `pixel_values` need not hold every image's).

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
    rows: list[tuple[list[int], dict, list[tuple[int, int, bytes]]]] = []
    image = patch = 0
    for i, n_images in enumerate(images_per_row):
        ids = inputs["input_ids"][i][mask[i]]
        media: dict[str, Any] = {"mm_token_type_ids": types[i][mask[i]]}
        if positions is not None and deltas is not None:
            media["positions"], media["delta"] = positions[:, i, mask[i]], int(deltas[i])
        keys: list[bytes] = []
        if n_images:
            n_patches = sum(patches[image : image + n_images])
            media["image_grid_thw"] = grids[image : image + n_images]
            own = pictures[image : image + n_images] if pictures is not None else None
            pixels = (own[0] if len(own) == 1 else torch.cat(own)) if own is not None \
                else inputs["pixel_values"][patch : patch + n_patches].to(dtype)
            at = 0
            for k, (grid, n) in enumerate(zip(grids[image : image + n_images], patches[image : image + n_images])):
                given = known[image + k] if known is not None else None
                keys.append(given if given is not None else image_key(pixels[at : at + n], grid))
                at += n
            media["pixel_values"] = pixels
            image, patch = image + n_images, patch + n_patches
        spans = image_spans(media["mm_token_type_ids"])
        images = [(a, b, k) for (a, b), k in zip(spans, keys)] if len(spans) == len(keys) else []
        rows.append((ids.tolist(), media, images))
    return rows


def after_prefix(media: dict[str, Any], images: list[tuple[int, int, bytes]], past: int) -> dict[str, Any]:
    """A request's media for the tokens after its first `past` (copied from a held prefix): the images whose
    tokens come later (`prefix.reusable` never cuts through one), their grids, token types and positions."""
    out = dict(media)
    if "mm_token_type_ids" in media:
        out["mm_token_type_ids"] = media["mm_token_type_ids"][past:]
    if "positions" in media:
        out["positions"] = media["positions"][:, past:]
    if "image_grid_thw" in media:
        grids = media["image_grid_thw"]
        keep = [i for i, (first, _, _) in enumerate(images) if first >= past]
        patches = grids.prod(-1).tolist()
        starts = [sum(patches[:i]) for i in range(len(patches))]
        if not keep:
            del out["image_grid_thw"], out["pixel_values"]
        elif len(keep) < len(patches):
            out["image_grid_thw"] = grids[keep]
            out["pixel_values"] = torch.cat([media["pixel_values"][starts[i] : starts[i] + patches[i]] for i in keep])
    return out


def prefill_inputs(model: Any, rows: list[Any], device: torch.device, past: list[int]
                   ) -> tuple[torch.Tensor, list[int], dict, int]:
    """For requests packed into one row, each after its first `past` tokens (a copied prefix): their rotary
    positions [3, 1, N] (as prepared, or computed now over whole prompts), each one's offset for the tokens it
    generates, the forward's image inputs (none if no request has an image left to encode) and how many images
    those are."""
    media = [r.media or {} for r in rows]  # a request without media is text: token type 0 throughout
    if not all("positions" in m for m in media):
        length = max(len(r.ids) for r in rows)
        ids = torch.stack([F.pad(torch.tensor(r.ids), (length - len(r.ids), 0)) for r in rows])
        types = torch.stack([F.pad(m.get("mm_token_type_ids", torch.zeros(len(r.ids))).int(), (length - len(r.ids), 0))
                             for r, m in zip(rows, media)])
        mask = torch.stack([F.pad(torch.ones(len(r.ids), dtype=torch.long), (length - len(r.ids), 0)) for r in rows])
        grids = [m["image_grid_thw"] for m in media if "image_grid_thw" in m]
        positions, deltas = rope_index(model, ids, types, torch.cat(grids) if grids else None, mask)
        media = [{**m, "positions": positions[:, i, mask[i].bool()], "delta": int(deltas[i])}
                 for i, m in enumerate(media)]
    media = [after_prefix(m, r.images, n) if n else m for m, r, n in zip(media, rows, past)]
    with_images = [m for m in media if "image_grid_thw" in m]
    extra = {k: torch.cat([m[k].to(device) for m in with_images]) for k in MEDIA_KEYS} if with_images else {}
    packed = torch.cat([m["positions"] for m in media], dim=1)[:, None].to(device)  # [3, 1, N]
    return packed, [m["delta"] for m in media], extra, sum(len(m["image_grid_thw"]) for m in with_images)
