"""The bytecode cache (evalfleet/bytecode.py): where a library's sources would be compiled in every process, the first
process writes their bytecode into evalfleet's cache folder and later ones read it from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, os, subprocess, sys
wanted = os.environ.get("EVALFLEET_BYTECODE_CACHE", "1")
os.environ["EVALFLEET_BYTECODE_CACHE"] = "0"  # its import probes torch, whose bytecode this test does not control
import evalfleet.bytecode as b
os.environ["EVALFLEET_BYTECODE_CACHE"] = wanted
folder = b.use_bytecode_cache(sys.argv[1])
import slowlib.deep
from importlib.util import cache_from_source
grandchild = subprocess.run([sys.executable, "-c", "import sys; print(sys.pycache_prefix, sys.dont_write_bytecode)"],
                            capture_output=True, text=True, check=True).stdout.split()
print(json.dumps({"folder": str(folder) if folder else None, "cached": cache_from_source(slowlib.deep.__file__),
                  "grandchild": grandchild}))
"""


def _library(root: Path) -> Path:
    """An installed package without `__pycache__`, as in an image built with PYTHONDONTWRITEBYTECODE=1."""
    pkg = root / "site" / "slowlib"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "deep.py").write_text("VALUE = 42\n" + "def f():\n    return [i * i for i in range(10)]\n" * 50)
    return root / "site"


def _child(tmp_path: Path, site: Path, probe: str, **env: str) -> dict:
    run_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "PYTHONDONTWRITEBYTECODE": "1",
               "EVALFLEET_CACHE": str(tmp_path / "cache"), **env}
    run_env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", CHILD, probe], env=run_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_library_without_bytecode_is_compiled_once_into_the_cache_folder(tmp_path):
    site = _library(tmp_path)
    first = _child(tmp_path, site, "slowlib")
    assert first["folder"] == str(tmp_path / "cache" / "bytecode")
    cached = Path(first["cached"])
    assert cached.is_file() and cached.is_relative_to(tmp_path / "cache" / "bytecode")
    assert not (site / "slowlib" / "__pycache__").exists()  # nothing written beside the sources
    assert first["grandchild"] == [first["folder"], "False"]  # the processes it starts use the same cache
    written = cached.stat().st_mtime_ns
    second = _child(tmp_path, site, "slowlib")
    assert second["cached"] == first["cached"] and cached.stat().st_mtime_ns == written  # read, not compiled again


def test_nothing_changes_where_bytecode_is_kept_or_the_cache_is_turned_off(tmp_path):
    site = _library(tmp_path)
    assert _child(tmp_path, site, "slowlib", EVALFLEET_BYTECODE_CACHE="0")["folder"] is None
    (site / "slowlib" / "__pycache__").mkdir()  # bytecode beside the sources: Python reads it there
    kept = _child(tmp_path, site, "slowlib")
    assert kept["folder"] is None and kept["grandchild"] == ["None", "True"]
    assert not (tmp_path / "cache" / "bytecode").exists()
