"""The fused kernels' arithmetic (RMSNorm, the gated MLP's activation, rotary embedding of text models and of
vision towers) and its compilation: torch.compile with dynamic shapes, ahead of the batches, for every variant a
model calls; on a machine that never compiled them, in a process of its own (`kernels/fused.py` patches the model's
modules to call them)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from evalfleet.assets import default_cache_dir

log = logging.getLogger("evalfleet")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_rows(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rotary embedding of q [N, Hq, D] and k [N, Hk, D], token by token (cos, sin [N, D])."""
    c, s = cos[:, None], sin[:, None]
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def rotary_vision(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Vision towers' rotary embedding: q, k [N, H, D], cos, sin [N, D], computed in fp32 and cast back."""
    c, s = cos[:, None].float(), sin[:, None].float()
    qf, kf = q.float(), k.float()
    return (qf * c + rotate_half(qf) * s).to(q.dtype), (kf * c + rotate_half(kf) * s).to(k.dtype)


@dataclass
class Kernels:
    """The compiled functions one model's modules are patched to."""

    rms: Any
    silu_mul: Any
    rotary_rows: Any
    rotary_vision: Any


@dataclass(frozen=True)
class Shapes:
    """What the kernels are compiled for: the model's heads, head dim and norm epsilon (0 heads: no vision tower),
    and the widths its RMSNorms normalise (their weights are parameters, whose sizes torch.compile keeps static)."""

    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    vision_heads: int = 0
    vision_dim: int = 0
    norm_widths: tuple[int, ...] = ()

    @classmethod
    def of(cls, config: Any) -> Shapes:
        text = getattr(config, "text_config", None) or config
        heads = getattr(text, "num_attention_heads", None) or 1
        head_dim = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", None) or heads) // heads
        widths = [getattr(text, "hidden_size", None)]
        if str(getattr(text, "model_type", "")).startswith("qwen3"):
            widths.append(head_dim)  # Qwen3's query and key norms
        v_heads = v_dim = 0
        if vision := getattr(config, "vision_config", None):
            v_heads = getattr(vision, "num_heads", None) or 0
            v_width = getattr(vision, "hidden_size", None) or getattr(vision, "embed_dim", 0)
            v_dim = v_width // max(1, v_heads)
            widths.append(v_width)
        return cls(float(getattr(text, "rms_norm_eps", 1e-6)), heads,
                   getattr(text, "num_key_value_heads", None) or heads, head_dim, v_heads, v_dim,
                   tuple(sorted({w for w in widths if w})))


class Compiling(NamedTuple):
    kernels: Future[Kernels | None]
    cached: bool
    """Compiled before on this machine (its marker is in the compile cache): loaded from it in a few seconds."""
    start: threading.Event
    """Not compiled before: the compiling process starts once this is set (the replica's engine is set up, or it
    waits for the kernels), or after `START_WITHIN` seconds."""


START_WITHIN = 120.0
"""Seconds a compile on a machine that never compiled the kernels waits for its replica to be set up: a process
compiling beside a replica's first forwards slowed them (`bench/probes/cold_start.py`: the engine's set-up took 6.3 s
with the child starting beside it, 3.8 s after it)."""


def compile_kernels(config: Any, dtype: torch.dtype, device: str = "cuda") -> Compiling:
    """Start compiling the fused kernels for the shapes of the model `config` describes, beside the tokenizer and
    the weights (`bench/startup.py`). The result is None where compiling fails (e.g. no Triton).

    Compiled before (torch.compile's cache, in evalfleet's cache folder): in a thread, a few seconds. Never
    compiled here: once `start` is set, first in a process of its own (~10 s for a 7B's kernels, which in a
    thread held the interpreter's lock so often that the load and the first steps beside it ran ~3 x slower),
    then in a thread from the cache that process filled."""
    # Round where eager rounds (each bf16/fp16 intermediate), not once at the end: the fused kernels then give
    # transformers' own numbers (bench/gpu_exactness.py: fused-off beside the engine), at no cost to a memory-bound
    # kernel.
    torch._inductor.config.emulate_precision_casts = True
    shapes = Shapes.of(config)
    marker = _marker(shapes, dtype)
    cached = marker.exists()
    future: Future[Kernels | None] = Future()
    start = threading.Event()

    def work() -> None:
        try:
            if not cached:
                start.wait(START_WITHIN)
            kernels = _compile(shapes, dtype, device) if cached else _compile_apart(shapes, dtype, device, marker)
            future.set_result(kernels)
        except BaseException as err:  # noqa: BLE001  # the waiting side sees it
            future.set_exception(err)

    # A daemon thread: a process that ends before the kernels are ready (a short run) does not wait for them.
    threading.Thread(target=work, name="evalfleet-compile", daemon=True).start()
    return Compiling(future, cached, start)


def _marker(shapes: Shapes, dtype: torch.dtype) -> Path:
    key = json.dumps([torch.__version__, str(dtype), asdict(shapes), torch.cuda.get_device_name(0)])
    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir() / "inductor")
    return folder / f"evalfleet-fused-{hashlib.sha256(key.encode()).hexdigest()[:16]}.done"


