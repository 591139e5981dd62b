"""Kept for one release: `from evalfleet.runner import run` still works; the recipe lives in `evalfleet.run`."""

from evalfleet.run import run

__all__ = ["run"]
