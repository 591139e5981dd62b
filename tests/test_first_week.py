"""Issue 21: what stopped or misled a new user — VLM processors without torchvision, failed runs that exited 0."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_QUESTIONS, cli, make_config, quiet_console

from evalfleet.errors import exception_text

DEMO_IMAGE = Path(__import__("easy_vqa").get_test_image_paths()[0])
TORCHVISION_USABLE = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0


def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
    return path


@pytest.mark.skipif(TORCHVISION_USABLE, reason="torchvision imports here: processors need no workaround")
def test_a_vlm_processor_loads_without_torchvision_in_a_fresh_process(tiny_qwen2vl):
    """In a process with nothing of the tests installed, transformers alone refuses the processor (the failure a
    new user met); after evalfleet's `without_video_processor()`, which its workers call, it loads."""
    code = f"""
from transformers import AutoProcessor
try:
    AutoProcessor.from_pretrained({str(tiny_qwen2vl)!r})
    print("loaded without help")
except ImportError as err:
    print("refused:", "torchvision" in str(err).lower())
from evalfleet.backends.transformers.processors import without_video_processor
assert without_video_processor()
p = AutoProcessor.from_pretrained({str(tiny_qwen2vl)!r})
print("loaded:", type(p.image_processor).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "refused: True" in out and "loaded: " in out, out


def test_the_console_gets_the_whole_exception_and_a_hint():
    message = ("Qwen2VLVideoProcessor requires the Torchvision library but it was not found in your environment.\n"
               "Please note that you may need to restart your runtime after installation.")
    try:
        try:
            {}["x"]
        except KeyError:
            raise ImportError(message) from None
    except ImportError:
        text = exception_text(traceback.format_exc())
    assert text.startswith("ImportError: Qwen2VLVideoProcessor requires the Torchvision library")
    assert "restart your runtime" in text and "\nhint: VLM processors in transformers 5 need torchvision" in text
    assert "File " not in text


def test_every_input_problem_is_reported_at_once_before_anything_loads(tmp_path, smollm2):
    """A field name in no row, a dataset without references, a missing model path: one refusal (exit 2) naming
    all three, and nothing is written."""
    rows = [json.loads(line) for line in DEMO_QUESTIONS.open()][:4]
    (tmp_path / "noref.jsonl").write_text("".join(json.dumps({"id": r["id"], "question": r["question"]}) + "\n"
                                                  for r in rows))
    datasets = [{"name": "wrongfield", "path": str(DEMO_QUESTIONS), "fields": {"question": "prompt"}},
                {"name": "noref", "path": str(tmp_path / "noref.jsonl")}]
    cfg = make_config(tmp_path / "runs", tmp_path / "no-such-model", datasets)
    code, out = cli("run", str(write_config(tmp_path / "eval.yaml", cfg)))
    assert code == 2, out
    assert "model path not found" in out and str(tmp_path / "no-such-model") in out
    assert "dataset wrongfield" in out and "every one of its" in out and ":prompt: missing question" in out
    assert "its rows have the columns id, question, answer" in out
    assert "dataset noref" in out and "no row has a reference answer in the column `answer`" in out
    assert not (tmp_path / "runs").exists()


def test_a_judge_prompt_with_an_unknown_placeholder_is_refused_at_once(tmp_path, smollm2):
    model = {"path": str(smollm2), "dtype": "float32"}
    cfg = {"name": "t", "output_dir": str(tmp_path / "runs"), "datasets": [{"name": "qa", "path": str(DEMO_QUESTIONS)}],
           "stages": [{"name": "generate", "kind": "generate", "model": model},
                      {"name": "judge", "kind": "judge", "model": model,
                       "prompt": "Question: {question}\nReference: {reference}\nAnswer: {prediction}"}]}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    code, out = cli("run", str(tmp_path / "eval.yaml"))
    assert code == 2 and "stages.judge: Value error, judge prompt: unknown placeholder {reference}" in out, out
    assert "known: {question}, {answer}" in out and not (tmp_path / "runs").exists()


def test_a_run_whose_errors_pass_max_error_rate_exits_1_naming_them(tmp_path, smollm2):
    """Two rows of ten lack their question: 20 % errors. The run finishes and saves the others, prints the first
    errors, and exits 1; with max_error_rate 0.5 the same run exits 0."""
    rows = [json.loads(line) for line in DEMO_QUESTIONS.open()][:10]
    for r in rows[3:5]:
        del r["question"]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for rate, expected in ((None, 1), (0.5, 0)):
        cfg = make_config(tmp_path / "runs", smollm2, [{"name": "qa", "path": str(data)}],
                          model={"generation": {"max_new_tokens": 2}},
                          **({"max_error_rate": rate} if rate is not None else {}))
        code, out = cli("run", str(write_config(tmp_path / "eval.yaml", cfg)), "--fresh")
        assert code == expected, out
        assert "generate: 2 of 10 samples (20.0 %) ended in an error; the first:" in out
        assert f"qa/{rows[3]['id']}: {data}:4:question: missing question" in out
        summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
        assert (summary["datasets"]["qa"]["finished"], summary["errors"]["generate"]["errors"]) == (10, 2)
        if expected:
            assert "generate: 20.0 % of its 10 samples ended in an error (max_error_rate 5 %)" in out


def test_image_paths_through_symlinks_absolute_with_image_root_and_never_by_dotdot(tmp_path):
    """The usual cluster layout: the data file beside a symlink to an image folder on scratch space. A symlink
    inside the data folder is followed; `../` out of it is refused; an absolute path is refused unless under
    `image_root`, or with `absolute_images`."""
    from evalfleet.config import parse_config
    from evalfleet.data.load import load_samples

    scratch = tmp_path / "scratch" / "images"
    scratch.mkdir(parents=True)
    (scratch / "a.png").write_bytes(DEMO_IMAGE.read_bytes())
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    (data / "img").symlink_to(scratch)
    rows = [{"id": "linked", "question": "?", "image": "img/a.png"},
            {"id": "absolute", "question": "?", "image": str(scratch / "a.png")},
            {"id": "climbs", "question": "?", "image": "img/../../../scratch/images/a.png"}]
    (data / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def errors(**extra) -> dict[str, str | None]:
        cfg = parse_config({"name": "t", "model": {"path": "m"}, "datasets": [{"name": "d", "path": "data/vqa.jsonl",
                                                                              **extra}]},
                           base_dir=tmp_path / "project")
        return {s.id: s.error for s in load_samples(cfg.datasets[0], seed=0)}

    default = errors()
    assert default["linked"] is None
    assert "is outside the image folder" in default["absolute"] and "set `image_root`" in default["absolute"]
    assert "'img/../../../scratch/images/a.png' is outside the image folder" in default["climbs"]
    anywhere = errors(absolute_images=True)
    assert anywhere["linked"] is anywhere["absolute"] is None and "outside the image folder" in anywhere["climbs"]
    scratch_root = errors(image_root="../scratch")  # relative to the config file's folder
    assert scratch_root["absolute"] is None and "image file not found" in scratch_root["linked"]  # scratch/img/a.png


def test_model_path_and_output_dir_are_relative_to_the_config_file(tmp_path, smollm2):
    """Run from another folder: the config's `models/smol` and `out` are found beside the config; `--out` on the
    command line is relative to where the command runs; a hub id is left alone."""
    from evalfleet.config import load_config

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "smol").symlink_to(smollm2)
    cfg = {"name": "t", "output_dir": "out", "model": {"path": "models/smol", "dtype": "float32",
                                                      "generation": {"max_new_tokens": 2}},
           "datasets": [{"name": "qa", "path": str(DEMO_QUESTIONS), "limit": 2}], "metrics": ["exact_match"]}
    (project / "eval.yaml").write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out = cli("run", str(project / "eval.yaml"), "--workers", "1", cwd=elsewhere)
    assert code == 0, out
    assert (project / "out" / "t" / "summary.json").is_file() and not (elsewhere / "out").exists()
    code, out = cli("run", str(project / "eval.yaml"), "--workers", "1", "--out", "here", cwd=elsewhere)
    assert code == 0 and (elsewhere / "here" / "t" / "summary.json").is_file(), out
    (project / "hub.yaml").write_text(yaml.safe_dump({**cfg, "model": {"path": "Qwen/Qwen2.5-7B-Instruct"}}))
    assert load_config(project / "hub.yaml").model.path == "Qwen/Qwen2.5-7B-Instruct"
    # A typo in a local path (its folder `models/` is there) is reported at once, not tried on the hub.
    (project / "typo.yaml").write_text(yaml.safe_dump({**cfg, "model": {"path": "models/smoll"}}))
    code, out = cli("validate", str(project / "typo.yaml"), cwd=elsewhere)
    assert code == 2 and f"model path not found: {project / 'models' / 'smoll'}" in out, out


def test_cli_conventions_help_version_no_flags_set_validate_and_init(tmp_path, smollm2):
    from evalfleet import __version__
    from evalfleet.config import load_config

    assert cli("--version") == (0, f"evalfleet {__version__}\n")
    code, out = cli("run", "-h")
    assert code == 0 and "--no-show-samples" in out and "--set" in out and "--no-fresh" in out
    # init: a commented starter that the schema accepts; validate names what is left to fill in, writes nothing.
    code, out = cli("init", str(tmp_path / "starter.yaml"))
    assert code == 0 and "# " in (tmp_path / "starter.yaml").read_text()
    assert load_config(tmp_path / "starter.yaml").name == "my-eval"
    assert cli("init", str(tmp_path / "starter.yaml"))[0] == 2  # not overwritten without --force
    code, out = cli("validate", str(tmp_path / "starter.yaml"))
    assert code == 2 and "2 problem(s)" in out and "model path not found" in out and "file not found" in out
    # --set reaches any setting, checked like the file; validate of a good config says what would run.
    cfg = write_config(tmp_path / "eval.yaml", make_config(tmp_path / "runs", smollm2, [
        {"name": "qa", "path": str(DEMO_QUESTIONS)}]))
    code, out = cli("validate", str(cfg), "--set", "limit=3", "--set", "datasets.0.limit=2")
    assert code == 0 and "qa 2 samples (0 with errors)" in out, out  # a dataset by its index (issue 38, item 2)
    code, out = cli("validate", str(cfg), "--set", "limit=3", "--set", "model.generation.max_new_tokens=7")
    assert code == 0 and "valid" in out and "qa 3 samples (0 with errors)" in out, out
    code, out = cli("validate", str(cfg), "--set", "model.generation.temperature=hot")
    assert code == 2 and "invalid --set model.generation.temperature=hot: Input should be a valid number" in out
    assert not (tmp_path / "runs").exists()


def test_summary_and_html_say_how_the_result_was_made(tmp_path, smollm2):
    """Provenance: the command, versions, the git commit of the folder the run started in, the model's config
    and weight-index hashes, generation settings, the dataset file's sha256, start and end; each metric with its
    95 % interval."""
    import hashlib
    from importlib import metadata

    folder = tmp_path / "project"
    folder.mkdir()
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (folder / "notes.txt").write_text("x")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    cfg = write_config(folder / "eval.yaml", make_config(tmp_path / "runs", smollm2, [
        {"name": "qa", "path": str(DEMO_QUESTIONS), "limit": 3}], model={"generation": {"max_new_tokens": 2}}))
    code, out = cli("run", str(cfg), cwd=folder)
    assert code == 0, out
    run_dir = tmp_path / "runs" / "t"
    p = json.loads((run_dir / "summary.json").read_text())["provenance"]
    assert p["git"] == {"commit": commit, "dirty": False} and p["cwd"] == str(folder)
    assert p["versions"]["evalfleet"] == metadata.version("evalfleet") and p["versions"]["torch"] == torch_version()
    model = p["models"]["generate"]
    assert model["path"] == str(smollm2) and model["generation"]["max_new_tokens"] == 2
    assert model["config_sha256"] == hashlib.sha256((smollm2 / "config.json").read_bytes()).hexdigest()
    assert len(model["weights_index_sha256"]) == 64
    assert p["datasets"]["qa"]["sha256"] == hashlib.sha256(DEMO_QUESTIONS.read_bytes()).hexdigest()
    assert p["started"] < p["ended"] and p["config"]["name"] == "t"
    summary = json.loads((run_dir / "summary.json").read_text())
    lo, hi = summary["datasets"]["qa"]["exact_match"]["ci95"]
    assert 0 <= lo <= summary["datasets"]["qa"]["exact_match"]["all"] <= hi <= 1
    code, out = cli("report", str(run_dir), "--format", "html")
    page = (run_dir / "report.html").read_text()
    assert code == 0 and "How this result was made" in page and commit in page and "95 % interval" in page


def torch_version() -> str:
    from importlib import metadata

    return metadata.version("torch")


def vqa_files(tmp_path: Path) -> Path:
    """A VLMEvalKit-style multiple-choice TSV with a 300x200 image, ids long enough to tempt a line break."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    tsv = tmp_path / "mcq.tsv"
    tsv.write_text("index\tquestion\tA\tB\tC\tanswer\timage\n" + "".join(
        f"{i}\tWhich shape is shown?\tcircle\tsquare\ttriangle\tA\t{b64 if i == 1 else 1}\n" for i in (1, 2, 3)))
    return tsv


