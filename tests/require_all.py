"""A pytest plugin: with EVALFLEET_REQUIRE_ALL set (CI sets it), a test that would be skipped, for a missing optional
dependency or anything else, fails instead; `require()` does the same for a whole test file's import."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

REQUIRE_ALL = bool(os.environ.get("EVALFLEET_REQUIRE_ALL"))
"""Set in CI: a test that would be skipped for a missing optional dependency fails instead."""


def require(module: str, install: str) -> Any:
    """Import `module` for a test file; skip the file where it is missing, fail where EVALFLEET_REQUIRE_ALL is set."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if REQUIRE_ALL:
            raise RuntimeError(f"{module} is required (EVALFLEET_REQUIRE_ALL is set): {install}") from err
        pytest.skip(f"{module} is not installed ({install})", allow_module_level=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Under EVALFLEET_REQUIRE_ALL every skip is a failure: nothing passes CI by not running."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but EVALFLEET_REQUIRE_ALL requires every test to run: {report.longrepr}"
