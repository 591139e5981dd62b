"""What a worker imports before its model (evalfleet/engine/preload.py): torch and transformers' model loading, with
transformers' candidate generator imported without scikit-learn (transformers 5.17 imports it at module level, for
assisted decoding only: 2-4 s of a worker's start on the GPU hosts)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import importlib.util, json, sys
import evalfleet.engine.preload as preload
import transformers, transformers.utils
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformers.generation.utils  # GenerationMixin: what `generate` and evalfleet's engines build on
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
out = model.generate(**tok("The capital of France is", return_tensors="pt"), max_new_tokens=3, do_sample=False)
print(json.dumps({"version": transformers.__version__, "skipped_imported": preload.SKIPPED in sys.modules,
                  "sklearn_imported": "sklearn" in sys.modules,
                  "check_restored": transformers.utils.is_sklearn_available() == (importlib.util.find_spec("sklearn") is not None),
                  "new_tokens": out.shape[1] - len(tok("The capital of France is")["input_ids"])}))
"""


def test_a_worker_imports_transformers_generation_without_scikit_learn(smollm2):
    out = subprocess.run([sys.executable, "-c", CHILD, str(smollm2)], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # (the same check ran on the H200 under transformers 5.17, where the import is not lazy: RESULTS.md, session 17)
    assert seen["skipped_imported"] and not seen["sklearn_imported"], seen
    assert seen["check_restored"], seen  # transformers' own check answers truly again afterwards
    assert seen["new_tokens"] == 3, seen  # and a model still loads and generates
