"""Scores are computed once, as results are committed, and stored with them; reports read them from the store,
recompute them when the scoring settings change, and fill them in for stores written before scores were kept."""

from __future__ import annotations

import json

from conftest import DEMO_QUESTIONS, make_config, quiet_console

from evalfleet.reporting.report import build_summary
from evalfleet.run import run
from evalfleet.scoring import AnswerScore, JudgeScore, score_from_json, score_output, scoring_key
from evalfleet.store import Store

DATASET = [{"name": "qa", "path": str(DEMO_QUESTIONS), "prompt": "{question} Answer briefly."}]


def test_scores_are_stored_at_commit_and_reports_read_them(tmp_path, smollm2):
    cfg = make_config(tmp_path, smollm2, DATASET, limit=6, metrics=["lenient_match"])
    summary = run(cfg, console=quiet_console())
    store = Store.open_existing(cfg.run_dir)
    rows = list(store.rows("generate", "qa"))
    assert len(rows) == 6 and all(r["score"] is not None for r in rows)
    for r in rows:  # what the driver stored is what the one scoring function gives
        assert r["score"] == score_output(r["prediction"], r["answers"], metrics=["lenient_match"])
    mean = sum(r["score"].metrics["lenient_match"] for r in rows) / 6
    assert summary["datasets"]["qa"]["lenient_match"]["all"] == mean
    assert store.get_meta("scoring:generate") == scoring_key(cfg.pipeline()[0], cfg)

    # Other metrics at report time: every score is recomputed, stored, and the key follows.
    other = cfg.model_copy(update={"metrics": ["exact_match", "lenient_match"]})
    again = build_summary(store, other)
    assert set(next(store.rows("generate", "qa"))["score"].metrics) == {"exact_match", "lenient_match"}
    assert again["datasets"]["qa"]["lenient_match"]["all"] == mean
    assert store.get_meta("scoring:generate") == scoring_key(other.pipeline()[0], other)

    # A store from before scores were kept (no scores, no key): the report fills them in.
    store.db.execute("UPDATE results SET score = NULL")
    store.db.execute("DELETE FROM meta WHERE key = 'scoring:generate'")
    old = build_summary(store, cfg)
    assert old["datasets"]["qa"]["lenient_match"]["all"] == mean
    assert all(r["score"] is not None for r in store.rows("generate", "qa"))
    predictions = [json.loads(line) for line in (cfg.run_dir / "predictions" / "qa.jsonl").open()]
    assert [p["score"] for p in predictions] == [r["score"].metrics for r in rows]
    store.close()


def test_image_references_are_stored_with_the_samples(tmp_path):
    """The HTML report finds image files through the store; images held inside a dataset file have no path and
    are read again from it."""
    from PIL import Image

    from evalfleet.config import parse_config
    from evalfleet.records import ImageRef, Sample
    from evalfleet.reporting.html import _images

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    samples = [Sample("files", "0", "q", "q", images=[ImageRef("files.jsonl:1:image", path=str(tmp_path / "a.png"))]),
               Sample("files", "1", "q", "q"),
               Sample("inline", "0", "q", "q", images=[ImageRef("inline.tsv:2:image", data=b"\x89PNG...")])]
    store = Store(tmp_path / "store.db")
    store.put_samples(samples[:2])
    store.put_samples(samples[2:])
    rows = {name: list(store.rows("generate", name)) for name in ("files", "inline")}
    assert [r["images"] for r in rows["files"]] == [[{"where": "files.jsonl:1:image", "path": str(tmp_path / "a.png")}],
                                                    []]
    assert rows["inline"][0]["images"] == [{"where": "inline.tsv:2:image", "path": None}]
    cfg = parse_config({"name": "t", "output_dir": str(tmp_path), "model": {"path": "m"},
                        "datasets": [{"name": "files", "path": str(tmp_path / "gone.jsonl")},
                                     {"name": "inline", "path": str(tmp_path / "gone.tsv")}]})
    # The dataset files are gone: the file image is still found; the inline one is not (its file is needed).
    assert _images(cfg, rows) == {("files", "0"): [ImageRef("files.jsonl:1:image", path=str(tmp_path / "a.png"))]}
    store.close()


def test_a_run_stored_before_scores_were_typed_resumes_and_reports_as_before(tmp_path, smollm2):
    """Issue 36: a score is a typed record, stored as JSON with its kind. A store written before holds untagged
    dicts; its rows read them as the same records, and a resume adds tagged ones beside them."""
    cfg = make_config(tmp_path, smollm2, DATASET, limit=6, metrics=["lenient_match"])
    first = run(cfg, console=quiet_console())
    store = Store.open_existing(cfg.run_dir)
    scores = {r["id"]: r["score"] for r in store.rows("generate", "qa")}
    old = {i: json.dumps({"extracted": s.extracted, "extraction": s.extraction, "metrics": s.metrics})
           for i, s in scores.items()}  # the format before issue 36
    store.db.executemany("UPDATE results SET score = ? WHERE sample_id = ?", [(v, k) for k, v in old.items()])
    assert {r["id"]: r["score"] for r in store.rows("generate", "qa")} == scores
    assert all(isinstance(s, AnswerScore) for s in scores.values())
    lost = list(scores)[:2]  # a run that stopped before committing these
    store.db.executemany("DELETE FROM results WHERE sample_id = ?", [(i,) for i in lost])
    store.close()

    again = run(cfg, console=quiet_console())
    assert again["datasets"]["qa"] == first["datasets"]["qa"]
    store = Store.open_existing(cfg.run_dir)
    stored = dict(store.db.execute("SELECT sample_id, score FROM results WHERE stage = 'generate'").fetchall())
    assert {i for i, text in stored.items() if '"kind"' in text} == set(lost)  # the others kept as they were
    assert {r["id"]: r["score"] for r in store.rows("generate", "qa")} == scores
    store.close()


def test_old_and_new_stored_scores_read_as_the_same_records():
    answer = AnswerScore("B", "choice", {"exact_match": 1.0})
    judged = JudgeScore(None, error="no number in the reply")
    for score in (answer, judged, AnswerScore(None, "truncated", None), JudgeScore(7.0, "close enough")):
        assert score_from_json(score.to_json()) == score
    assert score_from_json('{"extracted": "B", "extraction": "choice", "metrics": {"exact_match": 1.0}}') == answer
    assert score_from_json('{"score": null, "reason": null, "error": "no number in the reply"}') == judged
    assert score_from_json(None) is None and score_from_json("null") is None
