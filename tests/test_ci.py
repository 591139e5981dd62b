"""CI's own guard: under EVALFLEET_REQUIRE_ALL a skipped test fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_require_all_turns_a_skip_into_a_failure(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\n"
                                        "def test_needs_a_browser():\n    pytest.skip('no browser')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "require_all", "-p", "no:cacheprovider", str(tmp_path)]
    relaxed = subprocess.run(cmd, env={k: v for k, v in env.items() if k != "EVALFLEET_REQUIRE_ALL"},
                             capture_output=True, text=True, cwd=tmp_path)
    strict = subprocess.run(cmd, env={**env, "EVALFLEET_REQUIRE_ALL": "1"}, capture_output=True, text=True,
                            cwd=tmp_path)
    assert relaxed.returncode == 0 and "1 passed, 1 skipped" in relaxed.stdout, relaxed.stdout
    assert strict.returncode == 1 and "1 failed, 1 passed" in strict.stdout, strict.stdout
    assert "EVALFLEET_REQUIRE_ALL requires every test to run" in strict.stdout
