import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evalfleet.config import DatasetConfig
from evalfleet.data.datasets import DatasetError
from evalfleet.data.images import open_image
from evalfleet.data.load import load_samples


def png_bytes(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def load(path, **kw):
    return load_samples(DatasetConfig(name="d", path=str(path), **kw), seed=1)


def test_jsonl_with_field_mapping_relative_images_and_bad_rows(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes())
    lines = [
        {"qid": "1", "q": "What colour?", "a": ["red", "Red"], "pic": "img/a.png"},
        "{not json",
        {"qid": "3", "q": "Escape?", "a": "no", "pic": "../outside.png"},
        {"qid": "4", "q": "", "a": "x"},
        {"qid": "5", "q": "Missing?", "a": "x", "pic": "img/none.png"},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    ss = load(f, fields={"id": "qid", "question": "q", "answer": "a", "image": "pic"}, prompt="Q: {question}")
    assert [s.id for s in ss] == ["1", "line2", "3", "4", "5"]
    good = ss[0]
    assert (good.prompt, good.answers, good.error) == ("Q: What colour?", ["red", "Red"], None)
    assert open_image(good.images[0]).size == (8, 8)
    assert ss[1].error.startswith(f"{f}:2:(line): invalid JSON")
    assert ss[2].error.startswith(f"{f}:3:pic: image path '../outside.png' is outside the image folder {tmp_path}; set `image_root`")
    assert ss[3].error == f"{f}:4:q: missing question"
    assert ss[4].error.startswith(f"{f}:5:pic: image file not found")


def test_csv_and_tsv_rows_and_field_count_errors(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('id,question,answer\n1,"Is it, really?",yes\n2,too,many,fields\n')
    ss = load(f)
    assert (ss[0].question, ss[0].answers) == ("Is it, really?", ["yes"])
    assert ss[1].error == f"{f}:3:(line): expected 3 fields, got 4"
    t = tmp_path / "d.tsv"
    t.write_text("id\tquestion\tanswer\n7\tHow many?\t3\n")
    assert [(s.id, s.answers) for s in load(t)] == [("7", ["3"])]


def test_parquet_with_image_bytes_struct(tmp_path):
    table = pa.table({
        "id": ["a", "b"],
        "question": ["q1", "q2"],
        "answer": ["x", "y"],
        "image": [{"bytes": png_bytes(), "path": None}, {"bytes": b"garbage", "path": None}],
    })
    f = tmp_path / "d.parquet"
    pq.write_table(table, f)
    ss = load(f)
    assert open_image(ss[0].images[0]).mode == "RGB"
    with pytest.raises(ValueError, match=rf"{f}:2:image: unreadable image"):
        open_image(ss[1].images[0])


def test_vlmevalkit_tsv_base64_options_and_image_back_references(tmp_path):
    b64 = base64.b64encode(png_bytes()).decode()
    f = tmp_path / "MMB.tsv"
    f.write_text(
        "index\tquestion\thint\tA\tB\tC\tanswer\timage\n"
        f"10\tWhich colour?\tLook.\tred\tblue\t\tA\t{b64}\n"
        "11\tSame image?\tnan\tyes\tno\t\tA\t10\n"
        "12\tBroken\tnan\tyes\tno\t\tA\t%%%notbase64%%%\n"
    )
    ss = load(f)
    assert [s.id for s in ss] == ["10", "11", "12"]
    assert ss[0].prompt == ("Hint: Look.\nQuestion: Which colour?\nOptions:\nA. red\nB. blue\n"
                            "Please select the correct answer from the options above.")
    assert ss[0].metadata["options"] == {"A": "red", "B": "blue"}
    assert ss[1].images[0].data == ss[0].images[0].data
    assert ss[2].error == f"{f}:4:image: neither an existing image path nor valid base64"


def test_seeded_shuffle_limit_and_unreadable_datasets(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"id": i, "question": f"q{i}"}) + "\n" for i in range(20)))
    a = [s.id for s in load(f, shuffle=True, limit=5)]
    assert a == [s.id for s in load(f, shuffle=True, limit=5)] and a != [str(i) for i in range(5)]
    assert len(a) == 5
    with pytest.raises(DatasetError, match="file not found"):
        load(tmp_path / "missing.jsonl")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n')
    with pytest.raises(DatasetError, match=r"duplicate sample id '1' at .*dup.jsonl:2 \(first at .*dup.jsonl:1\)"):
        load(dup)
    with pytest.raises(DatasetError, match="unknown file type"):
        load(tmp_path / "x.xml", limit=None) if (tmp_path / "x.xml").write_text("<a/>") else None


def test_easy_vqa_builtin():
    ss = load_samples(DatasetConfig(name="ev", builtin="easy-vqa", limit=3, shuffle=True), seed=0)
    assert len(ss) == 3 and all(s.answers and s.images and s.error is None for s in ss)
    assert open_image(ss[0].images[0]).size == (64, 64)


def test_jsonl_numbers_past_64_bits_and_nan_are_read_and_a_broken_line_names_its_column(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"id": "a", "question": "Big?", "answer": 123456789012345678901234567890}\n'
                 '{"id": "b", "question": "NaN?", "answer": NaN}\n'
                 '  {"id": "c", "question": "Broken?", \n'
                 '["a list"]\n')
    ss = load(f)
    assert [(s.id, s.answers, s.error) for s in ss[:2]] == [
        ("a", ["123456789012345678901234567890"], None), ("b", ["nan"], None)]
    assert ss[2].error == f"{f}:3:(line): invalid JSON: Expecting property name enclosed in double quotes at column 37"
    assert ss[3].error == f"{f}:4:(line): expected a JSON object"


def test_a_jsonl_file_that_is_not_utf8_is_refused_by_name(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes('{"id": "a", "question": "caf\u00e9?"}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match="d.jsonl"):
        load(f)
