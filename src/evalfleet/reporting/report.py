"""Reports from the store alone: summary.json, summary.md, per-sample predictions (JSONL, CSV, parquet), the
HTML report (`reporting.html`); the tables are `reporting.tables`.

`build_summary` keeps each dataset's rows (`_rows`, with their stored scores) and each judge's verdict on each
sample (`_judged`) beside them: the rows as the store gives them for the views that list samples (CSV, parquet,
HTML, compare), else only what the summaries read of them, the JSONL predictions written as the rows stream by
(a million samples' report holds no row's texts)."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

from rich.console import Console

from evalfleet.bulk import bulk_objects
from evalfleet.config import RunConfig, StageConfig
from evalfleet.errors import RunError, UserError
from evalfleet.reporting.failures import error_lines, stage_errors
from evalfleet.reporting.provenance import summary_provenance
from evalfleet.reporting.tables import (
    PERFORMANCE_HEAD,
    STARTUP_HEAD,
    console_table,
    markdown_rows,
    markdown_table,
    performance_rows,
    performance_table,
    sample_records,
    startup_rows,
    startup_table,
)
from evalfleet.scoring import answer_score, scoring_key, stage_scorer, summarize, summarize_groups
from evalfleet.store import Store


def _scored(store: Store, stage: StageConfig, cfg: RunConfig, dataset: str, rows: Iterable[dict[str, Any]],
            stale: bool) -> Iterator[dict[str, Any]]:
    """The rows, with their scores as stored; those missing (results stored before scores were, judge cache hits)
    or `stale` (the scoring settings changed) are computed now, by the same function, and stored once the rows
    have gone by."""
    if stage.kind == "edit":
        yield from rows
        return
    score = stage_scorer(stage, cfg)
    redo = {}
    for row in rows:
        if row["finished"] and row["error"] is None and row["prediction"] is not None and (
                stale or row["score"] is None):
            row["score"] = redo[row["id"]] = score(dataset, row["prediction"], row["answers"], row["metadata"])
        yield row
    if redo:
        try:
            store.set_scores(stage.name, dataset, redo)
        except sqlite3.Error:  # a store that cannot be written (read-only): the report uses them all the same
            pass


SUMMARISED = ("id", "finished", "error", "score", "answers", "metadata")
"""What the summaries read of a row (`scoring.summary`, `failures.stage_errors`): all a streamed report keeps."""


def prediction_record(row: dict[str, Any], verdicts: dict[str, Any] | None) -> dict[str, Any]:
    """A row as predictions/<dataset>.jsonl writes it, with each judge's verdict on it."""
    answer = row["answers"][0] if len(row["answers"]) == 1 else row["answers"]
    a = answer_score(row)
    record = {"id": row["id"], "question": row["question"], "prediction": row["prediction"],
              "extracted": a.extracted if a else None, "extraction": a.extraction if a else None,
              "answer": answer, "score": a.metrics if a else None, "error": row["error"],
              "prompt": row["rendered_prompt"],
              **({"columns": c} if (c := (row.get("metadata") or {}).get("columns")) else {})}
    if verdicts:
        record["judge"] = verdicts
    return record


