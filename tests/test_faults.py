"""Issue 16's faults, each injected from outside into real `evalfleet` processes (tests/fault_scenarios.py):
SIGTERM, Ctrl-C after `&`, Slurm's early SIGUSR1 and requeue, `--fresh` beside a live driver, refused runs,
status with two drivers, a hung worker, bad files, a full disk, a failing filesystem, workers that keep dying.
`bench/chaos.py` runs these and the faults that already held, as a table."""

from __future__ import annotations

import os

import pytest
from fault_scenarios import FIXES, bad_files, disk_full, failing_filesystem, read_only_run_folder

NEEDS_ROOT = {bad_files, disk_full, failing_filesystem, read_only_run_folder}
"""They mount a small filesystem in a private mount namespace (CI runs as root; EVALFLEET_REQUIRE_ALL makes a
skip there a failure)."""


@pytest.mark.parametrize("scenario", FIXES, ids=lambda f: f.__name__)
def test_fault(scenario, tmp_path, smollm2):
    if scenario in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip("needs root: mounts a filesystem in a private mount namespace")
    outcome = scenario(tmp_path, smollm2)
    assert outcome.lost in (None, 0), outcome
