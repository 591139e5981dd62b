"""A stage's workers under another Python environment (`python:`), as a judge needing another transformers would
run: a real virtual environment, a real SmolLM2 run whose worker reports the interpreter it ran under."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import DEMO_QUESTIONS, make_config, quiet_console

import evalfleet
from evalfleet.errors import UserError
from evalfleet.run import run

DATASET = [{"name": "qa", "path": str(DEMO_QUESTIONS), "prompt": "{question} Answer briefly."}]


def make_env(folder: Path, *, system_site_packages: bool) -> Path:
    """A new virtual environment; with `system_site_packages` it sees this Python's packages. Run from a virtual
    environment (the README's `.venv`), a venv's "system" packages are the base Python's, without evalfleet or
    torch: a .pth file then adds this environment's site-packages (and runs their .pth files: editable installs)."""
    venv.EnvBuilder(system_site_packages=system_site_packages, with_pip=False).create(folder)
    python = folder / "bin" / "python"
    if system_site_packages and sys.prefix != sys.base_prefix:
        purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        (Path(purelib) / "outer-environment.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    return python


def test_a_stage_runs_its_workers_under_the_python_it_names(tmp_path, smollm2):
    """The environment sees this one's packages (system site-packages) but is another interpreter prefix: the
    worker reports it, and the answers equal those of a worker spawned by the driver's own Python."""
    python = make_env(tmp_path / "env", system_site_packages=True)
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert prefix != sys.prefix and Path(prefix) == tmp_path / "env"
    found = subprocess.run([python, "-c", "import evalfleet; print(evalfleet.__file__)"], capture_output=True,
                           text=True, check=False).stdout.strip()
    assert found == evalfleet.__file__, f"the environment imports evalfleet from {found or 'nowhere'}"
    answers = {}
    for name, env in (("own", None), ("env", str(python))):
        cfg = make_config(tmp_path / name, smollm2, DATASET, limit=4,
                          stages=[{"name": "generate", "kind": "generate", "python": env,
                                   "model": {"path": str(smollm2), "dtype": "float32", "batch_size": 4,
                                             "generation": {"max_new_tokens": 8}}}], model=None)
        run(cfg, console=quiet_console())
        summary = json.loads((cfg.run_dir / "summary.json").read_text())
        workers = summary["performance"]["generate"]["workers"]
        assert [w["python"] for w in workers.values()] == [env or sys.executable]
        answers[name] = [json.loads(line)["prediction"] for line in (cfg.run_dir / "predictions" / "qa.jsonl").open()]
    assert answers["env"] == answers["own"] and all(answers["env"])


def test_a_python_without_evalfleet_is_refused_with_the_reason(tmp_path, smollm2):
    python = make_env(tmp_path / "bare", system_site_packages=False)
    cfg = make_config(tmp_path / "run", smollm2, DATASET, limit=2, python=str(python))
    with pytest.raises(UserError, match=r"the worker could not start \(it exited with code 1\); is evalfleet "
                                        "installed in that environment"):
        run(cfg, console=quiet_console())
    with pytest.raises(UserError, match="is not an executable Python interpreter"):
        run(make_config(tmp_path / "run2", smollm2, DATASET, limit=2, python=str(tmp_path / "nope")),
            console=quiet_console())
