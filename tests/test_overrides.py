"""CLI overrides (`--batch-size` ...) are checked against the schema; a model setting reaches every stage's model."""

import re
from pathlib import Path

import pytest
from conftest import DEMO_QUESTIONS, cli

from evalfleet.cli import OVERRIDE_OPTIONS
from evalfleet.config import load_config
from evalfleet.errors import UserError
from evalfleet.store import Store

EXAMPLES = Path(__file__).parents[1] / "examples"

STAGES = """
name: s
concurrent_stages: true
stages:
  - name: generate
    kind: generate
    model: {path: /models/a, batch_size: 4, generation: {max_new_tokens: 16}}
  - name: judge
    kind: judge
    model: {path: /models/b, dtype: float32, generation: {max_new_tokens: 6}}
    prompt: "Grade {prediction} against {answer} from 0 to 10."
datasets:
  - {name: a, path: data/a.jsonl}
"""

PLAIN = """
name: p
model: {path: /models/a, batch_size: 4, generation: {max_new_tokens: 16}}
datasets:
  - {name: a, path: data/a.jsonl}
"""


def write(tmp_path: Path, text: str, name: str = "eval.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def without_batch_sizes(dump: dict) -> dict:
    for model in [dump.get("model")] + [s["model"] for s in dump.get("stages") or []]:
        if model is not None:
            model.pop("batch_size")
    return dump


def test_batch_size_sets_every_stage_and_leaves_the_rest(tmp_path):
    path = write(tmp_path, STAGES)
    before = load_config(path)
    after = load_config(path, {"model.batch_size": "8"}, OVERRIDE_OPTIONS)  # as typer hands it over: a string
    assert [s.model.batch_size for s in before.pipeline()] == [4, "auto"]
    assert [s.model.batch_size for s in after.pipeline()] == [8, 8]
    assert after.model is None  # no `model:` beside `stages:`
    assert without_batch_sizes(after.model_dump()) == without_batch_sizes(before.model_dump())
    assert [s.fingerprint(0) for s in after.pipeline()] == [s.fingerprint(0) for s in before.pipeline()]


def test_batch_size_on_the_example_stages_config():
    example = EXAMPLES / "vqa-vlm-judge.yaml"
    before = load_config(example)
    after = load_config(example, {"model.batch_size": "8"}, OVERRIDE_OPTIONS)
    assert [s.name for s in after.pipeline()] == ["generate", "judge"]
    assert [s.model.batch_size for s in after.pipeline()] == [8, 8]
    assert without_batch_sizes(after.model_dump()) == without_batch_sizes(before.model_dump())


def test_batch_size_on_a_plain_config(tmp_path):
    path = write(tmp_path, PLAIN)
    before = load_config(path)
    after = load_config(path, {"model.batch_size": "8"}, OVERRIDE_OPTIONS)
    assert (before.model.batch_size, after.model.batch_size, after.stages) == (4, 8, None)
    assert without_batch_sizes(after.model_dump()) == without_batch_sizes(before.model_dump())


@pytest.mark.parametrize("text", [STAGES, PLAIN], ids=["stages", "plain"])
def test_auto_still_works(tmp_path, text):
    cfg = load_config(write(tmp_path, text), {"model.batch_size": "auto"}, OVERRIDE_OPTIONS)
    assert {s.model.batch_size for s in cfg.pipeline()} == {"auto"}


def test_run_level_overrides_still_apply(tmp_path):
    cfg = load_config(write(tmp_path, STAGES), {"workers": 2, "limit": 5, "gpus": [0, 1], "placement.mode": "single",
                                                "output_dir": "elsewhere", "seed": 3}, OVERRIDE_OPTIONS)
    assert (cfg.workers, cfg.limit, cfg.gpus, cfg.placement.mode, cfg.output_dir, cfg.seed) == \
        (2, 5, [0, 1], "single", str(tmp_path / "elsewhere"), 3)  # relative to the config file, as in it


@pytest.mark.parametrize("text", [STAGES, PLAIN], ids=["stages", "plain"])
def test_a_key_that_names_no_setting_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_config(path, {"model.batchsize": "8"}, {"model.batchsize": "--batchsize"})
    msg = str(err.value)
    assert msg.startswith("--batchsize: `model.batchsize` is not a config setting: no setting `batchsize` in `model`")
    assert "batch_size" in msg and "\n" not in msg  # the settings that exist are listed, on one line
    with pytest.raises(UserError, match=r"^--set seed\.x: `seed\.x` is not a config setting: `seed` is a single "
                                        r"setting, it has no `x`$"):
        load_config(path, {"seed.x": 1})
    with pytest.raises(UserError, match=r"^--set nope: `nope` is not a config setting: no setting `nope` in the "
                                        r"top level"):
        load_config(path, {"nope": 1})


@pytest.mark.parametrize("value", ["banana", "0", "2.5"])
@pytest.mark.parametrize("text", [STAGES, PLAIN], ids=["stages", "plain"])
def test_a_bad_value_gets_the_config_files_error_naming_the_option(tmp_path, text, value):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, text), {"model.batch_size": value}, OVERRIDE_OPTIONS)
    msg = str(err.value)
    assert msg.startswith(f"invalid --batch-size {value}: ") and "\n" not in msg  # one line, though two stages
    assert "invalid config" not in msg and "eval.yaml" not in msg and "required key" not in msg
    # The same complaint as the same value written in the config file (which names the key instead).
    in_file = text.replace("batch_size: 4", f"batch_size: '{value}'")
    with pytest.raises(UserError) as file_err:
        load_config(write(tmp_path, in_file, "in_file.yaml"))
    file_msgs = {line.split(": ", 1)[1] for line in str(file_err.value).splitlines()[1:]}
    assert set(msg.split(": ", 1)[1].split("; ")) == file_msgs
    if value == "0":
        assert msg == "invalid --batch-size 0: Value error, must be at least 1 or `auto`"


