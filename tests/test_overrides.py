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
    assert str(err.value) == f"invalid config {path}:\n  stages.generate.model.beams: unknown key"  # by its name


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


# Issue 38, item 2: every setting from the command line. A dataset or a stage is addressed by its name or index; a
# setting right after `datasets` or `stages` is set in each; a key that addresses nothing is refused in one line.
TWO_DATASETS = STAGES.replace("  - {name: a, path: data/a.jsonl}\n",
                              "  - {name: a, path: data/a.jsonl}\n  - {name: b.v2, path: data/b.jsonl, lang: zh}\n")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("datasets.limit", 2, [2, 2]),  # every dataset
    ("datasets.a.limit", 3, [3, None]),  # by name
    ("datasets.b.v2.limit", 4, [None, 4]),  # a name with a dot
    ("datasets.1.limit", 5, [None, 5]),  # by index
])
def test_a_dataset_setting_is_set_by_name_index_or_in_every_dataset(tmp_path, key, value, expected):
    cfg = load_config(write(tmp_path, TWO_DATASETS), {key: value})
    assert [d.limit for d in cfg.datasets] == expected
    assert [d.name for d in cfg.datasets] == ["a", "b.v2"]


def test_any_dataset_setting_reaches_the_dataset(tmp_path):
    cfg = load_config(write(tmp_path, TWO_DATASETS), {"datasets.b.v2.lang": "en", "datasets.instruction": "Be brief.",
                                                      "datasets.0.fields.question": "q", "datasets.a.shuffle": True})
    a, b = cfg.datasets
    assert (a.lang, b.lang, a.instruction, b.instruction) == ("en", "en", "Be brief.", "Be brief.")
    assert (a.fields.question, b.fields.question, a.shuffle, b.shuffle) == ("q", "question", True, False)
    assert (a.path, b.path) == (str(tmp_path / "data/a.jsonl"), str(tmp_path / "data/b.jsonl"))  # the rest as it was


def test_a_stage_setting_is_set_by_name_or_index(tmp_path):
    path = write(tmp_path, STAGES)
    cfg = load_config(path, {"stages.judge.model.dtype": "bfloat16", "stages.0.model.generation.max_new_tokens": 3})
    assert [s.model.dtype for s in cfg.stages] == ["auto", "bfloat16"]
    assert [s.model.generation.max_new_tokens for s in cfg.stages] == [3, 6]
    cfg = load_config(path, {"stages.judge.prompt": "Grade {prediction}: 0 to 10."})
    assert cfg.stages[1].prompt == "Grade {prediction}: 0 to 10."


@pytest.mark.parametrize(("key", "why"), [
    ("datasets.c.limit", ("no dataset `c` in `datasets` (its names: a, b.v2; or an index, 0 to 1; or a setting of "
                          "every dataset: name, path, ")),
    ("datasets.2.limit", "no dataset 2 in `datasets`, which has 2 (its names: a, b.v2; or an index, 0 to 1)"),
    ("datasets.a.nope", "no setting `nope` in `datasets.a` (its settings: name, path, "),
    ("datasets.0.limit.x", "`datasets.a.limit` is a single setting, it has no `x`"),
    ("stages.grader.prompt", "no stage `grader` in `stages` (its names: generate, judge; or an index, 0 to 1; "),
])
def test_a_key_that_addresses_nothing_is_refused_naming_it(tmp_path, key, why):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, TWO_DATASETS), {key: 1})
    msg = str(err.value)
    assert msg.startswith(f"--set {key}: `{key}` is not a config setting: {why}") and "\n" not in msg, msg


def test_a_bad_dataset_value_names_the_option(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, TWO_DATASETS), {"datasets.a.limit": 0})
    assert str(err.value) == "invalid --set datasets.a.limit=0: Input should be greater than or equal to 1"


def test_cli_validate_applies_a_dataset_limit(tmp_path):
    """The issue's command: `--set datasets.limit=2` was accepted and ignored; now each dataset keeps 2 rows."""
    (tmp_path / "model").mkdir()
    (tmp_path / "qa.jsonl").write_text(DEMO_QUESTIONS.read_text())
    path = write(tmp_path, f"name: v\nmodel: {{path: {tmp_path / 'model'}}}\n"
                           "datasets:\n  - {name: qa, path: qa.jsonl}\n  - {name: qa2, path: qa.jsonl}\n")
    code, out = cli("validate", str(path), "--set", "datasets.limit=2", "--set", "datasets.qa2.limit=3")
    assert code == 0, out
    assert "qa 2 samples (0 with errors), qa2 3 samples" in out, out
    code, out = cli("validate", str(path), "--set", "datasets.qa3.limit=2")
    assert code == 2 and "error: --set datasets.qa3.limit: `datasets.qa3.limit` is not a config setting: no dataset " \
        "`qa3` in `datasets` (its names: qa, qa2;" in out, out


def test_yaml_errors_name_the_file(tmp_path):
    path = write(tmp_path, "name: x\nmodel: {path: a\n  b: [\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert f'in "{path}", line 2' in str(err.value) and "<unicode string>" not in str(err.value)


def test_the_config_files_errors_name_a_dataset_and_a_stage_by_name(tmp_path):
    text = TWO_DATASETS.replace("lang: zh", "lang: zh, limit: 0").replace("dtype: float32", "dtype: float32, x: 1")
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, text))
    lines = str(err.value).splitlines()[1:]
    assert lines == ["  stages.judge.model.x: unknown key",
                     "  datasets.b.v2.limit: Input should be greater than or equal to 1"], lines
