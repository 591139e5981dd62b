"""`evalfleet status | report | show | compare | merge`: commands that read runs."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from evalfleet.cli.common import _guard, app, console
from evalfleet.config import parse_config
from evalfleet.errors import RunError, UserError
from evalfleet.scoring import JudgeScore, Score, stage_scorer


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
    """One sample as stored: its question, options, images and reference answers, then for each stage the exact
    prompt its model was given (chat-templated), the reply, and how it was scored as stored (the extracted answer
    and each metric, or the judge's parsed score or why it could not be read)."""

    def go() -> None:
        with _stored(run_dir) as (store, cfg):
            stages = cfg.pipeline()
            names = [d["name"] for d in store.datasets()]
            if dataset not in names:
                raise UserError(f"{run_dir}: no dataset {dataset!r}; its datasets: {', '.join(names)}")
            first = next(store.rows(stages[0].name, dataset, [sample_id]), None)
            if first is None:
                ids = [r["id"] for r in store.rows(stages[0].name, dataset)]
                near = difflib.get_close_matches(sample_id, ids, n=5, cutoff=0.5)
                raise UserError(f"{run_dir}: no sample {sample_id!r} in dataset {dataset!r} ({len(ids)} samples)"
                                + (f"; near: {', '.join(near)}" if near else ""))
            print_text = partial(console.print, markup=False, highlight=False)
            options = (first.get("metadata") or {}).get("options") or {}
            print_text(f"{dataset}/{sample_id}\nquestion: {first['question']}"
                       + "".join(f"\n  {k}. {v}" for k, v in options.items())
                       + f"\nanswers: {' / '.join(first['answers'])}"
                       + "".join(f"\nimage: {i.get('path') or i['where']}" for i in first.get("images") or []))
            for stage in stages:
                row = next(store.rows(stage.name, dataset, [sample_id]), None)
                if row is None:
                    print_text(f"{stage.name}: not run yet")
                    continue
                console.rule(f"{stage.name}: prompt", characters="-")
                print_text(row["rendered_prompt"] or "(not stored: answered from the judge cache or never run)")
                console.rule(f"{stage.name}: {'error' if row['error'] else 'reply'}", characters="-")
                print_text(row["error"] or row["prediction"] or "(not answered yet)")
                if row["finished"] and not row["error"] and row["prediction"] is not None:
                    score = row["score"]
                    if score is None:  # a store from before scores were kept: scored as a report would
                        score = stage_scorer(stage, cfg)(dataset, row["prediction"], row["answers"],
                                                         row.get("metadata") or {})
                    print_text(scored_line(score))

    _guard(go, store=run_dir / "store.db")


def scored_line(score: Score | None) -> str:
    """`extracted: 16 (answer_prefix); exact_match 1, lenient_match 1`, or a judge's `score 4 (reason)` / why not."""
    if score is None:
        return "not scored"
    if isinstance(score, JudgeScore):
        if score.score is None:
            return f"judge reply not parsed: {score.error}"
        return f"judge score: {score.score:g}" + (f" ({score.reason})" if score.reason else "")
    if score.extraction == "truncated":
        return "truncated: the reply ended inside its thinking (<think> not closed); not scored"
    metrics = ", ".join(f"{k} {v:g}" for k, v in (score.metrics or {}).items())
    return f"extracted: {score.extracted!r} ({score.extraction}); {metrics or 'no metrics'}"


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    metric: Annotated[str | None, typer.Option("--metric", help="Only this metric or judge stage (default: every "
                                                                "one both runs have).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the comparison: FILE.md or FILE.html.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Compare two runs sample by sample on every metric and judge both have: paired outcomes, bootstrap CI,
    McNemar's test; then the settings their configs differ in. Exit 1 when they share no sample."""

    def go() -> None:
        from evalfleet.reporting.compare import compare_all, settings_markdown, to_html, to_markdown

        if out is not None and out.suffix not in (".md", ".html"):
            raise UserError(f"--out {out}: give a .md or .html file")
        results = compare_all(run_a, run_b, metrics=[metric] if metric else None, seed=seed)
        text = "\n".join(to_markdown(r) for r in results) + "\n" + settings_markdown(results[0])
        console.print(text, markup=False, highlight=False, soft_wrap=True)  # a table row is never broken in two
        if out is not None:
            out.write_text(text if out.suffix == ".md" else to_html(results))
            console.print(f"[evalfleet] written {out}", markup=False, highlight=False)
        if not results[0].shared_samples:
            raise RunError(f"{run_a} and {run_b} share no sample (no dataset and id in both): nothing was compared")

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
