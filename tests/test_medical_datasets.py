"""Issue 22, item 1: PathVQA, SLAKE and VQA-RAD by name, read from files made here in exactly their releases'
schemas (docs/datasets.md cites each), never downloaded."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evalfleet.config import parse_config
from evalfleet.data.datasets import DatasetError
from evalfleet.data.images import open_image
from evalfleet.data.load import load_samples
from evalfleet.scoring.summary import question_kind


def jpeg(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def hf_parquet(path: Path, rows: list[dict]) -> None:
    """A Hugging Face `datasets` parquet shard: `image` is the Image feature's struct {bytes, path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("image", image)] + [(k, pa.int64() if isinstance(v, int) else pa.string())
                                   for k, v in rows[0].items() if k != "image"]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)


def load(tmp_path: Path, **dataset) -> list:
    cfg = parse_config({"name": "t", "model": {"path": "m"}, "datasets": [{"name": "d", **dataset}]},
                       base_dir=tmp_path)
    return load_samples(cfg.datasets[0], seed=0)


def test_pathvqa_from_the_hugging_face_parquet_shards(tmp_path):
    root = tmp_path / "path-vqa"
    shard = [{"image": {"bytes": jpeg(), "path": f"img_{i}.jpg"}, "question": q, "answer": a}
             for i, (q, a) in enumerate([("where are liver stem cells found?", "in the canals of hering"),
                                         ("is this an infarct?", "yes")])]
    hf_parquet(root / "data" / "test-00000-of-00002-e9adadb4799f44d3.parquet", shard)
    hf_parquet(root / "data" / "test-00001-of-00002-7ea98873fc919813.parquet", shard[:1])
    hf_parquet(root / "data" / "train-00000-of-00001-637a58c700b604af.parquet", shard)
    samples = load(tmp_path, builtin="pathvqa", root="path-vqa")
    assert [s.id for s in samples] == ["0", "1", "2"] and all(s.error is None for s in samples)
    assert samples[0].answers == ["in the canals of hering"] and open_image(samples[0].images[0]).size == (32, 24)
    assert [question_kind({"answers": s.answers, "metadata": s.metadata}) for s in samples] == ["open", "closed",
                                                                                                "open"]
    assert len(load(tmp_path, builtin="pathvqa", root="path-vqa", split="train")) == 2


def test_pathvqa_by_its_vlmevalkit_name_from_the_tsv(tmp_path):
    import base64

    root = tmp_path / "vlmeval"
    root.mkdir()
    b64 = base64.b64encode(jpeg()).decode()
    (root / "PathVQA_TEST.tsv").write_text(f"index\timage\tquestion\tanswer\n0\t{b64}\tis this fibrosis?\tno\n"
                                           f"1\t0\twhat is present?\tnecrosis\n")
    samples = load(tmp_path, builtin="PathVQA_TEST", root="vlmeval")
    assert [(s.id, s.answers, len(s.images), s.error) for s in samples] == [("0", ["no"], 1, None),
                                                                            ("1", ["necrosis"], 1, None)]


