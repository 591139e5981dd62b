"""Reports from the store alone: summary.json, summary.md, per-sample predictions (JSONL, CSV, parquet), the
HTML report (`reporting.html`); the tables are `reporting.tables`.

`build_summary` keeps, for the views that list samples, each dataset's rows as the store gives them (`_rows`,
with their stored scores) and each judge's verdict on each sample (`_judged`) beside them."""

from __future__ import annotations

import csv
import json
import sqlite3
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


def _stored_scores(store: Store, stage: StageConfig, cfg: RunConfig, dataset: str, rows: list[dict[str, Any]],
                   stale: bool) -> None:
    """The rows' scores as stored; those missing (results stored before scores were, judge cache hits) or `stale`
    (the scoring settings changed) are computed now, by the same function, and stored."""
    if stage.kind == "edit":
        return
    score = stage_scorer(stage, cfg)
    redo = {}
    for row in rows:
        if row["finished"] and row["error"] is None and row["prediction"] is not None and (
                stale or row["score"] is None):
            row["score"] = redo[row["id"]] = score(dataset, row["prediction"], row["answers"], row["metadata"])
    if redo:
        try:
            store.set_scores(stage.name, dataset, redo)
        except sqlite3.Error:  # a store that cannot be written (read-only): the report uses them all the same
            pass


def _judge(rows: list[dict[str, Any]], judge_rows: list[dict[str, Any]], stage: StageConfig,
           judged: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Put each sample's verdict of one judge stage in `judged` ({sample id: {stage: verdict}}: its score,
    reason, reply `raw` and error, as predictions/*.jsonl writes them) and summarise the stage's scores."""
    by_id = {r["id"]: r for r in judge_rows}
    scores, parse_errors, errors = [], 0, 0
    for row in rows:
        jr = by_id.get(row["id"])
        entry: dict[str, Any] = {"score": None, "reason": None, "raw": None, "error": None}
        if jr is not None and jr["prediction"] is not None:
            j = jr["score"]
            entry.update(score=j.score, reason=j.reason, raw=jr["prediction"], error=j.error)
            parse_errors += j.error is not None
            scores += [j.score] if j.score is not None else []
        elif jr is not None and jr["finished"]:
            entry["error"] = jr["error"]
            errors += 1
        judged.setdefault(row["id"], {})[stage.name] = entry
    return {
        "judged": len(scores), "parse_errors": parse_errors, "errors": errors,
        "mean": fmean(scores) if scores else None, "min": min(scores, default=None),
        "max": max(scores, default=None), "std": pstdev(scores) if scores else None,
    }


def build_summary(store: Store, cfg: RunConfig) -> dict[str, Any]:
    """Score every finished sample and summarise per dataset and overall; writes nothing."""
    stages = cfg.pipeline()
    generate, judges = stages[0], stages[1:]
    stale = {s.name: store.get_meta(f"scoring:{s.name}") != scoring_key(s, cfg) for s in stages}
    datasets: dict[str, Any] = {}
    rows_by_ds: dict[str, list[dict[str, Any]]] = {}
    alone: dict[str, dict[str, Any]] = {}  # each dataset's summary
    judged: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # {dataset: {sample id: {judge stage: verdict}}}
    for ds in store.datasets():
        if ds["status"] == "failed":
            datasets[ds["name"]] = {"status": "failed", "error": ds["error"]}
            continue
        with bulk_objects():  # a million rows' dicts, not walked by the collector as they are built
            rows = list(store.rows(generate.name, ds["name"]))
        metrics = cfg.metrics if generate.kind == "generate" else []  # edited images have no text metrics
        _stored_scores(store, generate, cfg, ds["name"], rows, stale[generate.name])
        rows_by_ds[ds["name"]] = rows
        alone[ds["name"]] = summarize(rows, metrics)
        datasets[ds["name"]] = {"status": ds["status"], **alone[ds["name"]]}
        if cfg.group_by:
            datasets[ds["name"]]["groups"] = summarize_groups(rows, metrics, cfg.group_by)
        for judge in judges:
            with bulk_objects():
                verdicts = list(store.rows(judge.name, ds["name"]))
            _stored_scores(store, judge, cfg, ds["name"], verdicts, stale[judge.name])
            datasets[ds["name"]][judge.name] = _judge(rows, verdicts, judge, judged.setdefault(ds["name"], {}))
    for s in (s for s in stages if stale[s.name]):  # stored scores follow these settings now
        try:
            store.set_meta(f"scoring:{s.name}", scoring_key(s, cfg))
        except sqlite3.Error:
            pass
    all_rows = [r for rows in rows_by_ds.values() for r in rows]
    metrics = cfg.metrics if generate.kind == "generate" else []
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
    summary = build_summary(store, cfg)
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    try:
        _write_files(run_dir, summary, public, store, cfg, formats)
        unwritten = None
    except OSError as err:  # a folder turned read-only, a full disk: the results are in the store all the same
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
                 formats: tuple[str, ...]) -> None:
    """The report's files in `formats` (see `write_report`); `public`: the summary without its rows."""
    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    if "json" in formats:
        (run_dir / "summary.json").write_text(json.dumps(public, indent=2) + "\n")
        for name, rows in summary["_rows"].items():
            with (pred_dir / f"{name}.jsonl").open("w") as f:
                for r in rows:
                    answer = r["answers"][0] if len(r["answers"]) == 1 else r["answers"]
                    a = answer_score(r)
                    record = {"id": r["id"], "question": r["question"], "prediction": r["prediction"],
                              "extracted": a.extracted if a else None, "extraction": a.extraction if a else None,
                              "answer": answer, "score": a.metrics if a else None, "error": r["error"],
                              "prompt": r["rendered_prompt"],
                              **({"columns": c} if (c := (r.get("metadata") or {}).get("columns")) else {})}
                    if verdicts := summary["_judged"].get(name, {}).get(r["id"]):
                        record["judge"] = verdicts
                    f.write(json.dumps(record) + "\n")
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