def _compile_apart(shapes: Shapes, dtype: torch.dtype, device: str, marker: Path) -> Kernels | None:
    """Compile in a child process (the same GPUs and cache, one compile thread: the CPU cores stay with the run;
    it writes the marker), then here from its cache. The child is not tied to this process: one that outlives it
    still fills the cache for the next run."""
    cmd = [sys.executable, "-m", "evalfleet.backends.transformers.kernels.compiled", json.dumps(asdict(shapes)), str(dtype).split(".")[-1],
           str(marker)]
    code = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}).wait()
    if code:
        log.info("compiling the fused kernels apart failed (exit %s); compiling them here", code)
    return _compile(shapes, dtype, device)


ROWS = 5
"""The row count each kernel is compiled for ahead: one variant serves every count but 1, which torch.compile
specialises. A decode step one slot wide (an engine of one slot: others decode at least `SMALLEST_WIDTH` wide) or
a one-token prompt compiles it when met: every variant compiled ahead is loaded from the cache at every start (9
variants and the warm-up took 6.7 s of a VLM's start, `bench/probes/cold_start.py`)."""


@torch.inference_mode()  # as batches run: without autograd
def _compile(shapes: Shapes, dtype: torch.dtype, device: str, backend: str = "inductor") -> Kernels | None:
    """The kernels, compiled ahead for every variant a model of `shapes` calls (`_ahead`): a first batch that met
    a variant not compiled yet spent seconds compiling it (`bench/probes/first_job.py`: 9 variants, 5 s of a VLM's first
    451 samples)."""
    k = Kernels(torch.compile(rms_norm, dynamic=True, backend=backend),
                torch.compile(silu_mul, dynamic=True, backend=backend),
                torch.compile(rotary_rows, backend=backend),  # the token dimension is marked dynamic at each call
                torch.compile(rotary_vision, backend=backend))
    try:  # a failure must happen here, not in a batch
        x = torch.randn(2, 64, device=device, dtype=dtype)
        k.silu_mul(x, x.clone())
    except Exception as err:  # noqa: BLE001  # Inductor/Triton missing or broken: keep transformers' kernels
        log.warning("fused kernels unavailable (%s: %s); using transformers' own", type(err).__name__, err)
        return None
    try:
        for fn, args in _ahead(shapes, dtype, device):
            getattr(k, fn)(*args)
    except Exception as err:  # noqa: BLE001  # not an architecture these fit: the warm-up compiles the rest
        log.info("fused kernels not all compiled ahead (%s: %s)", type(err).__name__, err)
    return k


def _ahead(shapes: Shapes, dtype: torch.dtype, device: str) -> list[tuple[str, tuple]]:
    """The calls that compile each variant: the patched modules call the kernels on token rows, [rows, width]
    (`_by_rows`), or [rows, heads, head dim] for the rotary ones."""

    def rand(*size: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*size, device=device, dtype=dt)

    with torch.inference_mode(False):  # like the model's weights: tensors made outside inference mode,
        weights = {w: torch.nn.Parameter(rand(w), requires_grad=False) for w in shapes.norm_widths}  # no gradient
    calls: list[tuple[str, tuple]] = []
    n = ROWS
    for width, weight in weights.items():  # (`fuse_elementwise` takes the model's weights' gradients off)
        calls.append(("rms", (rand(n, width), weight, shapes.eps)))
    calls.append(("silu_mul", (rand(n, 64), rand(n, 64))))
    qk = [rand(n, h, shapes.head_dim) for h in (shapes.heads, shapes.kv_heads)]
    calls.append(("rotary_rows", (*qk, rand(n, shapes.head_dim), rand(n, shapes.head_dim))))
    if shapes.vision_heads:  # q, k: views of one qkv projection
        qk = rand(n, 3, shapes.vision_heads, shapes.vision_dim).permute(1, 0, 2, 3).unbind(0)[:2]
        calls.append(("rotary_vision", (*qk, *(rand(n, shapes.vision_dim, dt=torch.float32) for _ in range(2)))))
    for _, args in calls:
        if args[0].dim() == 3:  # the rotary kernels are compiled with static sizes but for the token count
            for t in args:
                torch._dynamo.maybe_mark_dynamic(t, 0)
    return calls


if __name__ == "__main__":  # `_compile_apart`'s child: fill the compile cache, then mark it filled
    torch._inductor.config.emulate_precision_casts = True
    fields = json.loads(sys.argv[1])
    fields["norm_widths"] = tuple(fields["norm_widths"])
    if _compile(Shapes(**fields), getattr(torch, sys.argv[2]), "cuda:0") is None:
        sys.exit(1)
    Path(sys.argv[3]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[3]).touch()
