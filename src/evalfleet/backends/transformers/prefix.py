"""Shared prompt prefixes on the continuous engine (issue 37): a request whose prompt begins as another's did (the
same system prompt and few-shot turns, the same picture before a new question) copies that prefix's keys and values
from the slot that holds them and prefills only the rest of its prompt; a picture in a copied prefix does not go
through the vision tower again.

A prompt is cut into blocks of `BLOCK` tokens. Each full block has a hash chained over everything before it: its
token ids and the content hash of every image whose tokens it holds. Image tokens are one placeholder id repeated,
so without the content two pictures of one size would give the same prompt (the bug of vllm#20261, where one
image's keys served another). A slot holding a prompt registers its blocks (`PrefixIndex.hold`); a later prompt
looks its blocks up, longest first, and reuses up to the last block found, cut back so that it never splits an
image from its tokens and never takes the whole prompt (the last token's logits start the answer: `reusable`).

The keys and values stay in the slots that computed them (no second pool of memory): a slot's prompt stays valid
after its request ends, until a new prompt is prefilled into it (`forget`), and moves with it (`move`).
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Protocol, TypeVar

import torch

BLOCK = 16
"""Tokens a block: the granularity at which prompts are matched."""
CANDIDATES = 16
"""Slots holding a prompt's longest matching block that are followed past it, token by token (the latest)."""


def image_key(pixels: torch.Tensor, grid: torch.Tensor) -> bytes:
    """The content hash of one preprocessed image: its patches (what the vision tower sees) and its grid."""
    data = pixels.detach().contiguous().cpu()
    if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes as int16
        data = data.view(torch.int16)
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16)
    digest.update(array("q", grid.flatten().tolist()).tobytes())
    return digest.digest()


def prompt_blocks(ids: list[int], images: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The chained hash of each full block of `ids`; `images`: (first token, end token, content hash) of each
    image's tokens."""
    out: list[bytes] = []
    chain = b""
    for start in range(0, len(ids) - BLOCK + 1, BLOCK):
        end = start + BLOCK
        digest = hashlib.blake2b(chain, digest_size=16)
        digest.update(array("q", ids[start:end]).tobytes())
        for first, stop, key in images:
            if first < end and stop > start:
                digest.update(key + array("q", (first,)).tobytes())
        chain = digest.digest()
        out.append(chain)
    return out


def reusable(found: int, length: int, images: list[tuple[int, int, bytes]]) -> int:
    """How many of a prompt's `length` tokens may be copied when its first `found` match a held prefix: not all of
    them (one is left to prefill), and not part of an image (the cut moves back to the image's first token)."""
    cut = min(found, length - 1)
    for first, stop, _ in images:
        if first < cut < stop:
            cut = first
    return cut if cut >= BLOCK else 0


Images = list[tuple[int, int, bytes]]
"""(first token, end token, content hash) of each image of a prompt."""


class Prompt(Protocol):
    """What matching needs of a request (the engine's `Row`)."""

    ids: list[int]
    images: Images
    blocks: list[bytes]


P = TypeVar("P", bound=Prompt)


class PrefixIndex:
    """Which slots hold which prompts: block hash -> slots whose first tokens match it, and each slot's prompt."""

    def __init__(self, slots: int) -> None:
        self.where: dict[bytes, dict[int, None]] = {}
        self.held: list[tuple[list[int], Images, list[bytes]]] = [([], [], []) for _ in range(slots)]

    def lookup(self, ids: list[int], images: Images, blocks: list[bytes]) -> tuple[int | None, int]:
        """(a slot holding the longest matching prefix, how many first tokens match); (None, 0) if none. Blocks
        find the slot; the match then runs on token by token past the last whole block, as far as the tokens, and
        the pictures behind image tokens, are the same."""
        for k in range(len(blocks) - 1, -1, -1):
            slots = self.where.get(blocks[k])
            if slots:  # of the slots that hold it (the CANDIDATES latest), the one whose match runs on furthest
                best, end = None, -1
                for slot in list(slots)[-CANDIDATES:]:  # (a tie goes to the latest)
                    if (n := self._extend(ids, images, slot, (k + 1) * BLOCK)) >= end:
                        best, end = slot, n
                return best, end
        return None, 0

    def copyable(self, prompt: Prompt) -> tuple[int | None, int]:
        """(the slot to copy from, how many of `prompt`'s first tokens to copy: `lookup`'s match as `reusable`
        cuts it)."""
        slot, found = self.lookup(prompt.ids, prompt.images, prompt.blocks)
        return slot, reusable(found, len(prompt.ids), prompt.images)

    def _extend(self, ids: list[int], images: Images, slot: int, n: int) -> int:
        held_ids, held_images, _ = self.held[slot]
        limit = min(len(ids), len(held_ids))
        same = set(held_images)
        for image in images:  # another picture behind the same placeholder tokens: the match stops where it begins
            if image[1] > n and image not in same:  # (not walked through: 256 equal ids each, for every candidate)
                limit = min(limit, max(image[0], n))
        end = n
        while end < limit and ids[end] == held_ids[end]:
            end += 1
        return end

    def hold(self, slot: int, ids: list[int], images: Images, blocks: list[bytes]) -> None:
        """`slot` now holds this prompt (what it held before is gone)."""
        self.forget(slot)
        self.held[slot] = (ids, images, blocks)
        for b in blocks:
            self.where.setdefault(b, {})[slot] = None

    def forget(self, slot: int) -> None:
        for b in self.held[slot][2]:
            slots = self.where.get(b)
            if slots is not None:
                slots.pop(slot, None)
                if not slots:
                    del self.where[b]
        self.held[slot] = ([], [], [])

    def move(self, src: list[int], dst: list[int]) -> None:
        """Slots `dst` took the keys and values of `src` (which still hold their copies until overwritten)."""
        for s, d in zip(src, dst):
            self.hold(d, *self.held[s])

    def clear(self) -> None:
        self.where.clear()
        self.held = [([], [], []) for _ in self.held]


def admission_passes(rows: list[P], held: PrefixIndex) -> list[list[P]]:
    """An admission in one pass, or two. A request waits for the second pass, and copies then, when an earlier
    request of the admission shares more of its prompt than any `held` prompt does and no later one shares a block
    or a picture more: so of eleven questions about a picture the first is prefilled whole and the others copy its
    prefix, while the first question about the next picture (which shares only the system prompt with them) is
    prefilled in the first pass, for its own picture's questions to copy."""
    if len(rows) < 2:
        return [rows]
    earlier, later = _matches(rows), _matches(rows[::-1])[::-1]
    first, second = [], []
    for r, m, n in zip(rows, earlier, later):
        deeper = n >= m + BLOCK or any(m <= a and b <= n for a, b, _ in r.images)  # a later one shares a block
        follows = m > held.copyable(r)[1] and not deeper  # or a picture more: this one leads
        (second if follows else first).append(r)
    return [first, second] if second else [first]


def _matches(rows: list[P]) -> list[int]:
    """For each request, how much of its prompt one before it in `rows` shares (as `reusable` counts)."""
    seen, out = PrefixIndex(len(rows)), []
    for i, r in enumerate(rows):
        out.append(seen.copyable(r)[1])
        seen.hold(i, r.ids, r.images, r.blocks)
    return out
