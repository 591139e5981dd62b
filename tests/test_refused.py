"""A refused run leaves nothing behind: GPUs that are not there, a model that fails to load and a run whose only
dataset cannot be read make no run folder, store or judge cache (which `status` would list), and leave an
existing run folder byte for byte as it was (issue 38, item 4). Real CLI, real SmolLM2, real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import DEMO_QUESTIONS, cli


def write_config(tmp_path: Path, model: Path, data: Path, name: str = "t") -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "name": name, "output_dir": "runs", "workers": 1, "limit": 2,
        "model": {"path": str(model), "dtype": "float32", "batch_size": 2, "generation": {"max_new_tokens": 4}},
        "datasets": [{"name": "qa", "path": str(data)}], "metrics": ["exact_match"]}))
    return config


def unloadable_model(tmp_path: Path) -> Path:
    """A folder that passes the path check but that transformers cannot load: a config.json without model_type."""
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 8}))
    return model


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_new_run_makes_no_run_folder(tmp_path, smollm2):
    cases = {
        "--gpus 3 on a machine without GPUs": (write_config(tmp_path, smollm2, DEMO_QUESTIONS, "gpus"), ["--gpus", "3"],
                                               2, "--gpus 3: only 0 GPU(s) are visible"),
        "a model that fails to load": (write_config(tmp_path, unloadable_model(tmp_path), DEMO_QUESTIONS, "model"), [],
                                       2, "could not load the model"),
        "its only dataset cannot be read": (write_config(tmp_path, smollm2, tmp_path / "gone.jsonl", "data"), [],
                                            1, "no dataset could be read"),
    }
    outputs = {}
    for what, (config, args, code, says) in cases.items():
        rc, out = cli("run", str(config), *args)
        outputs[what] = out
        assert rc == code and says in out and "Traceback" not in out, f"{what}: exit {rc}:\n{out}"
        left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*")) \
            if (tmp_path / "runs").exists() else []
        assert not (tmp_path / "runs").exists(), f"{what}: left {left or 'an empty runs/'}"
    # The unloadable model's traceback was in the run's log: that log is kept, outside the removed folder.
    out = outputs["a model that fails to load"]
    kept = Path(out.split("its log is ", 1)[1].split()[0])
    assert "Unrecognized model" in kept.read_text(), out
    kept.unlink()


def test_a_refused_run_leaves_an_existing_run_folder_byte_identical(tmp_path, smollm2):
    config = write_config(tmp_path, smollm2, DEMO_QUESTIONS)
    rc, out = cli("run", str(config))
    assert rc == 0, out
    before = files(tmp_path / "runs")
    assert "t/store.db" in before and "t/run.log" in before
    rc, out = cli("run", str(config), "--gpus", "3")
    assert rc == 2 and "only 0 GPU(s) are visible" in out, out
    assert files(tmp_path / "runs") == before, "--gpus 3 changed the run folder"
    gone = write_config(tmp_path, smollm2, tmp_path / "gone.jsonl")  # the same run, its data file gone
    rc, out = cli("run", str(gone))
    assert rc == 1 and "no dataset could be read" in out, out
    assert files(tmp_path / "runs") == before, "a run without readable data changed the run folder"


def test_an_existing_run_whose_model_no_longer_loads_is_left_byte_identical(tmp_path, smollm2):
    """The run's model breaks between two runs (a checkpoint overwritten): the second run's worker cannot load it,
    nothing is stored, and the run folder is put back byte for byte (`store/snapshot.py`)."""
    model = tmp_path / "model"
    model.mkdir()
    for f in smollm2.iterdir():
        (model / f.name).symlink_to(f)
    config = write_config(tmp_path, model, DEMO_QUESTIONS)
    # The first run in a process of its own, as a user's would be (a driver's workers are known by its pid).
    first = subprocess.run([sys.executable, "-m", "evalfleet.cli", "run", str(config), "--limit", "2"],
                           capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    before = files(tmp_path / "runs")
    (model / "config.json").unlink()
    (model / "config.json").write_text('{"architectures": ["Broken"]}')
    rc, out = cli("run", str(config), "--limit", "4")
    assert rc == 2 and "could not load the model" in out and "is as it was before this run" in out, out
    assert files(tmp_path / "runs") == before, "the failed resume changed the run folder"
    kept = Path(" ".join(out.split()).split("this run's log is ", 1)[1].split()[0])
    assert "could not load the model" in kept.read_text()
    kept.unlink()