def test_html_report_reads_at_1400px_in_chromium(tmp_path, smollm2, tiny_qwen2vl):
    """Plots at half the page, not a fifth; a judge histogram over the judge's range; no throughput plot for a
    short run; thumbnails that enlarge; options, the exact prompt and the judge's raw reply per sample; ids on
    one line."""
    from selenium.webdriver.common.by import By
    from test_observe import chromium

    from evalfleet.config import parse_config
    from evalfleet.run import run



    smol = {"path": str(smollm2), "dtype": "float32", "generation": {"max_new_tokens": 6}}
    rows = [json.loads(line) for line in DEMO_QUESTIONS.open()][:4]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({**r, "id": f"arithmetic_question_{r['id']}"}) + "\n" for r in rows))
    run(parse_config({"name": "judged", "output_dir": str(tmp_path), "workers": 1, "judge_cache": None,
                      "datasets": [{"name": "qa", "path": str(data)}], "metrics": ["exact_match", "lenient_match"],
                      "stages": [{"name": "generate", "kind": "generate", "model": smol},
                                 {"name": "judge", "kind": "judge", "model": smol, "parse": {"min": 1, "max": 5},
                                  "prompt": "Q: {question}\nReference: {answer}\nAnswer: {prediction}\nScore 1-5:"}]}),
        console=quiet_console())
    run(parse_config({"name": "vlm", "output_dir": str(tmp_path), "workers": 1, "judge_cache": None,
                      "model": {"path": str(tiny_qwen2vl), "dtype": "float32", "generation": {"max_new_tokens": 2}},
                      "datasets": [{"name": "mcq", "path": str(vqa_files(tmp_path))}]}), console=quiet_console())
    for name in ("judged", "vlm"):
        assert cli("report", str(tmp_path / name), "--format", "html")[0] == 0
    driver = chromium()
    try:
        driver.set_window_size(1400, 1000)
        driver.get((tmp_path / "judged" / "report.html").as_uri())
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        captions = [f.text for f in driver.find_elements(By.CSS_SELECTOR, ".plots figcaption")]
        assert any("judge: score histogram over its range 1 to 5" in c for c in captions), captions
        assert not any("throughput" in c for c in captions)  # a run of seconds has no throughput to plot
        widths = [img.size["width"] for img in driver.find_elements(By.CSS_SELECTOR, ".plots img")]
        assert widths and min(widths) >= 540, widths  # two to a 1400 px page, labels as large as the text
        ids = driver.find_elements(By.CSS_SELECTOR, "#samples td.name")
        lines = driver.execute_script(
            "return arguments[0].map(td => { const r = document.createRange(); r.selectNodeContents(td);"
            " return r.getClientRects().length; });", ids)
        assert lines and set(lines) == {1}, lines  # each id and dataset name on one line
        details = driver.find_elements(By.CSS_SELECTOR, "#samples tr:first-child details")
        assert [d.find_element(By.TAG_NAME, "summary").text for d in details] == ["prompt", "judge reply"]
        details[0].find_element(By.TAG_NAME, "summary").click()
        assert "Which" not in details[0].text and "What is" in details[0].text and "<|im_start|>" in details[0].text

        driver.get((tmp_path / "vlm" / "report.html").as_uri())
        assert "A. circle\nB. square\nC. triangle" in driver.find_element(By.CSS_SELECTOR, "#samples .options").text
        thumb = driver.find_element(By.CSS_SELECTOR, "#samples img.thumb")
        assert driver.execute_script("return arguments[0].naturalWidth", thumb) == 96
        thumb.click()
        zoom = driver.find_element(By.ID, "zoom")
        assert zoom.is_displayed()
        big = zoom.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].naturalWidth", big) == 300
        zoom.click()
        assert not zoom.is_displayed()
    finally:
        driver.quit()


