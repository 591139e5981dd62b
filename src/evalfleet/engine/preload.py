"""What a worker imports before it is given a model, once, in the fork server (`launcher.worker_context`) or in a
worker started without one: torch and transformers' model loading, 5-14 s on the GPU hosts.

transformers 5.17 (the H200 hosts') imports scikit-learn at module level in `generation.candidate_generator`, for
assisted decoding's confidence threshold, and with it scipy and pandas: 2-4 s of every worker's start there, on
the way to `from_pretrained` (bench/RESULTS.md, sessions 14 and 17; later versions import it only when used).
evalfleet never decodes assisted, so that module is imported here while transformers' `is_sklearn_available`
answers False: scikit-learn is not imported. (In a worker, assisted decoding with a confidence threshold would
find no `roc_curve`; nothing in evalfleet asks for it.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

SKIPPED = "transformers.generation.candidate_generator"
"""The module imported without scikit-learn."""


def import_model_libraries() -> None:
    """Import torch and transformers' model loading (a no-op once done)."""
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    if SKIPPED in sys.modules or "sklearn" in sys.modules:
        return  # imported already (by the user's code, or scikit-learn with it): nothing left to save
    from transformers import utils

    available = getattr(utils, "is_sklearn_available", None)
    if available is None or importlib.util.find_spec(SKIPPED) is None:
        return  # a transformers without that check or module: nothing to skip
    utils.is_sklearn_available = lambda: False  # read by the module as it is imported
    try:
        importlib.import_module(SKIPPED)
    finally:
        utils.is_sklearn_available = available


import_model_libraries()  # the module is what the fork server preloads
