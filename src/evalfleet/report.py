"""Reports from the store alone: summary.json, summary.md, per-sample predictions (JSONL, CSV, parquet), the
HTML report (`htmlreport`), console tables of results and performance."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from evalfleet.config import RunConfig, StageConfig
from evalfleet.errors import UserError
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
        steps = next((d.extract for d in cfg.datasets if d.name == ds["name"]), None)
        score_rows(rows, metrics, steps)
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
        "performance": (perf := {s.name: store.get_meta(f"performance:{s.name}") for s in stages}),
        "wall_s": (store.get_meta("state") or {}).get("wall_s"),
        "gpu_hours": round(sum((p or {}).get("gpu_hours", 0.0) for p in perf.values()), 4),
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


def performance_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Per stage: wall, load and unload wall seconds, samples/s and tokens/s once loaded, GPU-hours, and each
    worker's busy fraction (time in its batches over time since it loaded)."""
    out = []
    for stage, p in summary["performance"].items():
        if not p:
            continue
        busy = ", ".join(f"{w.split('.')[0]} {u['busy_fraction']:.0%}" for w, u in p.get("workers", {}).items()
                         if u.get("busy_fraction") is not None)
        out.append([stage] + [str(p.get(k, "-")) for k in ("wall_s", "load_wall_s", "unload_wall_s", "samples_per_s",
                                                           "generated_tokens_per_s", "gpu_hours")] + [busy or "-"])
    return out


PERFORMANCE_HEAD = ["stage", "wall s", "load s", "unload s", "samples/s", "tokens/s", "GPU-hours", "busy"]


def performance_table(summary: dict[str, Any]) -> Table:
    wall = f"{summary['wall_s']:.1f} s" if summary.get("wall_s") else "-"
    table = Table(title=f"performance: run wall {wall}, {summary['gpu_hours']:.3f} GPU-hours", title_justify="left")
    for col in PERFORMANCE_HEAD:
        table.add_column(col, justify="left" if col in ("stage", "busy") else "right")
    for row in performance_rows(summary):
        table.add_row(*row)
    return table


def sample_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per sample of every dataset: answers, scores, each judge's score/reason/error."""
    out = []
    for name, rows in summary["_rows"].items():
        for r in rows:
            rec: dict[str, Any] = {"dataset": name, "id": r["id"], "question": r["question"],
                                   "answer": " / ".join(r["answers"]), "prediction": r["prediction"],
                                   "extracted": r["extracted"], "extraction": r["extraction"], "error": r["error"],
                                   "seconds": r["seconds"], "worker": r["worker"]}
            rec.update({m: (r["scores"] or {}).get(m) for m in summary["metrics"]})
            for judge, j in r.get("judge", {}).items():
                rec.update({f"{judge}_score": j["score"], f"{judge}_reason": j["reason"], f"{judge}_error": j["error"],
                            f"{judge}_raw": j["raw"]})
            out.append(rec)
    return out


FORMATS = ("json", "md", "csv", "parquet", "html")


def write_report(run_dir: Path, store: Store, cfg: RunConfig, console: Console | None = None,
                 formats: tuple[str, ...] = ("json", "md")) -> dict[str, Any]:
    """Write the report in `formats` (json: summary.json + predictions/<dataset>.jsonl; md: summary.md; csv:
    predictions/<dataset>.csv; parquet: predictions.parquet; html: report.html); print the tables."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    summary = build_summary(store, cfg)
    public = {k: v for k, v in summary.items() if k != "_rows"}
    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    if "json" in formats:
        (run_dir / "summary.json").write_text(json.dumps(public, indent=2) + "\n")
        for name, rows in summary["_rows"].items():
            with (pred_dir / f"{name}.jsonl").open("w") as f:
                for r in rows:
                    answer = r["answers"][0] if len(r["answers"]) == 1 else r["answers"]
                    record = {"id": r["id"], "question": r["question"], "prediction": r["prediction"],
                              "extracted": r["extracted"], "extraction": r["extraction"], "answer": answer,
                              "score": r["scores"], "error": r["error"], "prompt": r["rendered_prompt"]}
                    if "judge" in r:
                        record["judge"] = r["judge"]
                    f.write(json.dumps(record) + "\n")
    if "md" in formats:
        perf = "| " + " | ".join(PERFORMANCE_HEAD) + " |\n|" + "---|" * len(PERFORMANCE_HEAD) + "\n"
        perf += "".join("| " + " | ".join(row) + " |\n" for row in performance_rows(public))
        (run_dir / "summary.md").write_text(f"# {summary['run']}\n\n" + markdown_table(public)
                                            + f"\n## Performance\n\nrun wall s: {public['wall_s']}; "
                                            f"GPU-hours: {public['gpu_hours']}\n\n" + perf)
    records = sample_records(summary) if {"csv", "parquet", "html"} & set(formats) else []
    if "csv" in formats:
        for name in summary["_rows"]:
            mine = [r for r in records if r["dataset"] == name]
            with (pred_dir / f"{name}.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(mine[0]) if mine else ["id"])
                writer.writeheader()
                writer.writerows(mine)
    if "parquet" in formats:
        pq.write_table(pa.Table.from_pylist(records), run_dir / "predictions.parquet")
    if "html" in formats:
        from evalfleet.htmlreport import write_html

        write_html(run_dir / "report.html", summary, records, store, cfg)
    if console is not None:
        console.print(console_table(public))
        console.print(performance_table(public))
    return public
