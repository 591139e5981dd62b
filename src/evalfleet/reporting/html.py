"""The HTML report: one self-contained file with metrics, plots (matplotlib, embedded as PNG) and a filterable
per-sample table with image thumbnails (input and edited images)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from evalfleet.config import RunConfig
from evalfleet.data.datasets import DatasetError
from evalfleet.data.images import open_image
from evalfleet.data.load import load_samples
from evalfleet.records import ImageRef
from evalfleet.reporting.plots import plots
from evalfleet.reporting.provenance import provenance_rows
from evalfleet.reporting.tables import PERFORMANCE_HEAD, STARTUP_HEAD, markdown_table, performance_rows, startup_rows
from evalfleet.scoring import pass_mark
from evalfleet.store import Store

THUMB_PX = 96
MAX_THUMB_ROWS = 5000
"""Samples beyond this many get no thumbnails, which keeps the file a few tens of MB at most."""
FULL_PX = 640
MAX_FULL_ROWS = 500
"""The first samples' images also come at up to FULL_PX, shown when a thumbnail is clicked; beyond, a thumbnail of
an image file links to the file."""

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
  const zoom = document.getElementById('zoom');
  for (const img of document.querySelectorAll('img.thumb[data-full]')) {
    img.addEventListener('click', () => {
      zoom.querySelector('img').src = img.dataset.full;
      zoom.querySelector('figcaption').textContent = img.alt;
      zoom.style.display = 'flex';
    });
  }
  zoom.addEventListener('click', () => { zoom.style.display = 'none'; });
  applyFilters();
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.text { max-width: 32em; white-space: pre-wrap; overflow-wrap: break-word; }
td.name { overflow-wrap: normal; word-break: normal; }  /* ids and names break between words only */
.scroll { overflow-x: auto; }
tr[data-error="1"] td { background: #fff0f0; }
img.thumb { max-width: 96px; max-height: 96px; margin-right: 4px; cursor: zoom-in; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em 2em; }
.plots figure { margin: 0; }
.plots figcaption { font-weight: 600; margin-bottom: 0.3em; }
.plots img { width: 100%; max-width: 900px; border: 1px solid #eee; }
.filters { position: sticky; top: 0; background: white; padding: 0.5em 0; }
.options { color: #555; margin-top: 0.4em; }
details summary { cursor: pointer; color: #1a5fb4; white-space: nowrap; }
details pre { white-space: pre-wrap; overflow-wrap: break-word; max-width: 60em; background: #f7f7f7; padding: 0.5em; }
#zoom { display: none; position: fixed; inset: 0; background: rgba(0,0,0,.8); align-items: center;
        justify-content: center; z-index: 10; cursor: zoom-out; }
#zoom figure { margin: 0; color: white; text-align: center; }
#zoom img { max-width: 90vw; max-height: 85vh; background: white; }
"""


def _thumb(ref: ImageRef, full: bool) -> str:
    """A thumbnail; `full`: with the image at up to FULL_PX embedded, shown on a click (else, for an image file,
    a link to it)."""
    try:
        img = open_image(ref)
    except ValueError:
        return ""
    big = _jpeg(img, FULL_PX) if full else None
    img.thumbnail((THUMB_PX, THUMB_PX))
    alt = Path(ref.path).name if ref.path else Path(ref.where).name  # `1.png`, `data.jsonl:3:image`: no folders
    tag = (f'<img class="thumb" alt="{html.escape(alt)}" src="data:image/jpeg;base64,{_jpeg(img, THUMB_PX)}"'
           + (f' data-full="data:image/jpeg;base64,{big}"' if big else "") + ">")
    return tag if big or ref.path is None else f'<a href="{html.escape(Path(ref.path).as_uri())}">{tag}</a>'


