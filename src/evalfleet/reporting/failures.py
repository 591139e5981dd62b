"""How often each stage's samples ended in an error, with the first errors and their reasons: shown at the end
of a run, kept in summary.json, and what `max_error_rate` is checked against (a run that mostly failed must not
exit 0)."""

from __future__ import annotations

from typing import Any

FIRST = 5
"""Errors named per stage."""


def stage_errors(stages: list[str], rows_by_ds: dict[str, list[dict[str, Any]]],
                 judged: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per stage: samples, errors, their rate and the first errors. The first stage's error is its row's; a
    judge's is a request that failed (no answer to judge, a batch that failed); a reply without a score is not.
    `judged`: each judge's verdicts, {dataset: {sample id: {stage: verdict}}} (`report.build_summary`)."""
    out = {}
    for i, stage in enumerate(stages):
        samples, first, errors = 0, [], 0
        for dataset, rows in rows_by_ds.items():
            for row in rows:
                entry = judged.get(dataset, {}).get(row["id"], {}).get(stage, {})
                # a judge's reply that holds no score is counted apart ("unparsed"), not as an error of the run
                error = row["error"] if i == 0 else entry.get("error") if entry.get("raw") is None else None
                samples += 1
                if error:
                    errors += 1
                    if len(first) < FIRST:
                        first.append({"dataset": dataset, "id": row["id"], "error": error})
        out[stage] = {"samples": samples, "errors": errors, "rate": round(errors / samples, 4) if samples else 0.0,
                      "first": first}
    return out


def error_lines(errors: dict[str, dict[str, Any]]) -> list[str]:
    """`generate: 3 of 20 samples (15.0 %) ended in an error; first: ds/id: reason` lines, for stages with errors."""
    lines = []
    for stage, e in errors.items():
        if e["errors"]:
            lines.append(f"{stage}: {e['errors']} of {e['samples']} samples ({100 * e['rate']:.1f} %) ended in an "
                         "error; the first:")
            lines += [f"  {f['dataset']}/{f['id']}: {f['error']}" for f in e["first"]]
    return lines


def too_many_errors(errors: dict[str, dict[str, Any]], max_rate: float) -> list[str]:
    """The stages whose error rate passes `max_rate`, as lines naming their rate."""
    return [f"{stage}: {100 * e['rate']:.1f} % of its {e['samples']} samples ended in an error "
            f"(max_error_rate {100 * max_rate:g} %)" for stage, e in errors.items() if e["rate"] > max_rate]
