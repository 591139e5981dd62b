"""`evalfleet status | report | show | compare | merge`: commands that read runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from evalfleet.cli.common import _guard, app, console
from evalfleet.config import parse_config
from evalfleet.errors import UserError


@app.command("status")
def status_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (output_dir/name).")],
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Refresh until the run is no longer running.")] = False,
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
