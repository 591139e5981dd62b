"""generate -> judge on real questions with SmolLM2 as answerer and as judge."""

import json
import sys

import pytest
from conftest import DEMO_QUESTIONS, quiet_console

from evalfleet.config import parse_config
from evalfleet.errors import UserError
from evalfleet.run import run
from evalfleet.store import Store

JUDGE_PROMPT = ("Question: {question}\nReference answer: {answer}\nStudent answer: {prediction}\n"
                "Grade the student answer from 0 to 10. Reply with the number only.")


def pipeline_config(tmp_path, smollm2, data):
    model = {"path": str(smollm2), "dtype": "float32", "batch_size": 4}
    return parse_config({
        "name": "p", "output_dir": str(tmp_path), "workers": 1, "metrics": ["lenient_match"],
        "datasets": [{"name": "qa", "path": str(data), "prompt": "{question} Answer briefly."}],
        "stages": [
            {"name": "generate", "kind": "generate", "model": {**model, "generation": {"max_new_tokens": 16}}},
            {"name": "judge", "kind": "judge", "prompt": JUDGE_PROMPT,
             "model": {**model, "generation": {"max_new_tokens": 6}}, "parse": {"kind": "number", "min": 0, "max": 10}},
        ],
    })


def test_generate_then_judge_records_scores_raw_replies_and_parse_errors(tmp_path, smollm2):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:6]) + "{broken\n")
    cfg = pipeline_config(tmp_path, smollm2, data).model_copy(update={"show_samples": True})
    summary = run(cfg, console=(console := quiet_console()))
    shown = console.file.getvalue()
    assert "[cpu0] [qa/q01] lenient_match 1.00 | 7 + 9 = 16" in shown  # --show-samples: a line per sample
    assert "[cpu0] batch of 4: mean" in shown

    judge = summary["datasets"]["qa"]["judge"]
    assert judge["judged"] + judge["parse_errors"] == 6  # every answered sample: a score or a recorded parse error
    assert judge["errors"] == 1  # the broken row had nothing to judge
    assert judge["judged"] >= 1 and 0 <= judge["min"] <= judge["mean"] <= judge["max"] <= 10
    store = Store.open_existing(tmp_path / "p")
    raw = {r["id"]: r for r in store.rows("judge", "qa")}
    store.close()
    assert raw["line7"]["error"].startswith("nothing to judge: generate gave no answer")
    lines = [json.loads(x) for x in (tmp_path / "p" / "predictions" / "qa.jsonl").read_text().splitlines()]
    for line in lines[:6]:
        j = line["judge"]["judge"]
        assert j["raw"] == raw[line["id"]]["prediction"]  # the judge's reply is kept verbatim
        assert (j["score"] is None) != (j["error"] is None)  # a score, or why there is none: never a silent 0
    assert "judge mean score" in (tmp_path / "p" / "summary.md").read_text()

    # Running again recomputes nothing: both stages' results are reused from the store.
    again = run(cfg, console=(console := quiet_console()))
    out = console.file.getvalue()
    assert "stage generate: 7 samples in 1 dataset(s), 7 already done, 0 to do" in out
    assert "stage judge: 6 samples in 1 dataset(s), 6 already done, 0 to do" in out
    assert again["datasets"]["qa"]["judge"] == judge


def test_a_second_identical_judge_is_answered_from_the_cache(tmp_path, smollm2):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:4]))
    cfg = pipeline_config(tmp_path, smollm2, data)
    first = run(cfg, console=quiet_console())
    # Re-scoring with a second judge stage: same judge model, prompt and parsing under a new name.
    stages = [s.model_dump() for s in cfg.pipeline()] + [{**cfg.pipeline()[1].model_dump(), "name": "judge2"}]
    again = run(cfg.model_copy(update={"stages": [type(cfg.pipeline()[0])(**s) for s in stages]}),
                console=(console := quiet_console()))
    out = console.file.getvalue()
    assert "stage judge2: 4 samples in 1 dataset(s), 4 already done, 0 to do" in out  # no worker started
    store = Store.open_existing(tmp_path / "p")
    cached = list(store.rows("judge2", "qa"))
    judged = {r["id"]: r["prediction"] for r in store.rows("judge", "qa")}
    scores = {r["id"]: r["score"] for r in store.rows("judge", "qa")}
    store.close()
    assert {r["worker"] for r in cached} == {"cache"}
    assert {r["id"]: r["prediction"] for r in cached} == judged
    assert {r["id"]: r["score"] for r in cached} == scores and all(v is not None for v in scores.values())
    assert again["datasets"]["qa"]["judge2"] == first["datasets"]["qa"]["judge"]


