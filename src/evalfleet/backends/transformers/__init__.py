"""The in-process engine for transformers models: `backend.py` (the Backend: load, prepare, stream), `engine.py`
(continuous batching over decode slots), `stream.py` (the engine as a worker's Stream), `slot_cache.py` (its KV
cache and attention), `graphs.py` (its decode step captured as CUDA graphs at several widths), `sampling.py` (the
next token, in the captured step), `vision.py` (a VLM's requests: images and 3-D rotary positions),
`processors.py` (processors without torchvision) and `kernels/` (fused elementwise kernels, attention
implementations, MoE expert layers)."""
