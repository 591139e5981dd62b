"""The HTML report's plots (matplotlib, embedded as PNG): each metric per dataset with its 95 % interval, each
judge's scores over the judge's own range, throughput over time (runs long enough to have one) and each worker's
busy time. Drawn at a size whose labels read as body text when two plots share a 1400 px wide page."""

from __future__ import annotations

import base64
import io
from typing import Any

from evalfleet.config import JudgeParse
from evalfleet.store import Store

FIGSIZE = (7.5, 3.8)
DPI = 110
MIN_THROUGHPUT_SPAN_S = 30.0
"""A run shorter than this gets no throughput plot: a few points say nothing."""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(summary: dict[str, Any], records: list[dict[str, Any]], store: Store,
          parses: dict[str, JudgeParse]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each plot the run has data for; `parses`: each judge's score parsing (its range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12})
    out = []
    names = [n for n, d in summary["datasets"].items() if d.get("status") != "failed"]
    if summary["metrics"] and names:
        fig, ax = plt.subplots(figsize=FIGSIZE)
        width = 0.8 / len(summary["metrics"])
        for k, m in enumerate(summary["metrics"]):
            stats = [summary["datasets"][n][m] for n in names]
            values = [100 * (s["all"] or 0) for s in stats]
            errors = [[100 * max(0.0, (s["all"] or 0) - s["ci95"][0]) if s.get("ci95") else 0 for s in stats],
                      [100 * max(0.0, s["ci95"][1] - (s["all"] or 0)) if s.get("ci95") else 0 for s in stats]]
            ax.bar([i + k * width for i in range(len(names))], values, width, yerr=errors, capsize=3, label=m)
        ax.set_xticks([i + width * (len(summary["metrics"]) - 1) / 2 for i in range(len(names))], names,
                      rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
        ax.set_ylabel("% (bars: 95 % interval)")
        ax.set_ylim(0, 100)
        ax.legend()
        out.append(("metric per dataset", _png(fig)))
        plt.close(fig)
    for judge in summary["judges"]:
        scores = [r[f"{judge}_score"] for r in records if r.get(f"{judge}_score") is not None]
        if scores:
            parse = parses.get(judge) or JudgeParse()
            lo, hi = (min(parse.labels.values()), max(parse.labels.values())) if parse.labels else (parse.min, parse.max)
            fig, ax = plt.subplots(figsize=FIGSIZE)
            whole = all(float(s).is_integer() for s in scores) and float(lo).is_integer() and hi - lo <= 20
            bins = [lo - 0.5 + i for i in range(int(hi - lo) + 2)] if whole else 20
            ax.hist(scores, bins=bins, range=None if whole else (lo, hi), rwidth=0.9)
            ax.set_xlim(lo - 0.5 if whole else lo, hi + 0.5 if whole else hi)
            ax.set_xlabel(f"{judge} score")
            ax.set_ylabel("samples")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            out.append((f"{judge}: score histogram over its range {lo:g} to {hi:g} ({len(scores)} parsed)", _png(fig)))
            plt.close(fig)
    times = {stage: store.finish_times(stage) for stage in summary["performance"]}
    starts = [t[0] for t in times.values() if t]
    span = max(t[-1] for t in times.values() if t) - min(starts) if starts else 0.0
    if span >= MIN_THROUGHPUT_SPAN_S:
        t0 = min(starts)
        fig, ax = plt.subplots(figsize=FIGSIZE)
        step = max(1.0, span / 60)
        for stage, t in times.items():
            if t:
                buckets = [0] * (int(span // step) + 1)
                for x in t:
                    buckets[int((x - t0) // step)] += 1
                ax.plot([i * step for i in range(len(buckets))], [b / step for b in buckets], marker=".", label=stage)
        ax.set_xlabel("seconds since the first result")
        ax.set_ylabel("samples/s")
        ax.legend()
        out.append(("throughput over time", _png(fig)))
        plt.close(fig)
    usage = [(f"{stage}/{w}", u) for stage, p in summary["performance"].items() if p
             for w, u in p.get("workers", {}).items()]
    if usage:
        fig, ax = plt.subplots(figsize=(FIGSIZE[0], 0.8 + 0.45 * len(usage)))
        labels = [name for name, _ in usage]
        ax.barh(labels, [u["held_s"] for _, u in usage], color="#ddd", label="held (load included)")
        ax.barh(labels, [u["busy_s"] for _, u in usage], color="#3a7", label="busy in batches")
        ax.set_xlabel("seconds")
        ax.legend()
        out.append(("busy time per worker (GPU or CPU replica)", _png(fig)))
        plt.close(fig)
    return out
