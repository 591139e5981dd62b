from pathlib import Path

import pytest

from evalfleet.config import load_config
from evalfleet.errors import UserError

GOOD = """
name: t
model: {path: /models/x, generation: {max_new_tokens: 8}}
datasets:
  - {name: a, path: data/a.jsonl}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "eval.yaml"
    p.write_text(text)
    return p


def test_valid_config_resolves_dataset_paths_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.datasets[0].path == str(tmp_path / "data" / "a.jsonl")
    assert cfg.model.generation.max_new_tokens == 8
    assert cfg.run_dir == tmp_path / "runs" / "t"  # output_dir too is relative to the config file


def test_every_problem_is_reported_with_its_key(tmp_path):
    text = GOOD.replace("max_new_tokens: 8", "max_new_tokens: 0, beams: 2") + "metrics: [bleu]\n"
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert str(tmp_path / "eval.yaml") in msg
    assert "model.generation.max_new_tokens: Input should be greater than or equal to 1" in msg
    assert "model.generation.beams: unknown key" in msg
    assert "metrics.0:" in msg


def test_missing_required_key_and_source(tmp_path):
    with pytest.raises(UserError, match="datasets: required key is missing"):
        load_config(write(tmp_path, "name: t\nmodel: {path: m}\n"))
    with pytest.raises(UserError, match="give exactly one of `model`"):
        load_config(write(tmp_path, "name: t\ndatasets: [{name: a, path: x.jsonl}]\n"))
    with pytest.raises(UserError, match="give exactly one of `path` or `builtin`"):
        load_config(write(tmp_path, "name: t\nmodel: {path: m}\ndatasets: [{name: a}]\n"))


def test_duplicate_dataset_names_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="repeated: a"):
        load_config(write(tmp_path, "name: t\nmodel: {path: m}\ndatasets: [{name: a, path: x}, {name: a, path: y}]\n"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [t\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_overrides_use_dotted_keys(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"model.batch_size": 3, "limit": 5, "gpus": [0, 1]})
    assert (cfg.model.batch_size, cfg.limit, cfg.gpus) == (3, 5, [0, 1])


def test_fingerprint_ignores_batch_size_but_not_generation(tmp_path):
    a = load_config(write(tmp_path, GOOD)).pipeline()[0]
    b = load_config(write(tmp_path, GOOD), {"model.batch_size": 32}).pipeline()[0]
    c = load_config(write(tmp_path, GOOD), {"model.generation.max_new_tokens": 9}).pipeline()[0]
    assert a.fingerprint(0) == b.fingerprint(0) != c.fingerprint(0) and a.fingerprint(0) != a.fingerprint(1)


def test_stages_are_validated(tmp_path):
    judge = "{name: j, kind: judge, model: {path: m}, prompt: 'Rate {prediction}'}"
    ok = load_config(write(tmp_path, f"name: t\ndatasets: [{{name: a, path: x}}]\nstages: [{{name: g, kind: generate, "
                                     f"model: {{path: m}}}}, {judge}]\n"))
    assert [s.kind for s in ok.pipeline()] == ["generate", "judge"]
    with pytest.raises(UserError, match="give exactly one of `model` \\(one generate stage\\) or `stages`"):
        load_config(write(tmp_path, f"name: t\nmodel: {{path: m}}\ndatasets: [{{name: a, path: x}}]\nstages: [{judge}]\n"))
    with pytest.raises(UserError, match="must start with one `generate` or `edit` stage"):
        load_config(write(tmp_path, f"name: t\ndatasets: [{{name: a, path: x}}]\nstages: [{judge}]\n"))
    with pytest.raises(UserError, match="a judge stage needs a `prompt` template"):
        load_config(write(tmp_path, "name: t\ndatasets: [{name: a, path: x}]\nstages: [{name: g, kind: generate, "
                                    "model: {path: m}}, {name: j, kind: judge, model: {path: m}}]\n"))


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[1] / "examples").glob("*.yaml")))
def test_examples_are_valid_configs(example):
    cfg = load_config(example)
    assert cfg.pipeline()[0].kind in ("generate", "edit")
