"""Reports from the store alone: summary.json, summary.md, per-dataset predictions JSONL, a console table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evalfleet.scoring import score_rows, summarize
from evalfleet.store import Store

STAGE = "generate"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def build_summary(store: Store, metrics: list[str]) -> dict[str, Any]:
    """Score every finished sample and summarise per dataset and overall; writes nothing."""
    datasets: dict[str, Any] = {}
    rows_by_ds: dict[str, list[dict[str, Any]]] = {}
    for ds in store.datasets():
        if ds["status"] == "failed":
            datasets[ds["name"]] = {"status": "failed", "error": ds["error"]}
            continue
        rows = list(store.rows(STAGE, ds["name"]))
        score_rows(rows, metrics)
        rows_by_ds[ds["name"]] = rows
        datasets[ds["name"]] = {"status": ds["status"], **summarize(rows, metrics)}
    all_rows = [r for rows in rows_by_ds.values() for r in rows]
    return {
        "run": store.get_meta("name"),
        "metrics": metrics,
        "datasets": datasets,
        "overall": summarize(all_rows, metrics),
        "performance": store.get_meta("performance"),
        "_rows": rows_by_ds,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    head = ["dataset", "samples", "finished", "errors"] + [f"{m} (%)" for m in metrics]
    head += [f"{m} closed / open (%)" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = list(summary["datasets"].items()) + [("**overall**", summary["overall"])]
    for name, s in entries:
        if s.get("status") == "failed":
            lines.append(f"| {name} | failed: {s['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [name, str(s["samples"]), str(s["finished"]), str(s["errors"])]
        cells += [_pct(s[m]["all"]) for m in metrics]
        cells += [f"{_pct(s[m]['closed'])} / {_pct(s[m]['open'])}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(summary: dict[str, Any]) -> Table:
    metrics = summary["metrics"]
    table = Table(title=f"evalfleet: {summary['run']}", caption="metrics in %: all (closed / open questions)")
    for col in ["dataset", "samples", "finished", "errors", *metrics]:
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, s in list(summary["datasets"].items()) + [("overall", summary["overall"])]:
        if s.get("status") == "failed":
            table.add_row(name, f"[red]failed[/red]: {s['error']}")
            continue
        table.add_row(
            name, str(s["samples"]), str(s["finished"]), str(s["errors"]),
            *[f"{_pct(s[m]['all'])} ({_pct(s[m]['closed'])} / {_pct(s[m]['open'])})" for m in metrics],
        )
    return table


def write_report(run_dir: Path, store: Store, metrics: list[str], console: Console | None = None) -> dict[str, Any]:
    """Write summary.json, summary.md and predictions/<dataset>.jsonl; print the table."""
    summary = build_summary(store, metrics)
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
                f.write(json.dumps(record) + "\n")
    if console is not None:
        console.print(console_table(summary))
    return summary
