"""Placement: how many replicas of a model, on which GPUs, with which starting batch size.

`plan()` is a pure function of a `Machine` snapshot and a `ModelEstimate`, so every decision can be
tested with inventories given as data. `probe_machine()` takes the snapshot (NVML, else torch).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from evalfleet.errors import UserError
from evalfleet.plan.memory import ModelEstimate
from evalfleet.records import WorkerSpec

GiB = 1024**3
Mode = Literal["auto", "single", "data_parallel", "model_parallel", "hybrid"]
RESERVE_BYTES = 1 * GiB
"""Per GPU: CUDA context, cuBLAS workspaces and allocator slack that no tensor of ours gets."""
USABLE_FRACTION = 0.92
"""Share of the rest that placement plans to fill (fragmentation margin)."""
MAX_AUTO_BATCH = 512
"""An auto batch size's cap: the continuous engine's decode slots. 512 slots decoded 4-9 % more tokens a second
than 256 for a 7B on an H200 (`bench/slots.py`); a worker fills them from the two chunks it holds."""
MAX_AUTO_CHUNK = 256
"""An auto batch size's chunks (samples handed to a worker at a time, and so the largest whole batch the static
and `generate` engines see) are at most this: chunks of 512 would leave a dataset of 451 samples to one worker."""
CPU_BATCH = 8
CPU_WORKERS_MAX = 8
"""CPU workers at most, however many cores: each holds its own copy of the weights and reads it every step, and
beyond a few workers memory bandwidth, not cores, bounds a decode step (an estimate: not measured above 2 cores)."""
CPU_WORKER_OVERHEAD = 700 * 2**20
"""Memory of a CPU worker beside its weights: the interpreter, torch, transformers, activations and the KV cache of
its slots (~0.6 GiB measured with SmolLM2-135M and 8 slots)."""


@dataclass(frozen=True)
class Gpu:
    """One visible GPU. `id` is what CUDA_VISIBLE_DEVICES takes (physical index or UUID)."""

    index: int
    id: str
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Machine:
    """What placement needs to know about the host."""

    gpus: list[Gpu]
    cpus: int
    memory_bytes: int | None = None
    """The host's available memory (CPU workers each hold the weights); None where unknown."""


@dataclass
class Plan:
    """The chosen layout and why."""

    workers: list[WorkerSpec]
    mode: str
    gpus_per_replica: int
    batch_size: int
    """Requests a replica works on at once: its decode slots (`continuous`) or the rows of a whole batch."""
    reasons: list[str] = field(default_factory=list)
    engine: str = "auto"
    """The replicas' decoder (`backends/kinds.py: engine_for`), named by `plan/stage.py`; `auto` where only the
    worker can tell (a model without a local config.json)."""


def parse_bytes(text: str) -> int:
    """'10GiB', '512MiB', '20GB', '1.5TiB' or a plain number of bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(f"cannot read {text!r} as a memory size (examples: 10GiB, 512MiB, 20GB)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    return int(value * (1024 if binary or not unit else 1000) ** "_KMGT".index(unit or "_"))


def gib(n: float) -> str:
    """Bytes for people: GiB with one decimal, MiB below 1 GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
"""NVIDIA, ROCm and WSL GPU device files: without any of them torch would find no GPU either."""