def test_the_config_files_own_errors_are_still_reported_as_such(tmp_path):
    path = write(tmp_path, STAGES.replace("batch_size: 4", "batch_size: 4, beams: 2"))
    with pytest.raises(UserError) as err:
        load_config(path, {"model.batch_size": "8"}, OVERRIDE_OPTIONS)
    assert str(err.value) == f"invalid config {path}:\n  stages.0.model.beams: unknown key"


def test_cli_refuses_a_bad_batch_size_naming_the_option(tmp_path):
    path = write(tmp_path, STAGES)
    code, out = cli("run", str(path), "--batch-size", "banana", "--out", str(tmp_path / "runs"))
    assert code == 2, out
    assert "error: invalid --batch-size banana: Input should be a valid integer" in out
    assert "model.path" not in out and "Traceback" not in out
    assert not (tmp_path / "runs").exists()


def test_cli_batch_size_runs_every_stage_at_that_size(tmp_path, smollm2):
    """The issue's command: `evalfleet run STAGES_CONFIG --batch-size N` runs, each stage in batches of N."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:4]))
    model = f"path: {smollm2}, dtype: float32"
    text = (STAGES.replace("concurrent_stages: true", "workers: 1").replace("path: /models/a", model)
            .replace("path: /models/b, dtype: float32", model).replace("data/a.jsonl", "qa.jsonl"))
    path = write(tmp_path, text)
    code, out = cli("run", str(path), "--batch-size", "2", "--show-samples", "--out", str(tmp_path / "runs"))
    assert code == 0, out
    assert re.findall(r"(\w+): plan: batch size (\d+)", out) == [("generate", "2"), ("judge", "2")], out
    assert re.findall(r"\] batch of \d+: mean", out)  # --show-samples: a line per group of answers with a score
    assert "judge: 4/4 done" in out
    store = Store.open_existing(tmp_path / "runs" / "s")
    try:
        stored = store.get_meta("config")
    finally:
        store.close()
    assert [s["model"]["batch_size"] for s in stored["stages"]] == [2, 2] and stored["model"] is None