def _jpeg(img: Any, px: int) -> str:
    img = img.copy()
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


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
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>evalfleet: {e(str(summary['run']))}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
             f"<h1>evalfleet: {e(str(summary['run']))}</h1><h2>Results</h2>", _md_table_html(markdown_table(public))]
    parts.append(f"<h2>Performance</h2><p>run wall {e(str(public['wall_s']))} s, {public['gpu_hours']} GPU-hours</p>")
    parts.append(html_table(PERFORMANCE_HEAD, performance_rows(public)))
    if rows := startup_rows(public):
        parts.append("<h3>Start-up, seconds (the replica ready last)</h3>" + html_table(STARTUP_HEAD, rows))
    if prov := public.get("provenance"):
        parts.append("<h3>How this result was made</h3>" + html_table(["what", "value"], [list(r) for r in provenance_rows(prov)]))
    drawn = plots(summary, records, store, {s.name: s.parse for s in cfg.pipeline()[1:]})
    if drawn:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(
            f"<figure><figcaption>{e(t)}</figcaption><img alt='{e(t)}' src='data:image/png;base64,{png}'></figure>"
            for t, png in drawn) + "</div>")

    images = _images(cfg, summary["_rows"]) if records else {}
    edits = cfg.pipeline()[0].kind == "edit"
    judges = summary["judges"]
    head = ["dataset", "id", "images", "question", "answer", "prediction", "extracted", *summary["metrics"],
            *[f"{j} score" for j in judges], *[f"{j} reason" for j in judges], "error", "prompt and replies"]
    rows = []
    for i, r in enumerate(records):
        thumbs = ""
        if i < MAX_THUMB_ROWS:
            refs = list(images.get((r["dataset"], r["id"]), []))
            if edits and r["prediction"]:
                edited = store.path.parent / r["prediction"]
                refs.append(ImageRef(f"{edited}:edited_image", path=str(edited)))
            thumbs = "".join(_thumb(ref, i < MAX_FULL_ROWS) for ref in refs)
        prediction = "" if edits else r["prediction"]
        kept = " · ".join(f"{k[len('column '):]}: {v}" for k, v in r.items() if k.startswith("column ") and v)
        question = _text(r["question"]) + "".join(f"<div class='options'>{_text(x)}</div>" for x in
                                                  (r.get("options"), kept) if x)
        cells = [e(r["dataset"]), e(r["id"]), thumbs, question, _text(r["answer"]), _text(prediction),
                 _text(r["extracted"] if not edits else "")]
        cells += [_num(r.get(m)) for m in summary["metrics"]]
        cells += [_num(r.get(f"{j}_score")) for j in judges]
        cells += [_text(r.get(f"{j}_reason") or r.get(f"{j}_error")) for j in judges]
        cells.append(_text(r["error"]))
        cells.append(_details([("prompt", r.get("prompt")), *[(f"{j} reply", r.get(f"{j}_raw")) for j in judges]]))
        attrs = (f"data-ds='{e(r['dataset'])}' data-wrong='{int(_is_wrong(r, summary, cfg))}' "
                 f"data-error='{int(r['error'] is not None)}'")
        rows.append(f"<tr {attrs}>" + "".join(f"<td class='{'name' if k < 2 else 'text'}'>{c}</td>"
                                              for k, c in enumerate(cells)) + "</tr>")
    options = "".join(f"<option value='{e(n)}'>{e(n)}</option>" for n in summary["_rows"])
    parts.append(
        "<h2>Samples</h2><div class='filters'><label>dataset <select id='f-dataset'><option value=''>all</option>"
        f"{options}</select></label> <label><input type='checkbox' id='f-wrong'> wrong only</label> "
        "<label><input type='checkbox' id='f-errors'> errors only</label> "
        f"<span id='shown'>{len(rows)}</span> of {len(rows)} shown</div>"
        "<div class='scroll'><table id='samples'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
        "<div id='zoom'><figure><img alt=''><figcaption></figcaption></figure></div></body></html>")
    path.write_text("".join(parts))


def _details(parts: list[tuple[str, Any]]) -> str:
    """Each (label, text) with text as a collapsed block: the exact prompt, a judge's raw reply."""
    return "".join(f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(str(text))}</pre></details>"
                   for label, text in parts if text)


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