def test_vqa_rad_parquet_with_the_original_columns_takes_closed_and_open_from_answer_type(tmp_path):
    rows = [{"image": {"bytes": jpeg(), "path": None}, "qid": 7, "image_name": "synpic54610.jpg",
             "image_organ": "HEAD", "answer": "Yes", "answer_type": "CLOSED", "question_type": "PRES",
             "question": "Are regions of the brain infarcted?", "phrase_type": "test_freeform"},
            {"image": {"bytes": jpeg(), "path": None}, "qid": 9, "image_name": "synpic29263.jpg",
             "image_organ": "CHEST", "answer": "AP", "answer_type": "CLOSED", "question_type": "PLANE",
             "question": "Is this an AP or PA image?", "phrase_type": "test_para"}]
    hf_parquet(tmp_path / "rad" / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", rows)
    samples = load(tmp_path, builtin="vqa-rad", root="rad")
    assert [s.id for s in samples] == ["7", "9"]
    assert samples[1].metadata["columns"]["image_organ"] == "CHEST"
    assert [question_kind({"answers": s.answers, "metadata": s.metadata}) for s in samples] == ["closed", "closed"]


def test_vqa_rad_from_the_original_json_and_image_folder(tmp_path):
    root = tmp_path / "osf"
    (root / "VQA_RAD Image Folder").mkdir(parents=True)
    (root / "VQA_RAD Image Folder" / "synpic54610.jpg").write_bytes(jpeg())
    keys = dict(qid_linked_id="", image_case_url="https://medpix.nlm.nih.gov/case?id=x", image_organ="HEAD",
                evaluation="not evaluated", question_rephrase="NULL", question_relation="NULL",
                question_frame="NULL", question_type="PRES")
    records = [{"qid": 1, "phrase_type": "freeform", "image_name": "synpic54610.jpg", "question": "Is there a mass?",
                "answer": "No", "answer_type": "CLOSED", **keys},
               {"qid": 2, "phrase_type": "test_freeform", "image_name": "synpic54610.jpg",
                "question": "Where is the lesion?", "answer": "Left temporal lobe", "answer_type": "OPEN", **keys}]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    test = load(tmp_path, builtin="vqa-rad", root="osf")
    assert [(s.id, s.answers, s.metadata["answer_type"], s.error) for s in test] == [
        ("2", ["Left temporal lobe"], "open", None)]
    assert [s.id for s in load(tmp_path, builtin="vqa-rad", root="osf", split="train")] == ["1"]


def test_slake_original_json_english_by_default_chinese_with_lang(tmp_path):
    root = tmp_path / "Slake1.0"
    (root / "imgs" / "xmlab102").mkdir(parents=True)
    (root / "imgs" / "xmlab102" / "source.jpg").write_bytes(jpeg())
    common = {"img_id": 102, "img_name": "xmlab102/source.jpg", "location": "Lung", "modality": "CT",
              "base_type": "vqa", "triple": ["vhead", "_", "_"]}
    records = [{**common, "qid": 11, "question": "Which organ is abnormal, heart or lung?", "answer": "Heart",
                "q_lang": "en", "answer_type": "CLOSED", "content_type": "Organ"},
               {**common, "qid": 12, "question": "What modality is used?", "answer": "CT", "q_lang": "en",
                "answer_type": "OPEN", "content_type": "Modality"},
               {**common, "qid": 13, "question": "图中有肺吗?", "answer": "是的", "q_lang": "zh",
                "answer_type": "CLOSED", "content_type": "Organ"}]
    (root / "validate.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (root / "test.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    en = load(tmp_path, builtin="slake", root="Slake1.0")
    assert [(s.id, s.metadata["answer_type"], s.metadata["columns"]["modality"]) for s in en] == [
        ("11", "closed", "CT"), ("12", "open", "CT")]
    assert all(open_image(s.images[0]).size == (32, 24) for s in en)
    assert [s.id for s in load(tmp_path, builtin="slake", root="Slake1.0", lang="zh")] == ["13"]
    assert len(load(tmp_path, builtin="slake", root="Slake1.0", split="validation")) == 2  # validate.json


def test_a_missing_copy_says_where_to_get_it_and_root_is_required(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no slake test split under .*empty \(looked for data/test-\*\.parquet, "
                                           r"test\.json\); get it from https://huggingface.co/datasets/BoKelvin/SLAKE"):
        load(tmp_path, builtin="slake", root="empty")
    with pytest.raises(DatasetError, match="vqa-rad has splits train, test, not 'validation'"):
        load(tmp_path, builtin="vqa-rad", root="empty", split="validation")
    from evalfleet.errors import UserError

    with pytest.raises(UserError, match="builtin pathvqa: give `root`"):
        load(tmp_path, builtin="pathvqa")


def test_group_by_answer_type_and_modality_in_the_summary_tables_and_predictions(tmp_path, tiny_qwen2vl):
    """The releases' columns pass through to the predictions, CSV and summary; `group_by` gives a row per value."""
    from conftest import quiet_console

    from evalfleet.reporting.tables import markdown_table
    from evalfleet.run import run

    root = tmp_path / "Slake1.0"
    (root / "imgs" / "xmlab1").mkdir(parents=True)
    Image.new("RGB", (56, 56), (120, 20, 20)).save(root / "imgs" / "xmlab1" / "source.jpg")
    records = [{"img_id": 1, "img_name": "xmlab1/source.jpg", "question": q, "answer": a, "q_lang": "en",
                "location": "Lung", "modality": m, "answer_type": t, "base_type": "vqa", "content_type": "Organ",
                "triple": ["vhead", "_", "_"], "qid": i}
               for i, (q, a, m, t) in enumerate([("Is this a CT?", "Yes", "CT", "CLOSED"),
                                                 ("What organ?", "Lung", "CT", "OPEN"),
                                                 ("Is it normal?", "No", "MRI", "CLOSED")])]
    (root / "test.json").write_text(json.dumps(records))
    cfg = parse_config({"name": "med", "output_dir": str(tmp_path / "runs"), "workers": 1,
                        "model": {"path": str(tiny_qwen2vl), "dtype": "float32", "generation": {"max_new_tokens": 2}},
                        "datasets": [{"name": "slake", "builtin": "slake", "root": str(root)}],
                        "metrics": ["exact_match", "token_recall"], "group_by": ["answer_type", "modality"]})
    summary = run(cfg, console=quiet_console())
    groups = summary["datasets"]["slake"]["groups"]
    assert {v: g["samples"] for v, g in groups["answer_type"].items()} == {"closed": 2, "open": 1}
    assert {v: g["samples"] for v, g in groups["modality"].items()} == {"CT": 2, "MRI": 1}
    assert groups["answer_type"]["closed"]["exact_match"]["n_closed"] == 2
    table = markdown_table(summary)
    assert "|   answer_type=closed | 2 |" in table and "|   modality=MRI | 1 |" in table
    preds = [json.loads(x) for x in (tmp_path / "runs" / "med" / "predictions" / "slake.jsonl").read_text().splitlines()]
    assert preds[0]["columns"]["modality"] == "CT" and preds[0]["columns"]["answer_type"] == "CLOSED"


def three_copies(tmp_path: Path, n: int) -> dict[str, Path]:
    """VQA-RAD (original JSON + image folder), SLAKE (original JSON + imgs) and PathVQA (HF parquet), n test
    questions each, in their releases' schemas."""
    rad, slake, path = tmp_path / "vqa-rad", tmp_path / "Slake1.0", tmp_path / "path-vqa"
    (rad / "VQA_RAD Image Folder").mkdir(parents=True)
    Image.new("RGB", (56, 56), (30, 30, 30)).save(rad / "VQA_RAD Image Folder" / "synpic1.jpg")
    (rad / "VQA_RAD Dataset Public.json").write_text(json.dumps([
        {"qid": i, "phrase_type": "test_freeform", "image_name": "synpic1.jpg", "image_organ": "HEAD",
         "question": f"Is there a lesion {i}?", "answer": "Yes" if i % 2 else "Frontal lobe",
         "answer_type": "CLOSED" if i % 2 else "OPEN", "question_type": "PRES"} for i in range(n)]))
    (slake / "imgs" / "xmlab0").mkdir(parents=True)
    Image.new("RGB", (56, 56), (60, 60, 60)).save(slake / "imgs" / "xmlab0" / "source.jpg")
    (slake / "test.json").write_text(json.dumps([
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": f"What modality is shown {i}?", "answer": "CT",
         "q_lang": lang, "location": "Lung", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
         "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 2 * i + (lang == "zh")}
        for i in range(n) for lang in ("en", "zh")], ensure_ascii=False))
    hf_parquet(path / "data" / "test-00000-of-00001-e9adadb4799f44d3.parquet",
               [{"image": {"bytes": jpeg((56, 56)), "path": f"img_{i}.jpg"}, "question": f"is this tissue {i}?",
                 "answer": "no"} for i in range(n)])
    return {"vqa-rad": rad, "slake": slake, "pathvqa": path}


def test_the_medical_example_runs_end_to_end_and_status_shows_the_seeds_table(tmp_path, tiny_qwen2vl):
    """examples/medical-vqa.yaml on the tiny Qwen2-VL over files in the three releases' schemas: killed halfway,
    `evalfleet status` prints per dataset current / expected / remaining / completion % / state with a total,
    matching the store; resumed, the run finishes with closed / open rows per dataset."""
    import signal
    import subprocess
    import sys

    import yaml
    from test_run import result_count, wait_for

    from evalfleet.store import Store

    n = 30
    roots = three_copies(tmp_path, n)
    cfg = yaml.safe_load((Path(__file__).parents[1] / "examples" / "medical-vqa.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "runs"), workers=1)
    cfg["model"] = {"path": str(tiny_qwen2vl), "dtype": "float32", "batch_size": 1,
                    "generation": {"max_new_tokens": 24}}
    for ds in cfg["datasets"]:
        ds["root"] = str(roots[ds["name"]])
    (tmp_path / "medical.yaml").write_text(yaml.safe_dump(cfg))
    run_dir, db = tmp_path / "runs" / "medical-vqa", tmp_path / "runs" / "medical-vqa" / "store.db"
    command = [sys.executable, "-m", "evalfleet.cli", "run", str(tmp_path / "medical.yaml")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.exists() and result_count(db) >= 5, timeout=240, what="first results")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = Store.open_existing(run_dir)
    done = {name: store.counts("generate", name)[1] for name in roots}
    store.close()
    assert 0 < sum(done.values()) < 3 * n, done  # killed halfway
    out = subprocess.run([sys.executable, "-m", "evalfleet.cli", "status", str(run_dir)], capture_output=True,
                         text=True, check=True).stdout
    assert "current" in out and "expected" in out and "remaining" in out and "completion %" in out
    cells = [[c.strip() for c in line.strip().strip("│").split("│")] for line in out.splitlines()]
    lines = {c[1]: c for c in cells if c[0] == "generate"}
    for name in roots:  # stage, dataset, current, expected, remaining, %, errors, state
        assert lines[name][2:5] == [str(done[name]), str(n), str(n - done[name])], out
    total = sum(done.values())
    assert lines["total"][2:6] == [str(total), str(3 * n), str(3 * n - total), f"{100 * total / (3 * n):.1f}"]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in roots:
        assert summary["datasets"][name]["finished"] == n and summary["datasets"][name]["errors"] == 0
    assert set(summary["datasets"]["vqa-rad"]["groups"]["answer_type"]) == {"closed", "open"}
    assert set(summary["datasets"]["slake"]["groups"]["answer_type"]) == {"open"}  # English only: n, not 2n
    assert set(summary["datasets"]["pathvqa"]["groups"]["answer_type"]) == {"closed"}  # yes/no, no answer type
    assert {"token_recall", "token_f1", "bleu1"} <= set(summary["datasets"]["slake"])


def test_compare_breaks_down_by_group_by(tmp_path, tiny_qwen2vl):
    """Two runs of a named dataset compared: a row for the dataset and one per answer type."""
    from conftest import quiet_console

    from evalfleet.reporting.compare import compare_runs
    from evalfleet.run import run

    roots = three_copies(tmp_path, 6)
    for name, tokens in (("a", 2), ("b", 4)):
        run(parse_config({"name": name, "output_dir": str(tmp_path / "runs"), "workers": 1, "group_by": ["answer_type"],
                          "model": {"path": str(tiny_qwen2vl), "dtype": "float32",
                                    "generation": {"max_new_tokens": tokens}},
                          "datasets": [{"name": "rad", "builtin": "vqa-rad", "root": str(roots["vqa-rad"])}]}),
            console=quiet_console())
    c = compare_runs(tmp_path / "runs" / "a", tmp_path / "runs" / "b")
    assert [(d.dataset, d.paired) for d in c.datasets] == [("rad", 6), ("rad answer_type=closed", 3),
                                                            ("rad answer_type=open", 3)]
    assert c.shared_samples == 6


def test_a_dataset_without_a_group_by_column_gets_no_dash_group(tmp_path):
    """Issue 38, item 8: VQA-RAD has no `modality`; grouped by it beside SLAKE, it got a meaningless `modality=-`
    row. The rows come from a real store, as the report reads them."""
    from dataclasses import replace

    from evalfleet.scoring.summary import summarize_groups
    from evalfleet.store import Store

    copies = three_copies(tmp_path, 2)
    store = Store(tmp_path / "store.db")
    try:
        groups = {}
        for name in ("vqa-rad", "slake"):
            samples = load(tmp_path, builtin=name, root=str(copies[name]))
            store.put_samples([replace(s, dataset=name) for s in samples])
            rows = list(store.rows("generate", name))
            groups[name] = summarize_groups(rows, ["exact_match"], ["answer_type", "modality"])
    finally:
        store.close()
    assert {c: sorted(v) for c, v in groups["slake"].items()} == {"answer_type": ["open"], "modality": ["CT"]}
    assert {c: sorted(v) for c, v in groups["vqa-rad"].items()} == {"answer_type": ["closed", "open"]}
