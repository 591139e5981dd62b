"""Where a static-engine batch spends its time, through the backend as `evalfleet run` uses it
(Qwen2.5-7B-shaped random weights saved once, B prompts of T tokens):

  1. wall time of prefill (+ copy into the static cache) alone, and of prefill + 63 decode steps, with
     CUDA graphs: the decode step's cost is their difference / 63;
  2. the same without graphs (eager steps);
  3. torch.profiler kernel tables (GPU time) of a prefill and of eager decode steps: which kernels cost what;
  4. 1 again with fused RMSNorm and SiLU-gate kernels (`backends/transformers/kernels/fused.py`).

    PYTHONPATH=src python bench/decode_profile.py [--batch 512] [--prompt 256] [--work /tmp/bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers.models.qwen2.modeling_qwen2 as qwen2

sys.path.insert(0, str(Path(__file__).parent))
from models import chat_prompts, qwen25_text

from evalfleet.backends import Request
from evalfleet.backends.static_decode import StaticDecoder
from evalfleet.backends.transformers.backend import TransformersBackend
from evalfleet.config import ModelConfig


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def kernel_table(fn, title: str, rows: int = 22) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"\n== {title}: {total:.1f} ms of GPU kernels ==")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        ms = e.self_device_time_total / 1e3
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}% x{e.count:<6d} {e.key[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens, chat template included")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    args = ap.parse_args()
    path = qwen25_text(args.work, "7b")
    backend = TransformersBackend(ModelConfig(path=str(path), generation={"max_new_tokens": 64}), n_gpus=1)
    backend.load()
    fused_forwards = {m: m.__dict__.pop("forward") for m in backend.model.modules() if "forward" in m.__dict__}
    fused_rotary = qwen2.apply_rotary_pos_emb  # until the fused run: transformers' own
    qwen2.apply_rotary_pos_emb = getattr(fused_rotary, "original", fused_rotary)
    requests = [Request(p, [], 0, f"p/{i}") for i, p in enumerate(chat_prompts(args.work, args.batch, args.prompt))]
    inputs = backend.prepare(requests).inputs.to("cuda")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    b, t = ids.shape
    print(f"batch {b}, padded prompt length {t}, attention: {backend.model.config._attn_implementation}")

    for graphs, fused in ((True, False), (False, False), (True, True)):
        if fused:  # the backend fused them; the runs before used transformers' own forwards
            for m, forward in fused_forwards.items():
                m.forward = forward
            qwen2.apply_rotary_pos_emb = fused_rotary
            print(f"fused {len(fused_forwards)} modules (RMSNorm, MLP) and the rotary embedding")
        dec = StaticDecoder(backend.model, cuda_graphs=graphs)
        times: dict[int, float] = {}
        for new in (64, 1, 64, 1):  # each measured twice; the second is reported
            times[new] = timed(lambda n=new: dec.generate(ids, mask, max_new_tokens=n, eos_ids=set(), pad_id=0))
        step = (times[64] - times[1]) / 63
        print(f"fused={fused} graphs={graphs} (captured: {dec.graph is not None}): prefill+copy {times[1] * 1e3:.0f} ms, "
              f"63 decode steps {(times[64] - times[1]) * 1e3:.0f} ms = {step * 1e3:.1f} ms/step; "
              f"whole {times[64]:.2f} s = {b * 64 / times[64]:,.0f} tok/s", flush=True)
        if not graphs or fused:
            kernel_table(lambda d=dec: d.generate(ids, mask, max_new_tokens=1, eos_ids=set(), pad_id=0),
                         "prefill + copy into the static cache")
            kernel_table(lambda d=dec: d.generate(ids, mask, max_new_tokens=9, eos_ids=set(), pad_id=0),
                         "prefill + 8 eager decode steps (subtract the table above)")


if __name__ == "__main__":
    main()
