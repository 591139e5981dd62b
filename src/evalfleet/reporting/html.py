"""The HTML report: one self-contained file with metrics, plots (matplotlib, embedded as PNG) and a filterable
per-sample table with image thumbnails (input and edited images)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from evalfleet.config import RunConfig
from evalfleet.data.datasets import DatasetError, load_samples
from evalfleet.data.images import open_image
from evalfleet.records import ImageRef
from evalfleet.reporting.provenance import provenance_rows
from evalfleet.reporting.tables import PERFORMANCE_HEAD, STARTUP_HEAD, markdown_table, performance_rows, startup_rows
from evalfleet.scoring import pass_mark
from evalfleet.store import Store

THUMB_PX = 96
MAX_THUMB_ROWS = 5000
"""Samples beyond this many get no thumbnails, which keeps the file a few tens of MB at most."""

SCRIPT = """
function applyFilters() {
  const ds = document.getElementById('f-dataset').value;
  const wrong = document.getElementById('f-wrong').checked;
  const errors = document.getElementById('f-errors').checked;
  let shown = 0;
  for (const row of document.querySelectorAll('#samples tbody tr')) {
    const ok = (ds === '' || row.dataset.ds === ds) && (!wrong || row.dataset.wrong === '1')
      && (!errors || row.dataset.error === '1');
    row.style.display = ok ? '' : 'none';
    shown += ok ? 1 : 0;
  }
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  for (const id of ['f-dataset', 'f-wrong', 'f-errors']) {
    document.getElementById(id).addEventListener('change', applyFilters);
  }
  applyFilters();
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.text { max-width: 32em; white-space: pre-wrap; word-break: break-word; }
tr[data-error="1"] td { background: #fff0f0; }
img.thumb { max-width: 96px; max-height: 96px; margin-right: 4px; }
.plots img { max-width: 46%; margin: 0 1% 1em 0; border: 1px solid #eee; }
.filters { position: sticky; top: 0; background: white; padding: 0.5em 0; }
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(summary: dict[str, Any], records: list[dict[str, Any]], store: Store) -> list[tuple[str, str]]:
    """(title, base64 PNG) of: metric per dataset, judge-score histograms, throughput over time, worker busy time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    names = [n for n, d in summary["datasets"].items() if d.get("status") != "failed"]
    if summary["metrics"] and names:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.8 / len(summary["metrics"])
        for k, m in enumerate(summary["metrics"]):
            values = [100 * (summary["datasets"][n][m]["all"] or 0) for n in names]
            ax.bar([i + k * width for i in range(len(names))], values, width, label=m)
        ax.set_xticks([i + width * (len(summary["metrics"]) - 1) / 2 for i in range(len(names))], names)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend()
        out.append(("metric per dataset", _png(fig)))
        plt.close(fig)
    for judge in summary["judges"]:
        scores = [r[f"{judge}_score"] for r in records if r.get(f"{judge}_score") is not None]
        if scores:
            fig, ax = plt.subplots(figsize=(6, 3.2))
            ax.hist(scores, bins=min(20, max(5, len(set(scores)))))
            ax.set_xlabel(f"{judge} score")
            ax.set_ylabel("samples")
            out.append((f"{judge}: score histogram ({len(scores)} parsed)", _png(fig)))
            plt.close(fig)
    times = {stage: store.finish_times(stage) for stage in summary["performance"]}
    if any(times.values()):
        t0 = min(t[0] for t in times.values() if t)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        span = max(t[-1] for t in times.values() if t) - t0
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
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(usage)))
        labels = [name for name, _ in usage]
        ax.barh(labels, [u["held_s"] for _, u in usage], color="#ddd", label="held (load included)")
        ax.barh(labels, [u["busy_s"] for _, u in usage], color="#3a7", label="busy in batches")
        ax.set_xlabel("seconds")
        ax.legend()
        out.append(("busy time per worker (GPU or CPU replica)", _png(fig)))
        plt.close(fig)
    return out


def _thumb(ref: ImageRef) -> str:
    try:
        img = open_image(ref)
    except ValueError:
        return ""
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=80)
    return f'<img class="thumb" alt="{html.escape(ref.where)}" src="data:image/jpeg;base64,' \
           f'{base64.b64encode(buf.getvalue()).decode()}">'


def _images(cfg: RunConfig, rows: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], list[ImageRef]]:
    """The samples' input images: image files as the store references them; images held inside a dataset file
    (base64, parquet bytes; or a store from before images were referenced) read again from it, if it is there."""
    out: dict[tuple[str, str], list[ImageRef]] = {}
    again = set()
    for name, stored in rows.items():
        for r in stored:
            if r["images"] is None or any(i["path"] is None for i in r["images"]):
                again.add(name)
            elif r["images"]:
                out[(name, r["id"])] = [ImageRef(i["where"], path=i["path"]) for i in r["images"]]
    for ds in (d for d in cfg.datasets if d.name in again):
        try:
            samples = load_samples(ds, seed=cfg.seed, limit=cfg.limit)
        except DatasetError:
            continue
        out.update({(s.dataset, s.id): s.images for s in samples if s.images})
    return out


def _is_wrong(rec: dict[str, Any], summary: dict[str, Any], cfg: RunConfig) -> bool:
    """Below half marks: the first metric's score, or without metrics the first judge's score in its range."""
    if summary["metrics"]:
        score = rec.get(summary["metrics"][0])
        return score is not None and score < pass_mark()
    for stage in cfg.pipeline()[1:]:
        score = rec.get(f"{stage.name}_score")
        if score is not None:
            return score < pass_mark(stage.parse)
    return False


def write_html(path: Path, summary: dict[str, Any], records: list[dict[str, Any]], store: Store, cfg: RunConfig) -> None:
    """Write the self-contained report to `path`."""

    e = html.escape
    public = {k: v for k, v in summary.items() if k != "_rows"}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>evalfleet: {e(str(summary['run']))}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
             f"<h1>evalfleet: {e(str(summary['run']))}</h1><h2>Results</h2>", _md_table_html(markdown_table(public))]
    parts.append(f"<h2>Performance</h2><p>run wall {e(str(public['wall_s']))} s, {public['gpu_hours']} GPU-hours</p>")
    parts.append(html_table(PERFORMANCE_HEAD, performance_rows(public)))
    if rows := startup_rows(public):
        parts.append("<h3>Start-up, seconds (the replica ready last)</h3>" + html_table(STARTUP_HEAD, rows))
    if prov := public.get("provenance"):
        parts.append("<h3>How this result was made</h3>" + html_table(["what", "value"], [list(r) for r in provenance_rows(prov)]))
    plots = _plots(summary, records, store)
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(
            f"<figure style='display:inline-block;width:48%;margin:0'><figcaption>{e(t)}</figcaption>"
            f"<img alt='{e(t)}' src='data:image/png;base64,{png}'></figure>" for t, png in plots) + "</div>")

    images = _images(cfg, summary["_rows"]) if records else {}
    edits = cfg.pipeline()[0].kind == "edit"
    judges = summary["judges"]
    head = ["dataset", "id", "images", "question", "answer", "prediction", "extracted", *summary["metrics"],
            *[f"{j} score" for j in judges], *[f"{j} reason" for j in judges], "error"]
    rows = []
    for i, r in enumerate(records):
        thumbs = ""
        if i < MAX_THUMB_ROWS:
            refs = list(images.get((r["dataset"], r["id"]), []))
            if edits and r["prediction"]:
                edited = store.path.parent / r["prediction"]
                refs.append(ImageRef(f"{edited}:edited_image", path=str(edited)))
            thumbs = "".join(_thumb(ref) for ref in refs)
        prediction = "" if edits else r["prediction"]
        cells = [e(r["dataset"]), e(r["id"]), thumbs, _text(r["question"]), _text(r["answer"]), _text(prediction),
                 _text(r["extracted"] if not edits else "")]
        cells += [_num(r.get(m)) for m in summary["metrics"]]
        cells += [_num(r.get(f"{j}_score")) for j in judges]
        cells += [_text(r.get(f"{j}_reason") or r.get(f"{j}_error")) for j in judges]
        cells.append(_text(r["error"]))
        attrs = (f"data-ds='{e(r['dataset'])}' data-wrong='{int(_is_wrong(r, summary, cfg))}' "
                 f"data-error='{int(r['error'] is not None)}'")
        rows.append(f"<tr {attrs}>" + "".join(f"<td class='text'>{c}</td>" for c in cells) + "</tr>")
    options = "".join(f"<option value='{e(n)}'>{e(n)}</option>" for n in summary["_rows"])
    parts.append(
        "<h2>Samples</h2><div class='filters'><label>dataset <select id='f-dataset'><option value=''>all</option>"
        f"{options}</select></label> <label><input type='checkbox' id='f-wrong'> wrong only</label> "
        "<label><input type='checkbox' id='f-errors'> errors only</label> "
        f"<span id='shown'>{len(rows)}</span> of {len(rows)} shown</div>"
        "<table id='samples'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></body></html>")
    path.write_text("".join(parts))


def _text(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.3g}"


def html_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain HTML table of escaped text."""
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def _md_table_html(md: str) -> str:
    """A Markdown table (as written to summary.md) as HTML."""
    lines = [line.strip().strip("|").split(" | ") for line in md.strip().splitlines()]
    return html_table([c.strip() for c in lines[0]], [[c.strip().replace("**", "") for c in line] for line in lines[2:]])
