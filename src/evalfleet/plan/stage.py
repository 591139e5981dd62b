"""One stage's plan: probe the machine (or the Ray cluster), estimate the model's memory on the stage's samples,
and choose the layout and batch size (`plan.placement.plan`, a pure function over that snapshot)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from evalfleet.backends.kinds import engine_for, kind
from evalfleet.config import ModelConfig, RunConfig
from evalfleet.data.images import open_image
from evalfleet.errors import UserError
from evalfleet.plan.memory import ModelEstimate, estimate_model, longest_prompt_tokens
from evalfleet.plan.placement import (
    Machine,
    Plan,
    describe,
    parse_bytes,
    plan,
    probe_machine,
    refuse_unseen_gpus,
    split_gpus,
)
from evalfleet.records import Sample


def make_plan(
    cfg: RunConfig, model: ModelConfig, samples: list[Sample], *, gpus: list[int] | None = None, share: int = 1
) -> tuple[Plan, list[str]]:
    """Probe the machine, estimate `model` on `samples`, choose the layout; returns it with its description.

    `gpus` replaces the run's GPUs (a stage's own set); `share` divides the CPU cores (stages at once).
    """
    if kind(model.backend).remote:  # the endpoints do the work: one worker sends the requests
        s = model.server
        batch = model.batch_size if model.batch_size != "auto" else 2 * s.max_in_flight * len(s.urls)
        chosen = plan(Machine([], 1), None, workers=1, batch_size=batch)
        chosen.engine = "generate"
        chosen.reasons.append(f"openai backend: {len(s.urls)} endpoint(s), up to {s.max_in_flight} requests in "
                              "flight each, from one worker")
        return chosen, [f"plan: {r}" for r in chosen.reasons]
    machine = _machine(cfg)
    machine = replace(machine, cpus=max(1, machine.cpus // share))
    gpus = gpus if gpus is not None else cfg.gpus
    p = cfg.placement
    cap = parse_bytes(p.max_memory_per_gpu) if p.max_memory_per_gpu else None
    on_gpu = bool(machine.gpus) and not (cfg.workers is not None and gpus is None)
    est = _estimate(model, samples, on_gpu) if on_gpu else _weights(model) if cfg.workers is None else None
    chosen = plan(machine, est, mode=p.mode, gpus=gpus, workers=cfg.workers,
                  gpus_per_replica=p.gpus_per_replica, max_memory_per_gpu=cap, batch_size=model.batch_size)
    chosen.engine, why = choose_engine(model, chosen.gpus_per_replica)
    chosen.reasons.append(f"engine {chosen.engine}: {why}")
    if p.cpu_worker_headroom and chosen.mode == "cpu":
        headroom = parse_bytes(p.cpu_worker_headroom)
        chosen.workers = [replace(w, cpu_headroom=headroom) for w in chosen.workers]
    return chosen, describe(machine, est, chosen)


def choose_engine(model: ModelConfig, gpus: int) -> tuple[str, str]:
    """The replicas' decoder and why (`engine_for`), from the checkpoint's config.json; `auto` (the worker chooses by
    the same rule) where there is none to read (a hub id)."""
    try:
        config = json.loads((Path(model.path) / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if config is None and kind(model.backend).streams and model.engine == "auto":
        return "auto", "chosen by each worker from the model's config (no local config.json to read here)"
    config = config or {}
    try:
        return engine_for(model.engine, backend=model.backend, model_type=config.get("model_type"),
                          vision="vision_config" in config, gpus=gpus)
    except ValueError as err:
        raise UserError(f"model {model.path}: {err}") from None


def _weights(model: ModelConfig) -> ModelEstimate | None:
    """On a CPU: the weights' size, for how many workers memory holds (no prompt is tokenized)."""
    if not (Path(model.path) / "config.json").is_file():
        return None
    try:
        return estimate_model(model.path, dtype=model.resolved_dtype(on_gpu=False), max_new_tokens=0, prompt_tokens=0,
                              image_sizes=[], images_per_sample=0)
    except (KeyError, TypeError, ValueError, UserError):  # a config this estimate does not know: no memory cap
        return None


def _estimate(model: ModelConfig, samples: list[Sample], on_gpu: bool) -> ModelEstimate | None:
    """Memory estimate from the checkpoint files and the data; None when there is no local config.json."""
    if not (Path(model.path) / "config.json").is_file():
        return None
    sizes = []
    for s in [s for s in samples if s.images][:16]:
        try:
            sizes += [open_image(ref).size for ref in s.images]
        except ValueError:
            continue  # reported when the sample runs
    texts = ["".join(m["content"] for m in s.context) + s.prompt for s in samples]  # few-shot turns count too
    return estimate_model(
        model.path,
        dtype=model.resolved_dtype(on_gpu=on_gpu),
        max_new_tokens=model.generation.max_new_tokens,
        prompt_tokens=longest_prompt_tokens(model.path, texts),
        image_sizes=sizes,
        images_per_sample=max((len(s.images) for s in samples), default=0),
    )


def _machine(cfg: RunConfig) -> Machine:
    """This machine, or with `cluster.backend: ray` the whole Ray cluster as one pool."""
    if cfg.cluster.backend == "ray":
        from evalfleet.cluster.ray import cluster_machine, connect

        connect(cfg.cluster.address)
        return cluster_machine()
    return probe_machine()


def stage_gpus(cfg: RunConfig) -> list[list[int] | None]:
    """Each stage's GPUs: its own `gpus`, else the run's; with `concurrent_stages`, disjoint shares."""
    stages = cfg.pipeline()
    if not (cfg.concurrent_stages and len(stages) > 1):
        return [s.gpus if s.gpus is not None else cfg.gpus for s in stages]
    n = len(_machine(cfg).gpus)
    if not n or (cfg.workers is not None and cfg.gpus is None):
        return [None] * len(stages)  # CPU: every stage gets its workers, sharing the cores
    return split_gpus(cfg.gpus if cfg.gpus is not None else list(range(n)), [s.gpus for s in stages],
                      [s.name for s in stages])


def check_gpus(cfg: RunConfig) -> None:
    """Refuse GPUs the run asks for (`--gpus`, a stage's `gpus`) that are not visible, and stages that cannot get
    disjoint GPU sets, before anything is written (the plan of each stage would refuse them later)."""
    stage_gpus(cfg)
    asked = sorted({g for s in cfg.pipeline() if not kind(s.model.backend).remote
                    for g in (s.gpus if s.gpus is not None else cfg.gpus) or []})
    if asked:
        refuse_unseen_gpus(_machine(cfg), asked)
