"""End to end with a VLM (random-weight Qwen2-VL of the real architecture) on real easy-VQA images."""

from __future__ import annotations

import base64
import json
import shutil

import easy_vqa
from conftest import make_config, quiet_console
from test_run import predictions

from evalfleet.run import run
from evalfleet.store import Store


def test_vlm_run_over_every_format_with_bad_rows_and_a_failed_dataset(tmp_path, tiny_qwen2vl):
    images = easy_vqa.get_test_image_paths()
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    shutil.copy(images[0], data / "img" / "0.png")
    (data / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    rows = [
        {"id": "good", "question": "What shape is in the image?", "answer": "circle", "image": "img/0.png"},
        {"id": "broken", "question": "What color?", "answer": "red", "image": "img/broken.png"},
        {"id": "missing", "question": "What color?", "answer": "red", "image": "img/none.png"},
    ]
    (data / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    b64 = base64.b64encode(open(images[1], "rb").read()).decode()
    (data / "mcq.tsv").write_text(
        "index\tquestion\tA\tB\tanswer\timage\n"
        f"1\tIs there a shape?\tyes\tno\tA\t{b64}\n2\tWhich colour?\tred\tblue\tB\t1\n"
    )
    datasets = [
        {"name": "easyvqa", "builtin": "easy-vqa", "limit": 6, "shuffle": True},
        {"name": "local", "path": str(data / "local.jsonl")},
        {"name": "gone", "path": str(data / "gone.jsonl")},
        {"name": "mcq", "path": str(data / "mcq.tsv")},
    ]
    cfg = make_config(tmp_path, tiny_qwen2vl, datasets, metrics=["exact_match", "vqa_accuracy"],
                      model={"generation": {"max_new_tokens": 6}})
    summary = run(cfg, console=quiet_console())

    ds = summary["datasets"]
    assert ds["gone"]["status"] == "failed" and str(data / "gone.jsonl") in ds["gone"]["error"]
    assert (ds["easyvqa"]["finished"], ds["easyvqa"]["errors"], ds["easyvqa"]["scored"]) == (6, 0, 6)
    assert (ds["local"]["finished"], ds["local"]["errors"], ds["local"]["scored"]) == (3, 2, 1)
    assert (ds["mcq"]["finished"], ds["mcq"]["errors"]) == (2, 0)
    assert ds["easyvqa"]["exact_match"]["n_closed"] + ds["easyvqa"]["exact_match"]["n_open"] == 6

    store = Store.open_existing(tmp_path / "t")
    local = {r["id"]: r for r in store.rows("generate", "local")}
    mcq = [r for r in store.rows("generate", "mcq")]
    store.close()
    assert isinstance(local["good"]["prediction"], str) and local["good"]["error"] is None
    assert f"{data / 'local.jsonl'}:2:image: unreadable image" in local["broken"]["error"]
    assert local["missing"]["error"].startswith(f"{data / 'local.jsonl'}:3:image: image file not found")
    assert mcq[0]["prompt"].startswith("Question: Is there a shape?\nOptions:\nA. yes\nB. no")
    assert all(isinstance(r["prediction"], str) for r in mcq)
    log = (tmp_path / "t" / "run.log").read_text()
    assert "dataset gone failed" in log and "sample local/broken:" in log and "unreadable image" in log


def test_qwen25_vl_on_easy_vqa_with_two_workers_on_either_engine(tmp_path, tiny_qwen25vl):
    """The continuous engine (requests streamed from the workers' prefetch, images packed into its prefills)
    answers as the `generate` engine does."""
    answers = {}
    for engine in ("continuous", "generate"):
        cfg = make_config(tmp_path / engine, tiny_qwen25vl, [{"name": "ev", "builtin": "easy-vqa", "limit": 8}],
                          workers=2, metrics=["exact_match"],
                          model={"batch_size": 2, "engine": engine, "generation": {"max_new_tokens": 4}})
        summary = run(cfg, console=quiet_console())
        assert (summary["datasets"]["ev"]["finished"], summary["datasets"]["ev"]["errors"]) == (8, 0)
        answers[engine] = predictions(tmp_path / engine / "t", "ev")
        if engine == "continuous":  # easy-vqa's first 8 questions are about one picture: the summary says what
            prefill = summary["performance"]["generate"]["prefill"]  # sharing it saved (issue 37)
            assert prefill["images"] == 8 and 1 <= prefill["images_encoded"] <= 2, prefill  # once per worker at most
            assert 0 < prefill["shared_tokens"] < prefill["prompt_tokens"], prefill
            md = (tmp_path / engine / "t" / "summary.md").read_text()
            assert f"images encoded {prefill['images_encoded']} of 8" in md and "prefill saved" in md, md
    assert answers["continuous"] == answers["generate"]
