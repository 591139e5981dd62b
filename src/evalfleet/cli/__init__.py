"""Command line: `evalfleet init | validate | run | plan | serve | status | report | show | compare | merge | slurm |
demo`.

`common` holds the app and what the commands share; each module registers its commands on import."""

import evalfleet.bytecode  # noqa: F401  # isort: skip  # first: the imports below may compile (evalfleet/bytecode.py)
# Each registers its commands, listed by `--help` in this order.
from evalfleet.cli import setup  # noqa: F401  # isort: skip
from evalfleet.cli import runs  # noqa: F401  # isort: skip
from evalfleet.cli import results  # noqa: F401  # isort: skip
from evalfleet.cli import cluster  # noqa: F401  # isort: skip
from evalfleet.cli.common import app, console
from evalfleet.config import OVERRIDE_OPTIONS

__all__ = ["OVERRIDE_OPTIONS", "app", "console", "main"]


def main() -> None:
    app()
