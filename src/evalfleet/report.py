"""Reports from the store alone: summary.json, summary.md, per-dataset predictions JSONL, a console table."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

from rich.console import Console
from rich.table import Table

from evalfleet.config import RunConfig, StageConfig
from evalfleet.scoring import score_rows, summarize
from evalfleet.scoring.judge import parse_judgement
from evalfleet.store import Store


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _judge(rows: list[dict[str, Any]], judge_rows: list[dict[str, Any]], stage: StageConfig) -> dict[str, Any]:
    """Attach each sample's judgement to its row and summarise the scores of one judge stage."""
    by_id = {r["id"]: r for r in judge_rows}
    scores, parse_errors, errors = [], 0, 0
    for row in rows:
        jr = by_id.get(row["id"])
        entry: dict[str, Any] = {"score": None, "reason": None, "raw": None, "error": None}
        if jr is not None and jr["prediction"] is not None:
            j = parse_judgement(jr["prediction"], stage.parse)
            entry.update(score=j.score, reason=j.reason, raw=jr["prediction"], error=j.error)
            parse_errors += j.error is not None
            scores += [j.score] if j.score is not None else []
        elif jr is not None and jr["finished"]:
            entry["error"] = jr["error"]
            errors += 1
        row.setdefault("judge", {})[stage.name] = entry
    return {
        "judged": len(scores), "parse_errors": parse_errors, "errors": errors,
        "mean": fmean(scores) if scores else None, "min": min(scores, default=None),
        "max": max(scores, default=None), "std": pstdev(scores) if scores else None,
    }


def build_summary(store: Store, cfg: RunConfig) -> dict[str, Any]:
    """Score every finished sample and summarise per dataset and overall; writes nothing."""
    stages = cfg.pipeline()
    generate, judges = stages[0], stages[1:]
    datasets: dict[str, Any] = {}
    rows_by_ds: dict[str, list[dict[str, Any]]] = {}
    for ds in store.datasets():
        if ds["status"] == "failed":
            datasets[ds["name"]] = {"status": "failed", "error": ds["error"]}
            continue
        rows = list(store.rows(generate.name, ds["name"]))
        metrics = cfg.metrics if generate.kind == "generate" else []  # edited images have no text metrics
        score_rows(rows, metrics)
        rows_by_ds[ds["name"]] = rows
        datasets[ds["name"]] = {"status": ds["status"], **summarize(rows, metrics)}
        for judge in judges:
            datasets[ds["name"]][judge.name] = _judge(rows, list(store.rows(judge.name, ds["name"])), judge)
    all_rows = [r for rows in rows_by_ds.values() for r in rows]
    metrics = cfg.metrics if generate.kind == "generate" else []
    return {
        "run": store.get_meta("name"),
        "metrics": metrics,
        "judges": [j.name for j in judges],
        "datasets": datasets,
        "overall": summarize(all_rows, metrics),
        "performance": {s.name: store.get_meta(f"performance:{s.name}") for s in stages},
        "_rows": rows_by_ds,
    }


def _judge_cell(s: dict[str, Any], judge: str) -> str:
    j = s.get(judge)
    if not j or j["mean"] is None:
        return "-" if not j else f"- ({j['parse_errors']} unparsed)"
    return (f"{j['mean']:.2f} (min {j['min']:g}, max {j['max']:g}, std {j['std']:.2f}; "
            f"n={j['judged']}, {j['parse_errors']} unparsed)")


def markdown_table(summary: dict[str, Any]) -> str:
    metrics, judges = summary["metrics"], summary["judges"]
    head = ["dataset", "samples", "finished", "errors"] + [f"{m} (%)" for m in metrics]
    head += [f"{m} closed / open (%)" for m in metrics] + [f"{j} mean score" for j in judges]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = list(summary["datasets"].items()) + [("**overall**", summary["overall"])]
    for name, s in entries:
        if s.get("status") == "failed":
            lines.append(f"| {name} | failed: {s['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [name, str(s["samples"]), str(s["finished"]), str(s["errors"])]
        cells += [_pct(s[m]["all"]) for m in metrics]
        cells += [f"{_pct(s[m]['closed'])} / {_pct(s[m]['open'])}" for m in metrics]
        cells += [_judge_cell(s, j) for j in judges]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(summary: dict[str, Any]) -> Table:
    metrics, judges = summary["metrics"], summary["judges"]
    table = Table(title=f"evalfleet: {summary['run']}", caption="metrics in %: all (closed / open questions)")
    for col in ["dataset", "samples", "finished", "errors", *metrics, *[f"{j} mean" for j in judges]]:
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, s in list(summary["datasets"].items()) + [("overall", summary["overall"])]:
        if s.get("status") == "failed":
            table.add_row(name, f"[red]failed[/red]: {s['error']}")
            continue
        table.add_row(
            name, str(s["samples"]), str(s["finished"]), str(s["errors"]),
            *[f"{_pct(s[m]['all'])} ({_pct(s[m]['closed'])} / {_pct(s[m]['open'])})" for m in metrics],
            *[_judge_cell(s, j) for j in judges],
        )
    return table


def write_report(run_dir: Path, store: Store, cfg: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """Write summary.json, summary.md and predictions/<dataset>.jsonl; print the table."""
    summary = build_summary(store, cfg)
    rows_by_ds = summary.pop("_rows")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.md").write_text(f"# {summary['run']}\n\n" + markdown_table(summary))
    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for name, rows in rows_by_ds.items():
        with (pred_dir / f"{name}.jsonl").open("w") as f:
            for r in rows:
                answer = r["answers"][0] if len(r["answers"]) == 1 else r["answers"]
                record = {"id": r["id"], "question": r["question"], "prediction": r["prediction"],
                          "answer": answer, "score": r["scores"], "error": r["error"]}
                if "judge" in r:
                    record["judge"] = r["judge"]
                f.write(json.dumps(record) + "\n")
    if console is not None:
        console.print(console_table(summary))
    return summary
