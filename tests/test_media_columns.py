"""Issue 39, item 1: a column of pictures or video that the dataset's settings do not read is reported before the
run starts, naming the dataset, file, column and first line, with the setting that fixes it; nothing runs as a
text-only prompt in silence."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import cli
from PIL import Image

from evalfleet.config import DatasetConfig
from evalfleet.data.datasets import media_problems
from evalfleet.data.load import load_samples


def png(path: Path, colour: str) -> str:
    Image.new("RGB", (8, 8), colour).save(path)
    return path.name


def config(tmp_path: Path, dataset: str) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / "eval.yaml"
    path.write_text(f"name: m\nworkers: 1\nmodel: {{path: {tmp_path / 'model'}}}\ndatasets:\n  - {dataset}\n")
    return path


def test_a_list_of_pictures_in_an_unread_column_is_refused_and_named(tmp_path):
    pictures = [png(tmp_path / "a.png", "red"), png(tmp_path / "b.png", "blue")]
    rows = [{"id": 1, "question": "same?", "answer": "no", "images": pictures, "image_id": 17},
            {"id": 2, "question": "red?", "answer": "yes", "images": pictures[:1], "image_id": 18}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = cli("validate", str(config(tmp_path, "{name: qa, path: qa.jsonl}")))
    assert code == 2, out
    assert (f"dataset qa ({tmp_path / 'qa.jsonl'}): column `images` holds pictures (from line 1, in 2 of the first 2 "
            "rows) that no setting reads: the model would answer those rows without them; set `fields.image: images`"
            in out), out
    assert "image_id" not in out  # numbers in a column named for images are not pictures
    code, out = cli("run", str(config(tmp_path, "{name: qa, path: qa.jsonl}")))
    assert code == 2 and "column `images` holds pictures" in out and not (tmp_path / "runs").exists(), out
    # Mapped, the rows carry their pictures; kept as metadata only, the user said so: no problem either way.
    mapped = DatasetConfig(name="qa", path=str(tmp_path / "qa.jsonl"), fields={"image": "images"})
    assert media_problems(mapped) == [] and [len(s.images) for s in load_samples(mapped, seed=0)] == [2, 1]
    kept = DatasetConfig(name="qa", path=str(tmp_path / "qa.jsonl"), columns=["images"])
    assert media_problems(kept) == []


def test_video_a_second_picture_column_csv_and_parquet(tmp_path):
    first = png(tmp_path / "a.png", "red")
    (tmp_path / "frames").mkdir()
    rows = [{"id": 1, "question": "what happens?", "answer": "x", "image": first, "video": "clip.mp4",
             "image_2": "b.jpg", "frames_dir": "frames", "note": "see a.png"}]
    (tmp_path / "v.jsonl").write_text(json.dumps(rows[0]) + "\n")
    got = media_problems(DatasetConfig(name="v", path=str(tmp_path / "v.jsonl")))
    assert len(got) == 2, got  # image_2, the folder of frames (`video` is read: `fields.video`); `note` merely
    second, frames = got       # names a file
    assert ("column `image_2` holds pictures" in second
            and "a row's pictures come from one column (`fields.image: image`)" in second)
    assert ("column `frames_dir` holds video" in frames
            and "a row's video comes from one column (`fields.video: video`)" in frames)
    (why,) = media_problems(DatasetConfig(name="v", path=str(tmp_path / "v.jsonl"), columns=["image_2", "frames_dir"],
                                          fields={"video": None}))
    assert "column `video` holds video" in why and "set `fields.video: video`" in why
    # CSV: base64 text of a PNG in a column the fields do not read
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(buf, format="PNG")
    encoded = base64.b64encode(buf.getvalue()).decode()
    (tmp_path / "q.csv").write_text(f"id,question,answer,photo\n1,green?,yes,{encoded}\n")
    (why,) = media_problems(DatasetConfig(name="c", path=str(tmp_path / "q.csv")))
    assert "column `photo` holds pictures (from line 2" in why and "set `fields.image: photo`" in why
    # parquet: a struct of bytes, as Hugging Face datasets store images
    table = pa.table({"question": ["green?"], "picture": [{"bytes": buf.getvalue(), "path": None}]})
    pq.write_table(table, tmp_path / "q.parquet")
    (why,) = media_problems(DatasetConfig(name="p", path=str(tmp_path / "q.parquet")))
    assert "column `picture` holds pictures (from line 1" in why
