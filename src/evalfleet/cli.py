"""Command line: `evalfleet run | plan | status | report | show | compare | merge | slurm | demo`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from evalfleet.config import OVERRIDE_OPTIONS, load_config, option_overrides, parse_config
from evalfleet.errors import RunError, UserError
from evalfleet.stopping import Stopped

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
if not console.is_terminal:  # logs and pipes: keep tables on one line each
    console = Console(width=160)


def _execute(cfg: Any, *, fresh: bool, log_file: Path | None, retry_errors: bool = False,
             redo: list[str] | None = None) -> None:
    from evalfleet.run import run

    summary = run(cfg, fresh=fresh, retry_errors=retry_errors, redo=redo, console=console, log_file=log_file)
    failed = [f"{name}: {ds.get('error')}" for name, ds in summary["datasets"].items() if ds.get("status") == "failed"]
    if failed:  # the others' results are saved and reported; the run as a whole did not do what was asked
        raise RunError("these datasets could not be read, the others' results are saved:\n  " + "\n  ".join(failed))


def _guard(fn: Callable[[], None], store: Path | None = None) -> None:
    """Print user errors (exit 2) and runs that could not go on (exit 1) without a traceback; after a stop signal,
    exit 130 (Ctrl-C) or 75 (SIGTERM, SIGUSR1: preempted, run again to resume). `store`: the store the command
    reads, named in its errors."""
    from evalfleet.store import store_errors

    try:
        if store is None:
            fn()
        else:
            with store_errors(store):
                fn()
    except (UserError, RunError) as err:
        console.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    except Stopped as stop:
        console.print(f"[evalfleet] {stop}; results so far are saved. Run the same command again to resume.",
                      markup=False, highlight=False)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


GpusOpt = Annotated[str | None, typer.Option("--gpus", help="GPU indices, e.g. 0,1,2 (default: all visible).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="CPU worker processes (forces CPU).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most N samples per dataset.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Delete earlier results of this run and start over.")]
MaxMemOpt = Annotated[str | None, typer.Option("--max-memory-per-gpu", help="Cap per GPU, e.g. 10GiB.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="auto, single, data_parallel, model_parallel, hybrid.")]
LogOpt = Annotated[Path | None, typer.Option("--log-file", help="Full log (default: RUN_DIR/run.log).")]


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
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Recompute samples that failed.")] = False,
    log_file: LogOpt = None,
    mode: ModeOpt = None,
    max_memory_per_gpu: MaxMemOpt = None,
    show_samples: Annotated[bool, typer.Option("--show-samples", help="A line per finished sample.")] = False,
    redo: Annotated[list[str] | None, typer.Option("--redo", help="Drop a stage's results first (repeatable).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="i/N: only shard i of N, into RUN_DIR/shards/; "
                                                              "`slurm`: the array task's shard.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run the replicas as Ray actors (cluster.backend: ray).")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join, e.g. auto or "
                                                                          "HOST:6379 (implies --ray).")] = None,
) -> None:
    """Run an evaluation, or resume it where it stopped."""

    def go() -> None:
        from evalfleet.cluster.shards import parse_shard

        overrides = option_overrides(gpus=gpus, workers=workers, batch_size=batch_size, limit=limit, seed=seed, out=out,
                               mode=mode, max_memory_per_gpu=max_memory_per_gpu, show_samples=show_samples or None)
        if shard is not None:
            overrides["shard"] = "/".join(map(str, parse_shard(shard)))
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
) -> None:
    """Show the GPUs, the model's memory estimate and the chosen layout, without running anything."""

    def go() -> None:
        from evalfleet.data.datasets import DatasetError, load_samples
        from evalfleet.plan.stage import make_plan, stage_gpus
        from evalfleet.stages.judge import judge_plan_samples

        overrides = option_overrides(gpus=gpus, workers=workers, mode=mode, max_memory_per_gpu=max_memory_per_gpu)
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


@app.command("status")
def status_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (output_dir/name).")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the run is no longer running.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Where a run stands: each stage x dataset, each worker, the ETA. Reads the store only (any shell)."""

    def go() -> None:
        import time

        from rich.live import Live

        from evalfleet.reporting.status import read_status, status_view

        st = read_status(run_dir)
        if not watch:
            console.print(status_view(st))
            return
        with Live(status_view(st), console=console, refresh_per_second=4) as live:
            while st.state == "running":
                time.sleep(interval)
                st = read_status(run_dir)
                live.update(status_view(st))

    _guard(go, store=run_dir / "store.db")


@contextmanager
def _stored(run_dir: Path) -> Iterator[tuple[Any, Any]]:
    """A finished or running run's store, opened read-mostly, and the config it was run with."""
    from evalfleet.store import Store

    store = Store.open_existing(run_dir)
    try:
        yield store, parse_config(store.get_meta("config"), source=str(run_dir))
    finally:
        store.close()


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (output_dir/name).")],
    fmt: Annotated[str, typer.Option("--format", help="Comma-separated: json, md, csv, parquet, html.")] = "json,md",
) -> None:
    """Rebuild the report from the store, without recomputing: summary.json + predictions/*.jsonl (json),
    summary.md (md), predictions/*.csv (csv), predictions.parquet (parquet), report.html (html)."""

    def go() -> None:
        from evalfleet.reporting.report import write_report

        with _stored(run_dir) as (store, cfg):
            write_report(run_dir, store, cfg, console, formats=tuple(f.strip() for f in fmt.split(",") if f.strip()))

    _guard(go, store=run_dir / "store.db")