def probe_machine() -> Machine:
    """Visible GPUs (NVML honouring CUDA_VISIBLE_DEVICES, else torch) and usable CPU cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = None if visible is None else [v.strip() for v in visible.split(",") if v.strip()]
    if wanted is not None and (not wanted or wanted[0] == "-1"):
        return Machine([], cpus, available_memory())
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML: ask torch (this initialises CUDA in the driver) if a GPU device exists at all
        if not any(Path(dev).exists() for dev in GPU_DEVICE_FILES):
            return Machine([], cpus, available_memory())  # a CPU machine: importing torch to learn that costs ~2 s
        return Machine(_torch_gpus(wanted), cpus)
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = {str(i): pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)}
        uuids = {pynvml.nvmlDeviceGetUUID(h): h for h in handles.values()}
        gpus = []
        for index, gid in enumerate(wanted if wanted is not None else list(handles)):
            h = handles.get(gid) or next((v for u, v in uuids.items() if u.startswith(gid)), None)
            if h is None:
                raise UserError(f"CUDA_VISIBLE_DEVICES names GPU {gid!r}, which NVML does not list")
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(Gpu(index, gid, name.decode() if isinstance(name, bytes) else name, mem.total, mem.free))
        return Machine(gpus, cpus)
    finally:
        pynvml.nvmlShutdown()


def _torch_gpus(wanted: list[str] | None) -> list[Gpu]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        ids = wanted or [str(i) for i in range(torch.cuda.device_count())]
        gpus = []
        for i, gid in enumerate(ids):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(Gpu(i, gid, torch.cuda.get_device_name(i), total, free))
        return gpus
    except Exception:
        return []


def _usable(gpu: Gpu, cap: int | None) -> int:
    return int(max(0, min(gpu.free_bytes, cap or gpu.free_bytes) - RESERVE_BYTES) * USABLE_FRACTION)


def _fit_k(est: ModelEstimate, usable: int, n: int) -> int | None:
    """Smallest number of GPUs whose memory holds the weights plus a batch of one."""
    need = est.weight_bytes + est.bytes_per_sample
    return next((k for k in range(1, n + 1) if k * usable >= need), None)


def cpu_workers(machine: Machine, est: ModelEstimate | None) -> tuple[int, str]:
    """How many CPU workers by default, and why: one a core (up to CPU_WORKERS_MAX), fewer where memory holds fewer
    copies of the weights. One thread a worker is the layout that stays fast when another process takes a core: a
    worker's torch threads wait for each other at every operation, so one descheduled thread stalls them all
    (`bench/cpu_layout.py`, bench/RESULTS.md: on 2 cores beside a busy process, 1 worker x 2 threads took several
    times as long as 2 x 1; quiet, 2 x 1 was faster too)."""
    n = min(machine.cpus, CPU_WORKERS_MAX)
    why = f"one a core (at most {CPU_WORKERS_MAX})"
    if est is not None and machine.memory_bytes:
        fit = max(1, int(machine.memory_bytes * 0.8) // (est.weight_bytes + CPU_WORKER_OVERHEAD))
        if fit < n:
            n, why = fit, f"as many as {gib(machine.memory_bytes)} of available memory holds with " \
                          f"{gib(est.weight_bytes)} of weights each"
    return n, why


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def refuse_unseen_gpus(machine: Machine, gpus: list[int]) -> None:
    """A UserError naming the GPU indices in `gpus` that `machine` does not have."""
    if bad := [g for g in gpus if not 0 <= g < len(machine.gpus)]:
        raise UserError(f"--gpus {','.join(map(str, bad))}: only {len(machine.gpus)} GPU(s) are visible")


def plan(
    machine: Machine,
    est: ModelEstimate | None,
    *,
    mode: Mode = "auto",
    gpus: list[int] | None = None,
    workers: int | None = None,
    gpus_per_replica: int | None = None,
    max_memory_per_gpu: int | None = None,
    batch_size: int | Literal["auto"] = "auto",
) -> Plan:
    """Choose replicas x GPUs per replica and a starting batch size, with one reason per decision.

    Raises:
        UserError: a GPU index that is not visible; a forced mode the model does not fit; a model
            larger than all chosen GPUs together.
    """
    # CPU: `workers` processes sharing the cores (setting `workers` without `gpus` forces this).
    if gpus is None and (workers is not None or not machine.gpus):
        n, why = (workers, "--workers given") if workers else cpu_workers(machine, est)
        threads = max(1, machine.cpus // n)
        bs = CPU_BATCH if batch_size == "auto" else batch_size
        specs = [WorkerSpec(f"cpu{i}", (), threads) for i in range(n)]
        why += "; no GPU visible" if not machine.gpus else " without --gpus"
        return Plan(specs, "cpu", 0, bs, [f"{n} CPU worker(s) x {threads} thread(s): {why}",
                                          f"batch size {bs}" + (" (CPU default)" if batch_size == "auto" else "")])
    chosen = list(range(len(machine.gpus))) if gpus is None else gpus
    refuse_unseen_gpus(machine, chosen)
    pool = [machine.gpus[g] for g in chosen]
    if mode == "single":
        pool = pool[:1]
    n = len(pool)
    usable = min(_usable(g, max_memory_per_gpu) for g in pool)
    cap_note = f" (capped at {gib(max_memory_per_gpu)})" if max_memory_per_gpu else ""
    reasons = [f"{n} GPU(s) chosen, {gib(usable)} usable on the smallest{cap_note} after a "
               f"{gib(RESERVE_BYTES)} reserve and a {1 - USABLE_FRACTION:.0%} margin"]

    if est is None:  # nothing known about the model: one replica per GPU
        k = gpus_per_replica or 1
    else:
        reasons.append(f"model needs {gib(est.weight_bytes)} of weights + {gib(est.bytes_per_sample)} per sample "
                       f"in a batch ({est.tokens_per_sample} tokens x {est.kv_bytes_per_token / 1024:.0f} KiB KV "
                       f"+ activations)")
        k_min = _fit_k(est, usable, n)
        if k_min is None:
            raise UserError(f"the model does not fit: it needs about {gib(est.weight_bytes + est.bytes_per_sample)} "
                            f"and the {n} chosen GPU(s) offer {gib(n * usable)} together")
        if mode in ("single", "data_parallel") and k_min > 1:
            raise UserError(f"mode {mode}: the model needs {k_min} GPUs' memory ({gib(est.weight_bytes)} of weights, "
                            f"{gib(usable)} usable per GPU); use auto, hybrid or model_parallel")
        if gpus_per_replica is not None:
            if gpus_per_replica < k_min or gpus_per_replica > n:
                raise UserError(f"gpus_per_replica {gpus_per_replica}: needs between {k_min} and {n}")
            k = gpus_per_replica
            reasons.append(f"{k} GPU(s) per replica as configured (at least {k_min} needed)")
        elif mode == "model_parallel":
            k = n
            reasons.append(f"model_parallel: one replica over all {n} GPU(s) (at least {k_min} needed)")
        elif k_min == 1:
            k = 1
            reasons.append("fits on one GPU: one replica per GPU (data parallel)")
        else:
            # As many replicas as k_min allows, then spread leftover GPUs over them for batch headroom.
            k = n // (n // k_min)
            reasons.append(f"does not fit one GPU: needs {k_min}; {n // k_min} replica(s) x {k} GPU(s) "
                           f"{'(leftover GPUs spread over replicas for larger batches)' if k > k_min else ''}".rstrip())
    replicas = [pool[i : i + k] for i in range(0, n - n % k, k)]
    if n % k:
        reasons.append(f"{n % k} GPU(s) left idle: {n} is not a multiple of {k}")
    threads = max(1, machine.cpus // max(1, len(replicas)))
    specs = [
        WorkerSpec("gpu" + "-".join(str(g.index) for g in r), tuple(g.id for g in r), threads, max_memory_per_gpu)
        for r in replicas
    ]
    if batch_size != "auto":
        bs = batch_size
        reasons.append(f"batch size {bs} as configured")
    elif est is None:
        bs = CPU_BATCH
        reasons.append(f"batch size {bs}: no memory estimate")
    else:
        room = k * usable - est.weight_bytes
        fit = max(1, room // est.bytes_per_sample)
        bs = min(MAX_AUTO_BATCH, 2 ** int(math.log2(fit)))
        reasons.append(f"batch size {bs}: {gib(room)} left per replica after weights fits {fit} samples "
                       f"(power of two, at most {MAX_AUTO_BATCH}; in chunks of at most {MAX_AUTO_CHUNK}); halved on "
                       "out-of-memory, regrown after successes")
    label = "data_parallel" if k == 1 else ("model_parallel" if len(replicas) == 1 else "hybrid")
    reasons.insert(0, f"layout: {len(replicas)} replica(s) x {k} GPU(s) = {label}")
    return Plan(specs, label, k, bs, reasons)



def chunk_size_for(batch_size: int, auto: bool, configured: int | None = None) -> int:
    """Samples handed to a worker at a time: as `configured`, else the batch size, at most `MAX_AUTO_CHUNK` where
    the plan chose it from memory (`auto`; the continuous engine's slots then fill from the two chunks a worker
    holds)."""
    return configured or (min(batch_size, MAX_AUTO_CHUNK) if auto else batch_size)


def describe(machine: Machine, est: ModelEstimate | None, chosen: Plan) -> list[str]:
    """The plan as lines for a person: inventory, model estimate, layout with reasons."""
    lines = [f"GPU {g.index} ({g.id}): {g.name}, {gib(g.total_bytes)} total, {gib(g.free_bytes)} free"
             for g in machine.gpus] or [f"no GPU visible; {machine.cpus} CPU core(s)"]
    if est is not None:
        lines.append(f"model: {est.params / 1e9:.2f} B parameters ({est.source}) in {est.dtype} = "
                     f"{gib(est.weight_bytes)} of weights; KV cache {est.kv_bytes_per_token / 1024:.0f} KiB/token")
        image = f", {est.image_tokens} image tokens per image" if est.image_tokens else ""
        if est.tokens_per_sample:  # (on a CPU only the weights are estimated)
            lines.append(f"samples: up to ~{est.tokens_per_sample} tokens each (prompt + generated{image}); "
                         f"activations ~{gib(est.activation_bytes_per_sample)} per sample")
    lines += [f"plan: {r}" for r in chosen.reasons]
    lines += [f"worker {w.name}: " + (f"GPUs {','.join(w.gpus)}" if w.gpus else f"CPU, {w.threads} thread(s)")
              for w in chosen.workers]
    return lines


def split_gpus(visible: list[int], wanted: list[list[int] | None], names: list[str]) -> list[list[int]]:
    """Disjoint GPU sets for stages that run at once: a stage's own `gpus` are kept, the other visible GPUs
    are dealt out evenly, in order, to the stages that name none.

    Raises:
        UserError: a stage would get no GPU.
    """
    taken = {g for w in wanted if w for g in w}
    free = [g for g in visible if g not in taken]
    open_ = [i for i, w in enumerate(wanted) if w is None]
    out = [list(w or []) for w in wanted]
    for j, i in enumerate(open_):
        out[i] = free[j * len(free) // len(open_) : (j + 1) * len(free) // len(open_)]
    empty = [names[i] for i, g in enumerate(out) if not g]
    if empty:
        raise UserError(f"concurrent_stages: no GPU left for stage(s) {', '.join(empty)} ({len(visible)} GPU(s) "
                        f"for {len(wanted)} stages); give stages their `gpus` or run them one after the other")
    return out
