"""Bytecode of the libraries a replica imports, kept in evalfleet's cache folder where Python would otherwise compile
their sources again in every process.

Some images ship site-packages without `__pycache__` and set `PYTHONDONTWRITEBYTECODE=1` (a common Dockerfile line;
the H200 hosts of bench/ are such). There every process compiles torch's and transformers' ~3,000 modules from
source as it imports them: on the CPU machine `import torch, transformers.modeling_utils` takes 24.8-26.5 s so,
against 8.6-8.9 s from this cache (`bench/probes/imports.py`, bench/RESULTS.md); a replica's start pays it first.

Importing this module turns the cache on for the process, when torch's package folder has no `__pycache__` (so
Python would compile it) and no prefix is set already: `sys.pycache_prefix` points at `<cache>/bytecode` and writing
bytecode is allowed there (only there: with a prefix, Python writes nothing beside the sources). The same settings
go into the environment, for the processes this one starts. The CLI and the fork server of the workers import it
first. `EVALFLEET_BYTECODE_CACHE=0` turns it off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from evalfleet.assets import default_cache_dir

PROBE = "torch"
"""The library whose bytecode tells whether the installed libraries have theirs."""


def compiles_every_time(package: str) -> bool:
    """Whether `package` (installed, not imported) has no `__pycache__` beside its `__init__.py`."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return not any((Path(p) / "__pycache__").is_dir() for p in spec.submodule_search_locations)


def use_bytecode_cache(probe: str = PROBE) -> Path | None:
    """Point this process's (and its children's) bytecode at evalfleet's cache folder if `probe` would otherwise be
    compiled from source; the folder, or None where nothing changed."""
    if os.environ.get("EVALFLEET_BYTECODE_CACHE", "1") == "0" or sys.pycache_prefix or not compiles_every_time(probe):
        return None
    folder = default_cache_dir() / "bytecode"
    sys.pycache_prefix, sys.dont_write_bytecode = str(folder), False
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return folder


use_bytecode_cache()
