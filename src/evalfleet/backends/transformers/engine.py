"""Continuous batching over a fixed set of decode slots (issue 19).

Each slot holds one request: its prompt's keys and values, then those of the tokens it generates (`SlotCache`).
A decode step advances every busy slot by one token; when a request ends (an EOS token or its token limit) its
slot is free, and before a later step new prompts are prefilled into the free slots, so the GPU decodes full
batches until no request is left. One long answer holds one slot, not a batch.

On CUDA the decode step (forward, next-token choice, bookkeeping) is captured once as a CUDA graph and replayed;
the host learns which requests ended one step late (their flags are copied while the next step runs), so it
never waits for the GPU between steps except to read the tokens of ended requests. Requests take the lowest free
slots, and once the queue is dry the busy slots are moved to the front so that a step decodes only as many slots
as are busy, rounded up to a width of `decode_widths` (`graphs.py`).

    engine = ContinuousEngine(model, slots=256, length=512, max_new_tokens=64, eos_ids={2}, sampler=Sampler())
    engine.add([Row(key, ids, seed), ...])
    while engine.busy:
        for done in engine.step(): ...
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from evalfleet.backends.base import free_memory, is_out_of_memory
from evalfleet.backends.transformers.graphs import SMALLEST_WIDTH, DecodeGraphs, decode_widths, width_for
from evalfleet.backends.transformers.prefix import PrefixIndex, admission_passes
from evalfleet.backends.transformers.sampling import Sampler
from evalfleet.backends.transformers.slot_cache import SlotCache
from evalfleet.backends.transformers.vision import has_rope_index, prefill_inputs

LENGTH_QUANTUM = 64
"""Slot lengths are rounded up to this."""

@dataclass
class Row:
    """A request: the caller's key, its prompt's token ids, its sampling seed; for a VLM its images and token types
    (`vision.split_batch`). `images`: each image's first and end token and content hash; `blocks`: the prompt's
    block hashes, by which a prompt that begins as a held one copies that prefix (`prefix.py`)."""

    key: Any
    ids: list[int]
    seed: int
    media: dict[str, Any] | None = None
    images: list[tuple[int, int, bytes]] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)


@dataclass
class Done:
    """An ended request: its new tokens (the EOS token included), or why it has none."""

    key: Any
    tokens: list[int]
    error: str | None = None


class ContinuousEngine:
    def __init__(self, model: Any, *, slots: int, length: int, max_new_tokens: int, eos_ids: set[int],
                 sampler: Sampler, cuda_graphs: bool, smallest_width: int = SMALLEST_WIDTH,
                 share_prefixes: bool = True) -> None:
        self.model, self.sampler, self.max_new = model, sampler, max_new_tokens
        self.prefixes = PrefixIndex(slots) if share_prefixes else None
        """Which slots hold which prompt prefixes (`prefix.py`); None: every prompt is prefilled whole."""
        self.counts: Counter[str] = Counter()
        """Prompt tokens, those copied from a held prefix, images in prompts and images encoded."""
        self.slots = slots
        self.widths = decode_widths(slots, smallest_width)
        self.width = slots
        """Decode steps run over the first `width` slots; every busy slot is among them."""
        self.steps_at: Counter[int] = Counter()  # decode steps run at each width
        self.moves = 0  # times busy slots were moved to the front
        self.refill_at = max(1, slots // 16)
        """Free slots that make a prefill worth its forward while other slots decode."""
        self.use_graphs = cuda_graphs and model.device.type == "cuda"
        dev = model.device
        self.eos = torch.tensor(sorted(eos_ids) or [-1], device=dev)
        zeros: dict[str, Any] = {"device": dev, "dtype": torch.long}
        self.token, self.pos, self.n_new, self.seeds, self.delta = (torch.zeros(slots, **zeros) for _ in range(5))
        self.mrope = has_rope_index(model.config)
        """3-D rotary positions (Qwen-VL, GLM-4V): a slot's generated tokens sit at their index + `delta`."""
        self.active = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.ended = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.out = torch.zeros(slots, max_new_tokens + 1, **zeros)  # [S, W]: new tokens; a spare column for idle slots
        self.waiting: deque[Row] = deque()
        self.refused: list[Done] = []
        self.log: list[str] = []
        """Lines for the run log: out-of-memory halvings, the cache's growth."""
        self.keys: list[Any] = [None] * slots  # the request each slot holds
        self.free = list(range(slots))
        self.graphs: DecodeGraphs | None = None
        self.flags: list[tuple[torch.Tensor, Any]] = []  # (pinned copy of `ended[:width]`, event) of the step before
        self.ring: deque[tuple[torch.Tensor, Any]] = deque()
        self.length = 0
        self.cache: SlotCache
        self._allocate(length)

    def _rounded(self, length: int) -> int:
        return -(-max(length, self.max_new + 1) // LENGTH_QUANTUM) * LENGTH_QUANTUM

    def _allocate(self, length: int) -> None:
        """A cache of `length` positions per slot (rounded up), and the decode step captured (or run once) for it."""
        self.graphs = self.cache = None  # type: ignore[assignment]  # free the old ones first
        if self.prefixes is not None:  # a new cache holds no prompt
            self.prefixes.clear()
        self.length = self._rounded(length)
        self.cache = SlotCache(self.model.config, self.slots, self.length, self.model.device, self.model.dtype)
        state = [self.token, self.pos, self.n_new, self.active, self.ended]
        self.graphs = DecodeGraphs(state, self.use_graphs)
        if self.use_graphs:  # every slot idle: the warm-up changes nothing that matters
            self.graphs.prepare(self.slots, self._decode_step)
        else:  # one step now, every slot idle: a step that does not fit in memory fails here, not mid-run
            with torch.inference_mode():
                self._decode_step(self.slots)
        self.ended.zero_()

    def _fits(self, row: Row) -> bool:
        """Whether `row` fits a slot; if not, the cache grows (by half at least) to hold it: at once, the slots
        keeping what they hold, where the device has room for that (`SlotCache.grow`), else once the busy ones have
        drained."""
        need = len(row.ids) + self.max_new
        if need <= self.length:
            return True
        length = self._rounded(max(need, self.length * 3 // 2))
        if self.cache.can_grow(length):  # in place: the prompts held stay held
            self.graphs.clear()  # they point at the old cache: captured again on their next use
            with torch.inference_mode():  # (the cache is inference tensors: allocated in inference mode)
                self.cache.grow(length)
            self.log.append(f"decode slots grown from {self.length} to {length} positions for a prompt of "
                            f"{len(row.ids)} tokens, {self.slots - len(self.free)} requests decoding")
            self.length = length
            return True
        if len(self.free) < self.slots:
            return False  # the cache grows once the busy slots have drained
        old = self.length
        try:
            self._allocate(length)
            return True
        except Exception as err:
            if not is_out_of_memory(err):
                raise
        free_memory()
        self._allocate(old)
        return False

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.refused) or len(self.free) < self.slots

    @property
    def hungry(self) -> bool:
        """Fewer requests wait than there are slots: time to add more."""
        return len(self.waiting) < self.slots

    def add(self, rows: list[Row]) -> None:
        self.waiting.extend(rows)

    def step(self) -> list[Done]:
        """Prefill waiting requests into free slots if enough are free (or nothing decodes), then one decode step;
        returns the requests that ended."""
        done: list[Done] = []
        if self.refused or self.waiting and (len(self.free) >= self.refill_at or len(self.free) == self.slots):
            done += self._admit()
        if len(self.free) < self.slots:
            done += self._narrow()
        if len(self.free) < self.slots:
            self._decode()
            done += self._collect()
        elif self.flags:
            done += self._collect(final=True)
        return done

    def _is_eos(self, tokens: torch.Tensor) -> torch.Tensor:
        """Not `torch.isin`: with more than ~20 EOS ids it sorts and syncs with the host, which breaks capture."""
        return (tokens[:, None] == self.eos).any(-1)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, slot_pass: Any, keep: Any,
                 **media: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, position_ids=positions, use_cache=False, slot_pass=slot_pass,
                          logits_to_keep=keep, **media).logits

    def _decode_step(self, w: int) -> None:
        """One token for each of the first `w` slots (idle ones compute too, into their own spare cache position and
        column)."""
        pos, n_new, active = self.pos[:w], self.n_new[:w], self.active[:w]
        positions = (pos + self.delta[:w])[None, :, None].expand(3, -1, -1) if self.mrope else pos[:, None]
        logits = self._forward(self.token[:w, None], positions, self.cache.decode(pos), 1)[:, -1]
        new = self.sampler(logits, self.seeds[:w], n_new)
        self.out[:w].scatter_(1, n_new.clamp(max=self.max_new)[:, None], new[:, None])
        ended = active & (self._is_eos(new) | (n_new + 1 >= self.max_new))
        n_new.add_(active.long())
        pos.add_(active.long())
        self.token[:w].copy_(new)
        active.logical_and_(~ended)
        self.ended[:w].copy_(ended)

    def _narrow(self) -> list[Done]:
        """Set the width for the next step: the smallest that holds the busy slots. Once no request waits and they
        would fit a smaller one, they first move to the front (which waits for the steps in flight)."""
        done: list[Done] = []
        free = set(self.free)
        top = max(s for s in range(self.slots) if s not in free) + 1
        if not self.waiting and width_for(self.widths, top) > width_for(self.widths, self.slots - len(free)):
            done = self._collect(final=True)
            busy = [s for s in range(self.slots) if s not in set(self.free)]
            if not busy:
                return done
            width = width_for(self.widths, len(busy))
            movers = [s for s in busy if s >= width]
            self._move(movers, [s for s in self.free if s < width][: len(movers)])
            top = max(busy) + 1 if not movers else width
        self.width = width_for(self.widths, top)
        return done

    @torch.inference_mode()  # the cache may have been allocated in inference mode (grown by an admission)
    def _move(self, src: list[int], dst: list[int]) -> None:
        """Busy slots `src` take the free slots `dst`: their keys and values, state and generated tokens."""
        if not src:
            return
        s, d = (torch.tensor(x, device=self.out.device) for x in (src, dst))
        self.cache.move(s, d)
        if self.prefixes is not None:
            self.prefixes.move(src, dst)
        for t in (self.token, self.pos, self.n_new, self.seeds, self.delta, self.active, self.out):
            t[d] = t[s]
        self.active[s] = False
        for a, b in zip(src, dst):
            self.keys[b], self.keys[a] = self.keys[a], None
        self.free = sorted(set(self.free) - set(dst) | set(src))
        self.moves += 1

    @torch.inference_mode()
    def _decode(self) -> None:
        w = self.width
        self.graphs.run(w, self._decode_step)
        self.steps_at[w] += 1
        if self.model.device.type == "cuda":
            if not self.ring:  # pinned buffers and events, reused: at most two are pending at a time
                self.ring = deque((torch.empty(self.slots, dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                                  for _ in range(3))
            host, event = self.ring[0]
            self.ring.rotate(-1)
            host[:w].copy_(self.ended[:w], non_blocking=True)
            event.record()
            self.flags.append((host[:w], event))
        else:
            self.flags.append((self.ended[:w].clone(), None))

    def _collect(self, final: bool = False) -> list[Done]:
        """Requests whose end the step before this one flagged (or the last step, once nothing decodes)."""
        done: list[Done] = []
        while len(self.flags) > (0 if final else 1):
            host, event = self.flags.pop(0)
            if event is not None:
                event.synchronize()
            ended = host.nonzero().flatten().tolist()
            if ended:
                done += self._release(ended)
        return done

    def _release(self, slots: list[int]) -> list[Done]:
        index = torch.tensor(slots, device=self.out.device)
        counts = self.n_new[index].tolist()
        tokens = self.out[index].tolist()
        done = [Done(self.keys[s], row[:n]) for s, row, n in zip(slots, tokens, counts)]
        for s in slots:
            self.keys[s] = None
        self.free = sorted(self.free + slots)  # the lowest free slots are taken first
        return done

    def _take(self) -> list[Row]:
        """Waiting requests for every free slot, prefilled together. No cap on their tokens: the plan sized the slots
        so that a whole batch of the longest prompts fits one forward, and a prefill out of memory is halved. (A cap
        of 65,536 tokens cut a refill of 256 prompts of 258 tokens into 254 + 2: the last two then decoded alone for
        64 steps, -12 % on the uniform benchmark, `bench/probes/engine_profile.py`.)"""
        rows: list[Row] = []
        while self.waiting and len(rows) < len(self.free):
            row = self.waiting[0]
            if row.ids and not self._fits(row):
                if len(self.free) == self.slots:  # it could not grow: no memory for it
                    self.waiting.popleft()
                    self.refused.append(Done(row.key, [], f"prompt of {len(row.ids)} tokens + max_new_tokens "
                                                          f"{self.max_new} do not fit in memory"))
                    continue
                break
            rows.append(self.waiting.popleft())
        return rows

    @torch.inference_mode()
    def _admit(self) -> list[Done]:
        """Prefill waiting requests into free slots; their first tokens come from the prompts' last logits. Requests
        that share a prefix not yet held with an earlier one of the same admission are prefilled in a second pass,
        after it (`prefix.admission_passes`)."""
        rows = []
        for row in self._take():
            if row.ids:
                rows.append(row)
            else:
                self.refused.append(Done(row.key, [], "empty prompt"))
        done, self.refused = self.refused, []
        passes = ([rows] if self.prefixes is None else admission_passes(rows, self.prefixes)) if rows else []
        for i, group in enumerate(passes):
            ended, left = self._prefill_halving(group)
            done += ended
            if left:  # out of memory: the rest waits, and the later passes, which copy from this one's prompts
                self.waiting.extendleft(reversed(left + [r for g in passes[i + 1 :] for r in g]))
                break
        return done

    def _prefill_halving(self, rows: list[Row]) -> tuple[list[Done], list[Row]]:
        """Prefill `rows`, halved while out of memory; returns the ended requests and the rows left for later."""
        left: list[Row] = []
        while rows:
            try:
                return self._prefill(rows), left
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
            free_memory()
            if len(rows) == 1:
                return [Done(rows[0].key, [], f"out of memory prefilling {len(rows[0].ids)} prompt tokens alone")], left
            half = len(rows) // 2
            self.log.append(f"out of memory prefilling {len(rows)} prompts; {half} now, the rest later")
            rows, left = rows[:half], rows[half:] + left
        return [], left

    def _copy_prefixes(self, rows: list[Row], slots: list[int]) -> list[int]:
        """Copy into `slots` the longest held prefix of each request's prompt; returns each one's copied tokens."""
        past = [0] * len(rows)
        if self.prefixes is None:
            return past
        found = [self.prefixes.copyable(r) for r in rows]
        for s in slots:  # overwritten from here on (a failed prefill leaves them half written)
            self.prefixes.forget(s)
        past = [n for _, n in found]
        copies = [(src, dst, n) for (src, n), dst in zip(found, slots) if n]
        if copies:
            src, dst, counts = (list(x) for x in zip(*copies))
            self.cache.copy(src, dst, counts)
        return past

    def _prefill(self, rows: list[Row]) -> list[Done]:
        """One forward over the rows' prompts after their copied prefixes; their first tokens. Timed to the host's
        read of which rows ended at once (which waits for the GPU)."""
        t0 = time.perf_counter()
        dev = self.out.device
        slots = self.free[: len(rows)]
        past = self._copy_prefixes(rows, slots)
        lengths = [len(r.ids) - n for r, n in zip(rows, past)]
        ids = torch.tensor([t for r, n in zip(rows, past) for t in r.ids[n:]], device=dev)
        slot_pass = self.cache.prefill(slots, lengths, past)
        last = slot_pass.cu_q[1:].long() - 1
        index = torch.tensor(slots, device=dev)
        positions, media, encoded = slot_pass.positions[None], {}, 0
        if self.mrope:
            positions, deltas, media, encoded = prefill_inputs(self.model, rows, dev, past)
            self.delta[index] = torch.tensor(deltas, device=dev)
        logits = self._forward(ids[None], positions, slot_pass, last, **media)[0]  # [n, V]
        seeds = torch.tensor([r.seed & ((1 << 63) - 1) for r in rows], device=dev)
        first = self.sampler(logits, seeds, torch.zeros_like(seeds))
        ended = self._is_eos(first) | (self.max_new <= 1)
        self.token[index] = first
        self.pos[index] = torch.tensor([len(r.ids) for r in rows], device=dev)
        self.n_new[index] = 1
        self.seeds[index] = seeds
        self.out[index, 0] = first
        self.active[index] = ~ended
        del self.free[: len(rows)]
        for s, r in zip(slots, rows):
            self.keys[s] = r.key
            if self.prefixes is not None:
                self.prefixes.hold(s, r.ids, r.images, r.blocks)
        self.counts.update(prompt_tokens=sum(len(r.ids) for r in rows), shared_tokens=sum(past),
                           prefills_unshared=int(self.prefixes is None),
                           images=sum(len((r.media or {}).get("image_grid_thw", ())) for r in rows),
                           images_encoded=encoded)
        finished = [s for s, e in zip(slots, ended.tolist()) if e]
        self.counts["prefill_s"] += time.perf_counter() - t0
        return self._release(finished) if finished else []
