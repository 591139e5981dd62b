"""Choosing the next token inside the engine's decode step: greedy, or sampled with temperature, top-k and top-p.

A sampled row's draw depends only on its own logits, its seed and how many tokens it has generated: one uniform
number per (seed, step) from a counter-based hash, turned into a token by the inverse of the filtered
distribution's cumulative sum. So a sample's answer is the same whatever its batch neighbours, its slot, the
number of workers or a resume; and there is no generator state, so the whole step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

_MASK63 = (1 << 63) - 1


def _shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _wrap(v: int) -> int:
    """A 64-bit constant as a signed int64 (multiplications wrap around, as in C)."""
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = _wrap(0x9E3779B97F4A7C15), _wrap(0xBF58476D1CE4E5B9), _wrap(0x94D049BB133111EB)


def uniform(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """splitmix64 of (seed, step): one float64 in [0, 1) per row, the same on every device."""
    x = seeds * _GOLDEN + (steps + 1) * _MIX2
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    x = x ^ _shift_right(x, 31)
    return _shift_right(x, 11).to(torch.float64) / float(1 << 53)


TOP_P_ROUNDS = 24
"""Bisection rounds of the top-p threshold: tokens within max(p) / 2^24 of it may be kept too."""


def top_p_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The largest t [S, 1] (to within max(p) / 2^TOP_P_ROUNDS) such that the tokens of probability >= t hold at
    least `top_p` of the mass: the nucleus without sorting the vocabulary (a sort of 256 x 152k cost 3.4 ms a step
    on an H200, `bench/probes/slot_kernels.py`)."""
    lo = torch.zeros_like(probs[:, :1])
    hi = probs.amax(-1, keepdim=True)
    for _ in range(TOP_P_ROUNDS):
        mid = (lo + hi) / 2
        enough = torch.where(probs >= mid, probs, 0).sum(-1, keepdim=True) >= top_p
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid)
    return lo


class Sampler:
    """Next tokens [S] from logits [S, V], seeds [S] and steps [S] (tokens each row has generated so far)."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0) -> None:
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.threshold = top_p_threshold

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def compile(self) -> None:
        """Fuse the threshold search's rounds into one kernel each (CUDA; left as is if compiling fails). Only a
        sampler that searches a threshold (top_p < 1) compiles: the first `torch.compile` of a process imports
        inductor, ~3 s of a cold replica's engine set-up on an H200 host (`bench/probes/cold_start.py --profile`)."""
        if self.greedy or self.top_p >= 1:
            return
        try:
            self.threshold = torch.compile(top_p_threshold, dynamic=True)
        except Exception:  # no compiler here: the eager search gives the same tokens
            self.threshold = top_p_threshold

    def __call__(self, logits: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(-1)
        scores = logits.float() / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = scores.softmax(-1)
        if self.top_p < 1:  # the most likely tokens holding top_p of the mass (at least the likeliest)
            probs = torch.where(probs >= self.threshold(probs, self.top_p), probs, 0)
        cum = probs.cumsum(-1)  # inverse CDF over the kept tokens, in vocabulary order
        mass = cum[:, -1]
        u = (uniform(seeds, steps) * mass.double()).float()  # the draw, scaled to the mass kept; below it, so that
        u = torch.minimum(u, torch.nextafter(mass, torch.zeros_like(mass)))  # it lands on a kept token
        return torch.searchsorted(cum, u[:, None], right=True)[:, 0].clamp(max=cum.shape[-1] - 1)