def test_show_prints_how_a_sample_was_scored_and_names_near_ids(tmp_path, smollm2):
    cfg = write_config(tmp_path / "eval.yaml", make_config(tmp_path / "runs", smollm2, [
        {"name": "qa", "path": str(DEMO_QUESTIONS), "limit": 2}], model={"generation": {"max_new_tokens": 4}}))
    assert cli("run", str(cfg))[0] == 0
    code, out = cli("show", str(tmp_path / "runs" / "t"), "qa", "q00")
    assert code == 0 and "question: What is 2 + 3?" in out and "answers: 5" in out
    assert "extracted: '" in out and "exact_match " in out and "lenient_match " in out
    code, out = cli("show", str(tmp_path / "runs" / "t"), "qa", "q0")
    assert code == 2 and "no sample 'q0' in dataset 'qa' (2 samples); near: q0" in out
    assert {"q00", "q01"} <= set(out.split("near: ")[1].strip().split(", "))
    code, out = cli("show", str(tmp_path / "runs" / "t"), "quiz", "q00")
    assert code == 2 and "no dataset 'quiz'; its datasets: qa" in out


def test_compare_covers_every_metric_shows_setting_changes_and_fails_without_shared_samples(tmp_path, smollm2):
    def one(name: str, new_tokens: int, limit: int, dataset: str = "qa") -> Path:
        cfg = make_config(tmp_path / "runs", smollm2, [{"name": dataset, "path": str(DEMO_QUESTIONS), "limit": limit}],
                          name=name, model={"generation": {"max_new_tokens": new_tokens}})
        assert cli("run", str(write_config(tmp_path / f"{name}.yaml", cfg)))[0] == 0
        return tmp_path / "runs" / name

    a, b, c = one("a", 8, 4), one("b", 3, 4), one("c", 8, 2, dataset="other")
    code, out = cli("compare", str(a), str(b), "--out", str(tmp_path / "cmp.html"))
    assert code == 0, out
    assert "# compare: A = a, B = b; lenient_match" in out and "# compare: A = a, B = b; exact_match" in out
    assert "model.generation.max_new_tokens: 8 -> 3" in out and "| qa | 4 |" in out
    page = (tmp_path / "cmp.html").read_text()
    assert "compare: lenient_match" in page and "compare: exact_match" in page and "max_new_tokens: 8 -&gt; 3" in page
    code, out = cli("compare", str(a), str(c))
    assert code == 1 and "share no sample" in out and "datasets in only one run: other, qa" in out


