"""`evalfleet compare`: two runs sample by sample, with a paired bootstrap CI and McNemar's exact test."""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from evalfleet.config import flat_settings, parse_config
from evalfleet.errors import UserError
from evalfleet.reporting.html import html_table
from evalfleet.reporting.report import build_summary
from evalfleet.scoring import metric_values, pass_mark
from evalfleet.scoring.summary import group_rows
from evalfleet.store import Store

BOOTSTRAP = 10_000
MAX_LISTED = 50
"""Changed samples listed per dataset in the Markdown output (the HTML lists all)."""


@dataclass
class Changed:
    """A sample whose outcome differs between the runs."""

    id: str
    score_a: float
    score_b: float
    prediction_a: str | None
    prediction_b: str | None


@dataclass
class DatasetComparison:
    dataset: str
    paired: int
    """Samples scored in both runs; the statistics are over these."""
    mean_a: float | None
    mean_b: float | None
    ci: tuple[float, float] | None
    """95% paired-bootstrap interval of mean(B) - mean(A)."""
    a_only: int
    """A right, B wrong."""
    b_only: int
    both: int
    neither: int
    p_value: float | None
    """McNemar's exact test (two-sided binomial on the discordant pairs)."""
    only_in_a: list[str]
    only_in_b: list[str]
    unscored: int
    """Samples in both runs but without a score in one of them (error, parse error)."""
    changed: list[Changed] = field(default_factory=list)
    group: str | None = None
    """`answer_type=closed` for a row of a `group_by` value (its samples are in the dataset's row too)."""

    @property
    def diff(self) -> float | None:
        return None if self.mean_a is None or self.mean_b is None else self.mean_b - self.mean_a


@dataclass
class Comparison:
    run_a: str
    run_b: str
    metric: str
    threshold: float
    """A score at or above this counts as right (for the paired outcomes and McNemar's test)."""
    datasets: list[DatasetComparison]
    only_datasets: list[str]
    config_diff: list[str] = field(default_factory=list)
    """`key: A -> B` for each setting the runs' configs differ in."""

    @property
    def shared_samples(self) -> int:
        """Samples of the same dataset and id in both runs (scored or not)."""
        return sum(d.paired + d.unscored for d in self.datasets if d.group is None)


def _load(run_dir: Path) -> tuple[dict[str, Any], Any]:
    store = Store.open_existing(run_dir)
    try:
        cfg = parse_config(store.get_meta("config"), source=str(run_dir))
        return build_summary(store, cfg), cfg
    finally:
        store.close()


def _scores(summary: dict[str, Any], metric: str) -> dict[str, dict[str, tuple[float | None, str | None]]]:
    """Per dataset: sample id -> (score or None, prediction)."""
    out: dict[str, dict[str, tuple[float | None, str | None]]] = {}
    for name, rows in summary["_rows"].items():
        if metric in summary["metrics"]:
            out[name] = {r["id"]: ((metric_values(r) or {}).get(metric), r["prediction"]) for r in rows}
        else:
            judged = summary["_judged"][name]
            out[name] = {r["id"]: (judged[r["id"]][metric]["score"], r["prediction"]) for r in rows}
    return out


def _dataset(name: str, a: dict[str, tuple[float | None, str | None]], b: dict[str, tuple[float | None, str | None]],
             threshold: float, seed: int) -> DatasetComparison:
    """The comparison of one dataset (or one group of it): samples by id -> (score or None, prediction)."""
    ids = [i for i in a if i in b]
    pairs = [(i, a[i], b[i]) for i in ids if a[i][0] is not None and b[i][0] is not None]
    xa = np.array([p[1][0] for p in pairs], dtype=float)
    xb = np.array([p[2][0] for p in pairs], dtype=float)
    right_a, right_b = xa >= threshold, xb >= threshold
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    return DatasetComparison(
        dataset=name, paired=len(pairs),
        mean_a=float(xa.mean()) if pairs else None, mean_b=float(xb.mean()) if pairs else None,
        ci=paired_bootstrap(xa, xb, seed) if pairs else None,
        a_only=a_only, b_only=b_only, both=int((right_a & right_b).sum()), neither=int((~right_a & ~right_b).sum()),
        p_value=mcnemar_p(a_only, b_only) if pairs else None,
        only_in_a=[i for i in a if i not in b], only_in_b=[i for i in b if i not in a],
        unscored=len(ids) - len(pairs),
        changed=[Changed(i, pa[0], pb[0], pa[1], pb[1]) for i, pa, pb in pairs
                 if (pa[0] >= threshold) != (pb[0] >= threshold)],
    )


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int, n: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of mean(b - a) over `n` resamples of the pairs."""
    d = b - a
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), (min(500, n - i), len(d)))].mean(axis=1)
                            for i in range(0, n, 500)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact McNemar: two-sided binomial test of the discordant pairs at 1/2."""
    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def compare_runs(run_a: Path, run_b: Path, *, metric: str | None = None, seed: int = 0) -> Comparison:
    """Match the runs' samples by dataset and id and compare their scores on `metric` (a metric or judge stage;
    default: the first both runs have)."""
    return compare_all(run_a, run_b, metrics=[metric] if metric else None, seed=seed)[0]


