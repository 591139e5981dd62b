"""`evalfleet run | plan | serve | demo`: commands that run models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from evalfleet.cli.common import (
    FreshOpt,
    GpusOpt,
    LimitOpt,
    LogOpt,
    MaxMemOpt,
    ModeOpt,
    SetOpt,
    WorkersOpt,
    _execute,
    _guard,
    app,
    console,
    set_overrides,
)
from evalfleet.config import OVERRIDE_OPTIONS, load_config, option_overrides
from evalfleet.errors import UserError


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    gpus: GpusOpt = None,
    workers: WorkersOpt = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="Samples per batch, or auto.")] = None,
    limit: LimitOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for shuffling and sampling.")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Output folder (overrides output_dir).")] = None,
    fresh: FreshOpt = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors/--no-retry-errors", help="Recompute samples that failed.")] = False,
    log_file: LogOpt = None,
    mode: ModeOpt = None,
    max_memory_per_gpu: MaxMemOpt = None,
    show_samples: Annotated[bool | None, typer.Option("--show-samples/--no-show-samples",
                                                      help="A line per finished sample.")] = None,
    redo: Annotated[list[str] | None, typer.Option("--redo", help="Drop a stage's results first (repeatable).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="i/N: only shard i of N, into RUN_DIR/shards/; "
                                                              "`slurm`: the array task's shard.")] = None,
    ray: Annotated[bool, typer.Option("--ray/--no-ray", help="Run the replicas as Ray actors (cluster.backend: ray).")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join, e.g. auto or "
                                                                          "HOST:6379 (implies --ray).")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Use the replicas `evalfleet serve` keeps loaded "
                                                        "(cluster.backend: serve).")] = False,
    sets: SetOpt = None,
) -> None:
    """Run an evaluation, or resume it where it stopped."""

    def go() -> None:
        from evalfleet.cluster.shards import parse_shard

        out_dir = str(Path(out).expanduser().resolve()) if out else None  # on the command line: from here
        overrides = set_overrides(sets) | option_overrides(
            gpus=gpus, workers=workers, batch_size=batch_size, limit=limit, seed=seed, out=out_dir, mode=mode,
            max_memory_per_gpu=max_memory_per_gpu, show_samples=show_samples)
        if shard is not None:
            overrides["shard"] = "/".join(map(str, parse_shard(shard)))
        if serve:
            overrides["cluster.backend"] = "serve"
        if ray or ray_address:
            overrides["cluster.backend"] = "ray"
            if ray_address:
                overrides["cluster.address"] = ray_address
        _execute(load_config(config, overrides, OVERRIDE_OPTIONS), fresh=fresh, retry_errors=retry_errors, redo=redo,
                 log_file=log_file)

    _guard(go)


@app.command("plan")
def plan_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    gpus: GpusOpt = None,
    workers: WorkersOpt = None,
    mode: ModeOpt = None,
    max_memory_per_gpu: MaxMemOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show the GPUs, the model's memory estimate and the chosen layout, without running anything."""

    def go() -> None:
        from evalfleet.data.datasets import DatasetError
        from evalfleet.data.load import load_samples
        from evalfleet.plan.stage import make_plan, stage_gpus
        from evalfleet.stages.judge import judge_plan_samples

        overrides = set_overrides(sets) | option_overrides(gpus=gpus, workers=workers, mode=mode,
                                                           max_memory_per_gpu=max_memory_per_gpu)
        cfg = load_config(config, overrides, OVERRIDE_OPTIONS)
        samples = []
        for ds in cfg.datasets:
            try:
                samples += load_samples(ds, seed=cfg.seed, limit=cfg.limit)
            except DatasetError as err:
                console.print(f"dataset {ds.name}: {escape(str(err))} (ignored for the plan)", highlight=False)
        stages = cfg.pipeline()
        share = len(stages) if cfg.concurrent_stages else 1
        for stage, stage_gpu in zip(stages, stage_gpus(cfg)):  # judges: answers as long as the answerer may write
            plan_for = judge_plan_samples(stage, stages[0], {"all": samples}) if stage.kind == "judge" else samples
            for line in make_plan(cfg, stage.model, plan_for, gpus=stage_gpu, share=share)[1]:
                console.print(f"{stage.name}: {line}", markup=False, highlight=False)

    _guard(go)


@app.command("serve")
def serve_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (not with --stop).")] = None,
    gpus: GpusOpt = None,
    workers: WorkersOpt = None,
    stage: Annotated[str | None, typer.Option("--stage", help="The stage whose model to serve (default: the "
                                                              "first).")] = None,
    idle_minutes: Annotated[float, typer.Option("--idle-minutes", help="Stop after this long unused.")] = 30,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the replicas served on this machine.")] = False,
    serve_dir: Annotated[str | None, typer.Option("--serve-dir", help="Where replicas register (default: "
                                                                     "cluster.serve_dir, else the cache).")] = None,
    sets: SetOpt = None,
) -> None:
    """Keep a stage's model loaded on this machine, so that `evalfleet run CONFIG --serve` starts at once."""

    def go() -> None:
        from evalfleet.run import printer
        from evalfleet.serve import serve, stop_serving

        if stop:
            return stop_serving(serve_dir, printer(console))
        if config is None:
            raise UserError("give a config file, or --stop")
        overrides = set_overrides(sets) | option_overrides(gpus=gpus, workers=workers)
        if serve_dir is not None:
            overrides["cluster.serve_dir"] = serve_dir
        serve(load_config(config, overrides, OVERRIDE_OPTIONS), idle_minutes * 60, printer(console), stage)

    _guard(go)


@app.command("demo")
def demo_cmd(
    workers: Annotated[int, typer.Option("--workers", help="CPU worker processes.")] = 2,
    limit: LimitOpt = None,
    out: Annotated[str, typer.Option("--out", help="Output folder.")] = "runs",
    fresh: FreshOpt = True,
    log_file: LogOpt = None,
) -> None:
    """SmolLM2-135M-Instruct on the bundled questions, on the CPU; prepares the model once."""

    def go() -> None:
        from evalfleet.assets import demo_config, smollm2_path

        console.print("[evalfleet] preparing SmolLM2-135M-Instruct (once; cached afterwards) ...", markup=False)
        cfg = demo_config(str(smollm2_path()), out=out, workers=workers, limit=limit)
        _execute(cfg, fresh=fresh, log_file=log_file)
        console.print(
            "lenient_match judges the first line of each answer: its last number must equal a numeric reference, "
            "otherwise the reference must appear in it as whole words; exact_match compares the whole normalised "
            "answer (SmolLM2 answers in sentences, so it scores near 0).",
            highlight=False,
        )

    _guard(go)