def test_the_judge_cache_is_shared_between_run_folders(tmp_path, smollm2):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:3]))
    first = pipeline_config(tmp_path, smollm2, data)
    run(first, console=quiet_console())
    assert (tmp_path / "judge_cache.db").is_file()  # beside the run folders, not inside one
    second = first.model_copy(update={"name": "p2"})  # another run folder: same answers, same judge requests
    run(second, console=(console := quiet_console()))
    assert "stage judge: 3 samples in 1 dataset(s), 3 already done, 0 to do" in console.file.getvalue()
    store = Store.open_existing(tmp_path / "p2")
    assert {r["worker"] for r in store.rows("judge", "qa")} == {"cache"}
    store.close()
    uncached = first.model_copy(update={"name": "p3", "judge_cache": None})
    run(uncached, console=(console := quiet_console()))
    assert "stage judge: 3 samples in 1 dataset(s), 0 already done, 3 to do" in console.file.getvalue()


def test_concurrent_stages_judge_answers_as_they_arrive(tmp_path, smollm2):
    import sqlite3

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:16]) + "{broken\n")
    cfg = pipeline_config(tmp_path, smollm2, data)
    stages = [s.model_copy(update={"model": s.model.model_copy(update={"batch_size": 2})}) for s in cfg.pipeline()]
    cfg = cfg.model_copy(update={"concurrent_stages": True, "stages": stages, "judge_cache": None})
    summary = run(cfg, console=(console := quiet_console()))
    out = console.file.getvalue()
    assert "stage judge: 16 samples in 1 dataset(s), 0 already done, 16 to do (judged as the answers arrive)" in out
    judge = summary["datasets"]["qa"]["judge"]
    assert judge["judged"] + judge["parse_errors"] == 16 and judge["errors"] == 1
    db = sqlite3.connect(tmp_path / "p" / "store.db")
    first_judged, = db.execute("SELECT MIN(created) FROM results WHERE stage = 'judge' AND worker != 'cache' "
                               "AND error IS NULL").fetchone()
    last_answered, = db.execute("SELECT MAX(created) FROM results WHERE stage = 'generate'").fetchone()
    workers = {r[0].split("@")[0]: r[1] for r in db.execute("SELECT id, state FROM workers")}
    db.close()
    assert first_judged < last_answered  # the judge worked while the answerer was still answering
    assert workers == {"generate/cpu0.0": "stopped", "judge/cpu0.0": "stopped"}
    again = run(cfg, console=(console := quiet_console()))  # resume: nothing left at either stage
    assert "stage judge: 16 samples in 1 dataset(s), 16 already done, 0 to do" in console.file.getvalue()
    assert again["datasets"]["qa"]["judge"] == judge


def test_a_changed_judge_is_refused_until_its_stage_is_redone(tmp_path, smollm2):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:2]))
    cfg = pipeline_config(tmp_path, smollm2, data)
    run(cfg, console=quiet_console())
    stages = [s.model_dump() for s in cfg.pipeline()]
    stages[1]["model"]["generation"]["max_new_tokens"] = 3
    changed = cfg.model_copy(update={"stages": [type(cfg.pipeline()[0])(**s) for s in stages]})
    with pytest.raises(UserError, match="stage 'judge' made with other model, generation or judge settings"):
        run(changed, console=quiet_console())
    with pytest.raises(UserError, match="--redo nope: no such stage"):
        run(changed, redo=["nope"], console=quiet_console())
    run(changed, redo=["judge"], console=(console := quiet_console()))
    out = console.file.getvalue()
    assert "stage generate: 2 samples in 1 dataset(s), 2 already done, 0 to do" in out
    assert "stage judge: 2 samples in 1 dataset(s), 0 already done, 2 to do" in out