@app.command("show")
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (output_dir/name).")],
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    sample_id: Annotated[str, typer.Argument(help="Sample id.")],
) -> None:
    """One sample as stored: its question and reference answers, then for each stage the exact prompt its model
    was given (chat-templated) and the reply."""

    def go() -> None:
        with _stored(run_dir) as (store, cfg):
            shown = False
            for stage in cfg.pipeline():
                row = next(store.rows(stage.name, dataset, [sample_id]), None)
                if row is None:
                    break
                if not shown:
                    console.print(f"{dataset}/{sample_id}\nquestion: {row['question']}\n"
                                  f"answers: {' / '.join(row['answers'])}", markup=False, highlight=False)
                    shown = True
                prompt = row["rendered_prompt"] or "(not stored: answered from the judge cache or never run)"
                console.rule(f"{stage.name}: prompt", characters="-")
                console.print(prompt, markup=False, highlight=False)
                console.rule(f"{stage.name}: {'error' if row['error'] else 'reply'}", characters="-")
                console.print(row["error"] or row["prediction"] or "(not answered yet)", markup=False, highlight=False)
                if row["score"]:
                    console.print(f"score: {json.dumps(row['score'])}", markup=False, highlight=False)
            if not shown:
                raise UserError(f"{run_dir}: no sample {sample_id!r} in dataset {dataset!r}")

    _guard(go, store=run_dir / "store.db")


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    metric: Annotated[str | None, typer.Option("--metric", help="Metric or judge stage to compare (default: "
                                                                "the first metric both runs have).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the comparison: FILE.md or FILE.html.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Compare two runs sample by sample: metric of each, paired outcomes, bootstrap CI and McNemar's test."""

    def go() -> None:
        from evalfleet.reporting.compare import compare_runs, to_html, to_markdown

        result = compare_runs(run_a, run_b, metric=metric, seed=seed)
        console.print(to_markdown(result), markup=False, highlight=False)
        if out is not None:
            if out.suffix not in (".md", ".html"):
                raise UserError(f"--out {out}: give a .md or .html file")
            out.write_text(to_markdown(result) if out.suffix == ".md" else to_html(result))
            console.print(f"[evalfleet] written {out}", markup=False, highlight=False)

    _guard(go)


@app.command("merge")
def merge_cmd(run_dir: Annotated[Path, typer.Argument(help="Run folder whose shards/ to unite.")]) -> None:
    """Unite the shard stores of RUN_DIR/shards/ (runs with --shard i/N) into RUN_DIR's store; write the report."""

    def go() -> None:
        from evalfleet.cluster.shards import merge_shards
        from evalfleet.reporting.report import write_report

        store, notes = merge_shards(run_dir)
        try:
            for note in notes:
                console.print(f"[evalfleet] warning: {note}", markup=False, highlight=False)
            write_report(run_dir, store, parse_config(store.get_meta("config"), source=str(run_dir)), console)
        finally:
            store.close()

    _guard(go)


@app.command("slurm")
def slurm_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    array: Annotated[int | None, typer.Option("--array", help="Array tasks: the run is split into this many "
                                                              "shards, merged by a job after them.")] = None,
    ray_nodes: Annotated[int | None, typer.Option("--ray-nodes", help="Instead: one allocation of this many nodes "
                                                                      "running a Ray cluster for one run.")] = None,
    gpus_per_task: Annotated[int | None, typer.Option("--gpus-per-task", help="GPUs of each task.")] = None,
    cpus_per_task: Annotated[int | None, typer.Option("--cpus-per-task", help="CPU cores of each task.")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory of each task, e.g. 64G.")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 12:00:00.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account.")] = None,
    signal_before: Annotated[int, typer.Option("--signal-before", help="Seconds before the time limit at which "
                                               "each task is told to stop, saves its results and requeues itself "
                                               "(0: never).")] = 120,
    submit: Annotated[bool, typer.Option("--submit", help="sbatch the array and the merge job after it.")] = False,
) -> None:
    """Write a Slurm job array (task i runs shard i) and a merge job, or (--ray-nodes) one multi-node job running
    a Ray cluster for the run; with --submit, submit them."""

    def go() -> None:
        from evalfleet.cluster.slurm import SlurmOptions, slurm_jobs

        if (array is None) == (ray_nodes is None):
            raise UserError("give --array N (shards + merge) or --ray-nodes N (one Ray cluster)")
        opts = SlurmOptions(array or 1, gpus_per_task, cpus_per_task, mem, time_limit, partition, account,
                            signal_before)
        for line in slurm_jobs(load_config(config), config, opts, ray_nodes=ray_nodes, submit=submit):
            console.print(f"[evalfleet] {line}", markup=False, highlight=False)

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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