def compare_all(run_a: Path, run_b: Path, *, metrics: list[str] | None = None, seed: int = 0) -> list[Comparison]:
    """One comparison per metric and judge stage both runs have (or per one of `metrics`), with the settings the
    runs' configs differ in."""
    (sa, cfg_a), (sb, cfg_b) = _load(run_a), _load(run_b)
    common = [m for m in sa["metrics"] if m in sb["metrics"]] + [j for j in sa["judges"] if j in sb["judges"]]
    if not common:
        raise UserError(f"{run_a} and {run_b} share no metric or judge stage to compare")
    for m in metrics or []:
        if m not in common:
            raise UserError(f"--metric {m}: not in both runs (shared: {', '.join(common)})")
    a_flat, b_flat = (flat_settings(c.model_dump(mode="json", exclude={"name"})) for c in (cfg_a, cfg_b))
    diff = [f"{k}: {a_flat.get(k)!r} -> {b_flat.get(k)!r}" for k in sorted(a_flat.keys() | b_flat.keys())
            if a_flat.get(k) != b_flat.get(k)]
    groups = {name: _groups(rows, getattr(cfg_a, "group_by", [])) for name, rows in sa["_rows"].items()}
    return [_compare(sa, sb, cfg_a, m, seed, diff, groups) for m in metrics or common]


def _groups(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[str, set[str]]]:
    """("answer_type=closed", its sample ids), ... for each `group_by` column's values, in order."""
    return [(f"{column}={value}", {r["id"] for r in group}) for column in columns
            for value, group in group_rows(rows, column).items()]


def _compare(sa: dict[str, Any], sb: dict[str, Any], cfg_a: Any, metric: str, seed: int, diff: list[str],
             groups: dict[str, list[tuple[str, set[str]]]]) -> Comparison:
    parse = next((s.parse for s in cfg_a.pipeline() if s.name == metric), None) if metric in sa["judges"] else None
    threshold = pass_mark(parse)
    a, b = _scores(sa, metric), _scores(sb, metric)
    out = []
    for name in [n for n in a if n in b]:
        out.append(_dataset(name, a[name], b[name], threshold, seed))
        for group, ids in groups.get(name, []):  # a row per value, e.g. answer_type=closed
            out.append(replace(_dataset(f"{name} {group}", {i: v for i, v in a[name].items() if i in ids},
                                        {i: v for i, v in b[name].items() if i in ids}, threshold, seed), group=group))
    only = sorted(set(a) ^ set(b))
    return Comparison(str(sa["run"]), str(sb["run"]), metric, threshold, out, only, diff)


HEAD = ["dataset", "paired", "A", "B", "B - A", "95% CI (bootstrap)", "A right, B wrong", "A wrong, B right",
        "both right", "both wrong", "McNemar p", "only in A", "only in B", "unscored"]


def _row(d: DatasetComparison) -> list[str]:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    ci = "-" if d.ci is None else f"[{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]"
    p = "-" if d.p_value is None else f"{d.p_value:.4g}"
    return [d.dataset, str(d.paired), f(d.mean_a), f(d.mean_b), "-" if d.diff is None else f"{d.diff:+.4f}", ci,
            str(d.a_only), str(d.b_only), str(d.both), str(d.neither), p, str(len(d.only_in_a)), str(len(d.only_in_b)),
            str(d.unscored)]


def _title(c: Comparison) -> str:
    return (f"A = {c.run_a}, B = {c.run_b}; {c.metric} (right: score >= {c.threshold:g}); samples matched by "
            f"dataset and id")


def settings_markdown(c: Comparison) -> str:
    """The settings the two runs' configs differ in, as a Markdown list."""
    return "## settings that differ (A -> B)\n\n" + ("".join(f"- {d}\n" for d in c.config_diff) or "none\n")


def to_markdown(c: Comparison) -> str:
    lines = [f"# compare: {_title(c)}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_row(d)) + " |" for d in c.datasets]
    if c.only_datasets:
        lines += ["", f"datasets in only one run: {', '.join(c.only_datasets)}"]
    for d in c.datasets:
        if d.changed:
            lines += ["", f"## {d.dataset}: {len(d.changed)} sample(s) with another outcome",
                      "", "| id | A score | B score | A prediction | B prediction |", "|---|---|---|---|---|"]
            lines += [f"| {x.id} | {x.score_a:g} | {x.score_b:g} | {_cell(x.prediction_a)} | {_cell(x.prediction_b)} |"
                      for x in d.changed[:MAX_LISTED]]
            if len(d.changed) > MAX_LISTED:
                lines.append(f"\n... {len(d.changed) - MAX_LISTED} more (all in the HTML output)")
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return "" if text is None else text.replace("\n", " ").replace("|", "\\|")[:120]


def to_html(comparisons: Comparison | list[Comparison]) -> str:
    """One page: each comparison's table and changed samples, then the settings that differ."""
    e = html.escape
    cs = comparisons if isinstance(comparisons, list) else [comparisons]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>evalfleet compare</title><style>"
             "body{font-family:system-ui,sans-serif;margin:1.5em} table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"]
    for c in cs:
        parts += [f"<h1>compare: {e(c.metric)}</h1><p>{e(_title(c))}</p>",
                  html_table(HEAD, [_row(d) for d in c.datasets])]
        if c.only_datasets:
            parts.append(f"<p>datasets in only one run: {e(', '.join(c.only_datasets))}</p>")
        for d in c.datasets:
            if d.changed:
                parts.append(f"<h2>{e(d.dataset)}: {len(d.changed)} sample(s) with another outcome</h2>" + html_table(
                    ["id", "A score", "B score", "A prediction", "B prediction"],
                    [[x.id, f"{x.score_a:g}", f"{x.score_b:g}", x.prediction_a or "", x.prediction_b or ""]
                     for x in d.changed]))
    parts.append("<h2>Settings that differ (A -> B)</h2><ul>" + ("".join(f"<li>{e(d)}</li>" for d in cs[0].config_diff)
                                                                 or "<li>none</li>") + "</ul>")
    return "".join(parts) + "</body></html>"