def test_edit_then_vlm_judge_saves_seeded_pngs_and_judges_them(tmp_path, tiny_pix2pix, tiny_qwen2vl):
    import shutil

    import easy_vqa
    from PIL import Image

    paths = easy_vqa.get_test_image_paths()
    data = tmp_path / "edits.jsonl"
    rows = []
    for i in range(4):
        shutil.copy(paths[i], tmp_path / f"{i}.png")
        rows.append({"id": f"e{i}", "question": ["make it red", "add a hat", "flip it", "blur it"][i],
                     "image": f"{i}.png"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = parse_config({
        "name": "edit", "output_dir": str(tmp_path / "runs"), "workers": 1,
        "datasets": [{"name": "ed", "path": str(data)}],
        "stages": [
            {"name": "edit", "kind": "edit",
             "model": {"backend": "diffusers", "path": str(tiny_pix2pix), "dtype": "float32", "batch_size": 2,
                       "diffusion": {"steps": 2, "guidance": 3.0, "image_guidance": 1.5}}},
            {"name": "judge", "kind": "judge",
             "prompt": "{image}{edited_image}Instruction: {question}. Rate the edit from 0 to 10.",
             "model": {"path": str(tiny_qwen2vl), "dtype": "float32", "generation": {"max_new_tokens": 4}}},
        ],
    })
    summary = run(cfg, console=quiet_console())
    run_dir = tmp_path / "runs" / "edit"
    store = Store.open_existing(run_dir)
    edits = {r["id"]: r for r in store.rows("edit", "ed")}
    judged = {r["id"]: r for r in store.rows("judge", "ed")}
    store.close()
    for i in range(4):
        assert edits[f"e{i}"]["prediction"] == f"edits/ed/e{i}.png"
        assert Image.open(run_dir / "edits" / "ed" / f"e{i}.png").size == (64, 64)
        assert judged[f"e{i}"]["finished"] and judged[f"e{i}"]["error"] is None  # the VLM judge saw both images
    judge = summary["datasets"]["ed"]["judge"]
    assert judge["judged"] + judge["parse_errors"] == 4
    first = (run_dir / "edits" / "ed" / "e1.png").read_bytes()
    run(cfg, fresh=True, console=quiet_console())  # one seed per sample: the same edits again
    assert (run_dir / "edits" / "ed" / "e1.png").read_bytes() == first


def test_edit_backend_reports_each_denoising_step(tiny_pix2pix, tmp_path):
    import easy_vqa
    from PIL import Image

    from evalfleet.backends import Request, make_backend
    from evalfleet.config import ModelConfig

    cfg = ModelConfig(backend="diffusers", path=str(tiny_pix2pix), dtype="float32", diffusion={"steps": 3})
    backend = make_backend(cfg, 0, output_dir=str(tmp_path))
    backend.load()
    steps = []
    backend.on_step = lambda step, total: steps.append((step, total))
    image = Image.open(easy_vqa.get_test_image_paths()[0]).convert("RGB")
    out = backend.generate(backend.prepare([Request("make it red", [image], 7, "d/x")]))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert out[0].text == "edits/d/x.png" and (tmp_path / "edits" / "d" / "x.png").is_file()


def test_a_judge_with_the_answerers_weights_reuses_its_loaded_worker(tmp_path, smollm2):
    """One load per model per run: the judge (same weights, other generation settings) is answered by the worker
    that generated, kept loaded; its replies are those of a judge in a worker of its own."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:5]))
    replies, pids = {}, {}
    for name, python in (("reused", None), ("own", sys.executable)):  # a stage `python` gets its own worker
        cfg = pipeline_config(tmp_path / name, smollm2, data)
        stages = [cfg.pipeline()[0], cfg.pipeline()[1].model_copy(update={"python": python})]
        console = quiet_console()
        run(cfg.model_copy(update={"stages": stages}), console=console)
        store = Store.open_existing(tmp_path / name / "p")
        replies[name] = {r["id"]: r["prediction"] for r in store.rows("judge", "qa")}
        pids[name] = {w["id"].split("/")[0]: w["pid"] for w in store.workers()}
        states = {w["id"].split("/")[0]: w["state"] for w in store.workers()}
        store.close()
        if python is None:
            assert "the previous stage's 1 replica(s) stay loaded" in console.file.getvalue()
            assert states == {"generate": "kept for the next stage", "judge": "stopped"}
    assert pids["reused"]["generate"] == pids["reused"]["judge"]
    assert pids["own"]["generate"] != pids["own"]["judge"]
    assert len(replies["reused"]) == 5 and replies["reused"] == replies["own"]