def _written(path: Path, rows: Iterable[dict[str, Any]], judged: dict[str, dict[str, Any]]
             ) -> Iterator[dict[str, Any]]:
    """Write each row's prediction record to `path` as it goes by; yield what the summaries read of it."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(prediction_record(row, judged.get(row["id"]))) + "\n")
            yield {k: row[k] for k in SUMMARISED}


def _judge(judge_rows: list[dict[str, Any]], stage: StageConfig, judged: dict[str, dict[str, dict[str, Any]]]
           ) -> dict[str, Any]:
    """Put each sample's verdict of one judge stage in `judged` ({sample id: {stage: verdict}}: its score,
    reason, reply `raw` and error, as predictions/*.jsonl writes them) and summarise the stage's scores."""
    scores, parse_errors, errors = [], 0, 0
    for jr in judge_rows:
        entry: dict[str, Any] = {"score": None, "reason": None, "raw": None, "error": None}
        if jr["prediction"] is not None:
            j = jr["score"]
            entry.update(score=j.score, reason=j.reason, raw=jr["prediction"], error=j.error)
            parse_errors += j.error is not None
            scores += [j.score] if j.score is not None else []
        elif jr["finished"]:
            entry["error"] = jr["error"]
            errors += 1
        judged.setdefault(jr["id"], {})[stage.name] = entry
    return {
        "judged": len(scores), "parse_errors": parse_errors, "errors": errors,
        "mean": fmean(scores) if scores else None, "min": min(scores, default=None),
        "max": max(scores, default=None), "std": pstdev(scores) if scores else None,
    }


def build_summary(store: Store, cfg: RunConfig, predictions: Path | None = None) -> dict[str, Any]:
    """Score every finished sample and summarise per dataset and overall. `predictions`: a folder to write each
    dataset's predictions (`<dataset>.jsonl`) into as its rows stream by from the store; `_rows` then holds only what
    the summaries read of each row (`SUMMARISED`: a million rows' texts are never held at once). Else it holds the
    rows as the store gives them, for the views that list samples (CSV, parquet, HTML, compare)."""
    stages = cfg.pipeline()
    generate, judges = stages[0], stages[1:]
    stale = {s.name: store.get_meta(f"scoring:{s.name}") != scoring_key(s, cfg) for s in stages}
    datasets: dict[str, Any] = {}
    rows_by_ds: dict[str, list[dict[str, Any]]] = {}
    alone: dict[str, dict[str, Any]] = {}  # each dataset's summary
    judged: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # {dataset: {sample id: {judge stage: verdict}}}
    metrics = cfg.metrics if generate.kind == "generate" else []  # edited images have no text metrics
    for ds in store.datasets():
        name = ds["name"]
        if ds["status"] == "failed":
            datasets[name] = {"status": "failed", "error": ds["error"]}
            continue
        verdicts = {}  # the judges' first: a streamed row is written with them
        for judge in judges:
            with bulk_objects():
                rows = list(_scored(store, judge, cfg, name, store.rows(judge.name, name), stale[judge.name]))
            verdicts[judge.name] = _judge(rows, judge, judged.setdefault(name, {}))
        rows = _scored(store, generate, cfg, name, store.rows(generate.name, name), stale[generate.name])
        if predictions is not None:
            rows = _written(predictions / f"{name}.jsonl", rows, judged.get(name, {}))
        with bulk_objects():  # a million rows' dicts, not walked by the collector as they are built
            rows_by_ds[name] = rows = list(rows)
        alone[name] = summarize(rows, metrics)
        datasets[name] = {"status": ds["status"], **alone[name]}
        if cfg.group_by:
            datasets[name]["groups"] = summarize_groups(rows, metrics, cfg.group_by)
        datasets[name].update(verdicts)
    for s in (s for s in stages if stale[s.name]):  # stored scores follow these settings now
        try:
            store.set_meta(f"scoring:{s.name}", scoring_key(s, cfg))
        except sqlite3.Error:
            pass
    all_rows = [r for rows in rows_by_ds.values() for r in rows]
    return {
        "run": store.get_meta("name"),
        "metrics": metrics,
        "judges": [j.name for j in judges],
        "datasets": datasets,
        "overall": next(iter(alone.values())) if len(alone) == 1 else summarize(all_rows, metrics),
        "performance": (perf := {s.name: store.get_meta(f"performance:{s.name}") for s in stages}),
        "startup": store.get_meta("startup"),
        "wall_s": (store.get_meta("state") or {}).get("wall_s"),
        "gpu_hours": round(sum((p or {}).get("gpu_hours", 0.0) for p in perf.values()), 4),
        "errors": stage_errors([s.name for s in stages], rows_by_ds, judged),
        "provenance": summary_provenance(store, cfg),
        "_rows": rows_by_ds,
        "_judged": judged,
    }


FORMATS = ("json", "md", "csv", "parquet", "html")


def write_report(run_dir: Path, store: Store, cfg: RunConfig, console: Console | None = None,
                 formats: tuple[str, ...] = ("json", "md")) -> dict[str, Any]:
    """Write the report in `formats` (json: summary.json + predictions/<dataset>.jsonl; md: summary.md; csv:
    predictions/<dataset>.csv; parquet: predictions.parquet; html: report.html); print the tables. A file that
    cannot be written (a read-only folder, a full disk) is a RunError of one line, raised after the tables."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    listed = bool({"csv", "parquet", "html"} & set(formats))  # views that list every sample: the rows are kept
    stream = "json" in formats and not listed
    unwritten: OSError | None = None
    try:
        if stream:
            (run_dir / "predictions").mkdir(exist_ok=True)
        summary = build_summary(store, cfg, predictions=run_dir / "predictions" if stream else None)
    except OSError as err:  # a folder turned read-only, a full disk: the results are in the store all the same
        unwritten, stream = err, False
        summary = build_summary(store, cfg)
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    try:
        if unwritten is None:
            _write_files(run_dir, summary, public, store, cfg, formats, predictions_written=stream)
    except OSError as err:
        unwritten = err
    if console is not None:
        console.print(console_table(public))
        console.print(performance_table(public))
        if rows := startup_rows(public):
            console.print(startup_table(rows))
        for line in error_lines(public["errors"]):
            console.print(line, markup=False, highlight=False)
        if truncated := public["overall"].get("truncated"):
            console.print(f"{truncated} answer(s) ended inside their thinking (<think> not closed): counted as "
                          "truncated, not scored; raise max_new_tokens to let them finish", markup=False,
                          highlight=False)
    if unwritten is not None:
        raise RunError(f"cannot write the report in {run_dir}: {unwritten.strerror or unwritten}"
                       + (f" ({unwritten.filename})" if unwritten.filename else "")
                       + f"; every result is in its store: `evalfleet report {run_dir}` writes it once the folder "
                       "is writable")
    return public


def _write_files(run_dir: Path, summary: dict[str, Any], public: dict[str, Any], store: Store, cfg: RunConfig,
                 formats: tuple[str, ...], predictions_written: bool = False) -> None:
    """The report's files in `formats` (see `write_report`); `public`: the summary without its rows.
    `predictions_written`: the JSONL predictions were written as the rows streamed by (`build_summary`)."""
    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    if "json" in formats:
        (run_dir / "summary.json").write_text(json.dumps(public, indent=2) + "\n")
    if "json" in formats and not predictions_written:
        for name, rows in summary["_rows"].items():
            judged = summary["_judged"].get(name, {})
            with (pred_dir / f"{name}.jsonl").open("w") as f:
                f.writelines(json.dumps(prediction_record(r, judged.get(r["id"]))) + "\n" for r in rows)
    if "md" in formats:
        perf = markdown_rows(PERFORMANCE_HEAD, performance_rows(public))
        startup = markdown_rows(STARTUP_HEAD, rows) if (rows := startup_rows(public)) else ""
        (run_dir / "summary.md").write_text(f"# {summary['run']}\n\n" + markdown_table(public)
                                            + f"\n## Performance\n\nrun wall s: {public['wall_s']}; "
                                            f"GPU-hours: {public['gpu_hours']}\n\n" + perf
                                            + (f"\n### Start-up (seconds)\n\n{startup}" if startup else ""))
    records = sample_records(summary) if {"csv", "parquet", "html"} & set(formats) else []
    if "csv" in formats:
        for name in summary["_rows"]:
            mine = [r for r in records if r["dataset"] == name]
            with (pred_dir / f"{name}.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(mine[0]) if mine else ["id"])
                writer.writeheader()
                writer.writerows(mine)
    if "parquet" in formats:
        import pyarrow as pa  # here: with numpy it costs every command ~0.3 s of start-up
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), run_dir / "predictions.parquet")
    if "html" in formats:
        from evalfleet.reporting.html import write_html

        write_html(run_dir / "report.html", summary, records, store, cfg)
