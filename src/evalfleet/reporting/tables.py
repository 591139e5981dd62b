"""A run's summary as tables: markdown, rich console tables of results and performance, flat per-sample
records (for CSV, parquet and the HTML report)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from evalfleet.observe.performance import reuse_line
from evalfleet.observe.startup import RUN_PHASES, STAGE_PHASES, critical_replica
from evalfleet.scoring import answer_score, metric_values


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _judge_cell(s: dict[str, Any], judge: str) -> str:
    j = s.get(judge)
    if not j or j["mean"] is None:
        return "-" if not j else f"- ({j['parse_errors']} unparsed)"
    return (f"{j['mean']:.2f} (min {j['min']:g}, max {j['max']:g}, std {j['std']:.2f}; "
            f"n={j['judged']}, {j['parse_errors']} unparsed)")


def with_groups(entries: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each dataset's row followed by a row per `group_by` value (`  answer_type=closed`)."""
    out = []
    for name, s in entries:
        out.append((name, s))
        for column, values in (s.get("groups") or {}).items():
            out += [(f"  {column}={value}", g) for value, g in values.items()]
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    metrics, judges = summary["metrics"], summary["judges"]
    head = ["dataset", "samples", "finished", "errors"] + [f"{m} (%) [95 % interval]" for m in metrics]
    head += [f"{m} closed / open / multiple choice (%)" for m in metrics] + [f"{j} mean score" for j in judges]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = with_groups(list(summary["datasets"].items())) + [("**overall**", summary["overall"])]
    for name, s in entries:
        if s.get("status") == "failed":
            lines.append(f"| {name} | failed: {s['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [name, str(s["samples"]), str(s["finished"]), str(s["errors"])]
        cells += [_pct(s[m]["all"]) + (" [{} – {}]".format(*map(_pct, ci)) if (ci := s[m].get("ci95")) else "")
                  for m in metrics]
        cells += [f"{_pct(s[m]['closed'])} / {_pct(s[m]['open'])} / {_pct(s[m].get('mcq'))}" for m in metrics]
        cells += [_judge_cell(s, j) for j in judges]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(summary: dict[str, Any]) -> Table:
    metrics, judges = summary["metrics"], summary["judges"]
    table = Table(title=f"evalfleet: {summary['run']}", caption="metrics in %: all (closed / open questions / multiple choice where there is any)")
    for col in ["dataset", "samples", "finished", "errors", *metrics, *[f"{j} mean" for j in judges]]:
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, s in with_groups(list(summary["datasets"].items())) + [("overall", summary["overall"])]:
        if s.get("status") == "failed":
            table.add_row(name, f"[red]failed[/red]: {s['error']}")
            continue
        table.add_row(
            name, str(s["samples"]), str(s["finished"]), str(s["errors"]),
            *[f"{_pct(s[m]['all'])} ({_pct(s[m]['closed'])} / {_pct(s[m]['open'])}"
              + (f" / {_pct(s[m]['mcq'])}" if s[m].get("n_mcq") else "") + ")" for m in metrics],
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
                                                           "generated_tokens_per_s", "gpu_hours")]
                   + [busy or "-", tail_cell(p.get("tail")), reuse_line(p.get("prefill"))])
    return out


def tail_cell(tail: dict[str, Any] | None) -> str:
    """Seconds from the first worker's last answer to the run's last answer, and that as a share of the generation
    phase: how long some workers idled while others finished (issue 40)."""
    return f"{tail['idle_tail_s']:.1f} ({tail['of_generation']:.0%})" if tail else "-"


PERFORMANCE_HEAD = ["stage", "wall s", "load s", "unload s", "samples/s", "tokens/s", "GPU-hours", "busy",
                    "idle tail s", "shared prefixes"]


def startup_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per stage that started workers: the run's phases, then the stage's (seconds)."""
    run = summary.get("startup") or {}
    rows = []
    for stage, p in summary["performance"].items():
        s = (p or {}).get("startup")
        if not s:
            continue
        phases = {**{k: run.get(k) for k in RUN_PHASES}, "plan": s.get("plan"),
                  **critical_replica(s.get("workers", {})), "first result": s.get("first result")}
        rows.append([stage] + [f"{phases[k]:.2f}" if phases.get(k) is not None else "-"
                               for k in (*RUN_PHASES, *STAGE_PHASES)])
    return rows


STARTUP_HEAD = ["stage", *RUN_PHASES, *STAGE_PHASES]


def startup_table(rows: list[list[str]]) -> Table:
    table = Table(title="start-up, seconds (the replica ready last)", title_justify="left")
    for col in STARTUP_HEAD:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def performance_table(summary: dict[str, Any]) -> Table:
    wall = f"{summary['wall_s']:.1f} s" if summary.get("wall_s") else "-"
    table = Table(title=f"performance: run wall {wall}, {summary['gpu_hours']:.3f} GPU-hours", title_justify="left")
    for col in PERFORMANCE_HEAD:
        table.add_column(col, justify="left" if col in ("stage", "busy", "shared prefixes") else "right")
    for row in performance_rows(summary):
        table.add_row(*row)
    return table


def sample_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per sample of every dataset: answers, scores, each judge's score/reason/error."""
    out = []
    for name, rows in summary["_rows"].items():
        judged = summary["_judged"].get(name, {})
        for r in rows:
            a = answer_score(r)
            rec: dict[str, Any] = {"dataset": name, "id": r["id"], "question": r["question"],
                                   "answer": " / ".join(r["answers"]), "prediction": r["prediction"],
                                   "extracted": a.extracted if a else None,
                                   "extraction": a.extraction if a else None, "error": r["error"],
                                   "seconds": r["seconds"], "worker": r["worker"],
                                   "options": "\n".join(f"{k}. {v}" for k, v in
                                                        ((r.get("metadata") or {}).get("options") or {}).items()),
                                   "prompt": r.get("rendered_prompt")}
            rec.update({m: (metric_values(r) or {}).get(m) for m in summary["metrics"]})
            rec.update({f"column {k}": v for k, v in ((r.get("metadata") or {}).get("columns") or {}).items()})
            for judge, j in judged.get(r["id"], {}).items():
                rec.update({f"{judge}_score": j["score"], f"{judge}_reason": j["reason"], f"{judge}_error": j["error"],
                            f"{judge}_raw": j["raw"]})
            out.append(rec)
    keys = dict.fromkeys(k for rec in out for k in rec)  # every record the same fields (CSV, parquet)
    return [{k: rec.get(k) for k in keys} for rec in out]


def markdown_rows(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "".join(
        "| " + " | ".join(row) + " |\n" for row in rows)
