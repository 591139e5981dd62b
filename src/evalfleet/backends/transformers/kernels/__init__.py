"""Kernels the engine switches into a loaded transformers model: `compiled.py` (fused RMSNorm, SiLU-gate and rotary
kernels, compiled ahead and cached), `fused.py` (patching them in), `attention.py` (attention implementations for
prompts, decode steps and vision towers), `experts.py` (MoE expert layers with less glue)."""