def test_html_thumbnails_name_the_image_file_not_its_folders(tmp_path):
    """Issue 38, item 8: a thumbnail's alt text (the zoomed image's caption) carried the absolute path."""
    from evalfleet.records import ImageRef
    from evalfleet.reporting.html import _thumb

    for full in (True, False):
        tag = _thumb(ImageRef(f"{tmp_path / 'qa.jsonl'}:1:image", path=str(DEMO_IMAGE)), full=full)
        assert f'alt="{DEMO_IMAGE.name}"' in tag and f'alt="{DEMO_IMAGE}' not in tag, tag
    tag = _thumb(ImageRef(f"{tmp_path / 'qa.jsonl'}:3:image", data=DEMO_IMAGE.read_bytes()), full=True)
    assert 'alt="qa.jsonl:3:image"' in tag and str(tmp_path) not in tag, tag


def test_compare_to_a_pipe_keeps_each_markdown_row_on_one_line(tmp_path, smollm2):
    """Issue 38, item 8: `compare` piped to a file wrapped its markdown tables at 160 columns."""
    name = ("a-dataset-whose-name-is-long-enough-to-make-a-row-of-the-comparison-wider-than-one-hundred-and-sixty-"
            "columns")
    for run, tokens in (("a", 2), ("b", 3)):
        cfg = make_config(tmp_path / "runs", smollm2, [{"name": name, "path": str(DEMO_QUESTIONS), "limit": 2}],
                          name=run, model={"generation": {"max_new_tokens": tokens}})
        assert cli("run", str(write_config(tmp_path / f"{run}.yaml", cfg)))[0] == 0
    code, out = cli("compare", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"),
                    "--out", str(tmp_path / "cmp.md"))
    assert code == 0, out
    text = (tmp_path / "cmp.md").read_text()
    assert max(len(line) for line in text.splitlines()) > 160
    assert out.startswith(text), out  # what was printed is the markdown, line for line
