"""What a worker imports before it is given a model, once, in the fork server (`launcher.worker_context`) or in a
worker started without one: torch and transformers' model loading, 5-14 s on the GPU hosts.

transformers 5.17 (the H200 hosts') imports scikit-learn at module level in `generation.candidate_generator`, for
assisted decoding's confidence threshold, and with it scipy and pandas: 2-4 s of every worker's start there, on
the way to `from_pretrained` (bench/RESULTS.md, sessions 14 and 17; later versions import it only when used).
evalfleet never decodes assisted, so that module is imported here while transformers' `is_sklearn_available`
answers False: scikit-learn is not imported.

Afterwards the module is left as transformers wrote it, so that a process that did decode assisted would behave
as stock: the module copied the stand-in at its `from ..utils import is_sklearn_available`, so its own name is
set back to the original function too (5.24+ read it at every assisted step); and where scikit-learn is installed,
5.17's module-level `roc_curve`, which the stand-in kept from being imported, is given as a function that imports
scikit-learn's when first called (5.24+ import it inside the method and never read this one).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

SKIPPED = "transformers.generation.candidate_generator"
"""The module imported without scikit-learn."""
CHECK = "is_sklearn_available"


def _no_sklearn() -> bool:
    """transformers' check while the module imports."""
    return False


def roc_curve(*args: Any, **kwargs: Any) -> Any:
    """scikit-learn's `roc_curve`, imported at the first call (what transformers 5.17 imports at module level)."""
    from sklearn.metrics import roc_curve as real

    return real(*args, **kwargs)


def import_model_libraries() -> None:
    """Import torch and transformers' model loading (a no-op once done)."""
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    if SKIPPED in sys.modules or "sklearn" in sys.modules:
        return  # imported already (by the user's code, or scikit-learn with it): nothing left to save
    from transformers import utils

    available = getattr(utils, CHECK, None)
    if available is None or importlib.util.find_spec(SKIPPED) is None:
        return  # a transformers without that check or module: nothing to skip
    before = set(sys.modules)
    setattr(utils, CHECK, _no_sklearn)  # read by the module as it is imported
    try:
        importlib.import_module(SKIPPED)
    finally:
        setattr(utils, CHECK, available)
        for name in set(sys.modules) - before:  # every module imported meanwhile that copied the stand-in
            namespace = getattr(sys.modules[name], "__dict__", {})  # (not getattr of the name: transformers' lazy
            if namespace.get(CHECK) is _no_sklearn:  # modules import on a miss)
                namespace[CHECK] = available
    module = vars(sys.modules[SKIPPED])
    if "roc_curve" not in module and available():
        module["roc_curve"] = roc_curve


import_model_libraries()  # the module is what the fork server preloads
