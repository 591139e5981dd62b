"""The README's scripts as a newcomer runs them (issue 38, items 5, 6 and 8): `scripts/test` with named files installs
what they need only, `scripts/demo` does not count its install as the driver's start, `scripts/tiny-vlm` builds a VLM
that transformers loads. pip is the one stand-in: a Python wrapper that records `-m pip` calls (and waits, as an
install does) instead of installing into the test environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def python_recording_pip(tmp_path: Path, pip_seconds: float = 0.0) -> tuple[Path, Path]:
    """A `PYTHON` for the scripts: this interpreter, except that `-m pip ...` is written to a log (after
    `pip_seconds`) and `-m pytest ...` too, neither run. Returns (the wrapper, its log)."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/usr/bin/env bash
if [ "${{1:-}}" = "-m" ] && {{ [ "${{2:-}}" = "pip" ] || [ "${{2:-}}" = "pytest" ]; }}; then
  echo "$*" >> {log}
  [ "$2" = "pip" ] && sleep {pip_seconds}
  exit 0
fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper, log


def test_scripts_test_with_named_files_skips_the_llama_cpp_build_unless_they_need_it(tmp_path):
    wrapper, log = python_recording_pip(tmp_path)
    env = {**os.environ, "PYTHON": str(wrapper)}
    for files, extra in ((["tests/test_config.py"], ".[test-core]"), (["tests/test_servers.py::test_x"], ".[test]")):
        log.unlink(missing_ok=True)
        proc = subprocess.run(["bash", "scripts/test", *files, "-x"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        calls = log.read_text().splitlines()
        assert f"-m pip install -q -e {extra}" in calls, calls
        assert calls[-1].startswith("-m pytest ") and calls[-1].endswith(f"{' '.join(files)} -x"), calls
        assert "chromium" not in proc.stdout + proc.stderr


def test_the_demo_does_not_count_its_install_as_the_drivers_start(tmp_path, smollm2):
    wrapper, _ = python_recording_pip(tmp_path, pip_seconds=8)  # setup calls pip twice: 16 s of "install"
    proc = subprocess.run(["bash", "scripts/demo", "--limit", "1", "--workers", "1", "--out", str(tmp_path / "runs")],
                          cwd=ROOT, env={**os.environ, "PYTHON": str(wrapper)}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    startup = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())["startup"]
    assert startup["driver start"] < 8, startup


def test_scripts_tiny_vlm_builds_a_vlm_transformers_loads(tmp_path):
    proc = subprocess.run(["bash", "scripts/tiny-vlm", str(tmp_path / "vlm"), "qwen2_5_vl"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tmp_path / "vlm")
    assert config.model_type == "qwen2_5_vl" and config.vision_config is not None
    assert "<|image_pad|>" in AutoTokenizer.from_pretrained(tmp_path / "vlm").get_vocab()
    bad = subprocess.run(["bash", "scripts/tiny-vlm", str(tmp_path / "x"), "llama"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "ARCH must be one of" in bad.stderr


def test_the_readmes_virtual_environment_is_not_seen_by_git():
    proc = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT, check=False)
    assert proc.returncode == 0, ".venv/ (the README's virtual environment) is not in .gitignore"
