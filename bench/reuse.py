"""Shared prefixes and pictures asked many questions (issue 37, item 3): each workload through `evalfleet run` at the
defaults with `model.share_prefixes` off and on, alternating, on one machine.

Workloads (Qwen2.5-VL-7B-shaped for pictures, Qwen2.5-7B-shaped for text; random weights without EOS, so every
answer has max_new_tokens):
  slake     96 pictures x 11 questions (1,056 samples) -> 32 tokens: SLAKE's English test split's shape
  pathvqa   150 pictures x 7 questions (1,050) -> 32: PathVQA's
  vqarad    225 pictures x 2 questions (450) -> 32: VQA-RAD's
  distinct  451 pictures x 1 question -> 32: nothing to share (must be no slower)
  text      1,024 questions behind one ~1,000-token system prompt of worked examples -> 16
Pictures are 448x448 (256 image tokens), or with `--varied` of sizes from 256 to 1,024 px.
Per run: the command's seconds, the generation phase, samples a second, the GPU's mean utilisation over the
generation phase (nvidia-smi), and from the summary's performance what the prefills did (images encoded, prompt
tokens shared, prefill seconds).

    python bench/reuse.py [--workloads slake,pathvqa,vqarad,distinct,text] [--rounds 1] [--varied]
        [--shape 7b|tiny] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from models import SUBJECTS, images, prompts, qwen25_text, qwen25_vl
from throughput import evalfleet

SHAPES = {"slake": (96, 11), "pathvqa": (150, 7), "vqarad": (225, 2), "distinct": (451, 1)}
QUESTIONS = [f"{ask} {subject}?" for subject in SUBJECTS
             for ask in ("What colour is", "Where in the picture is", "How large is")][:11]


def pictures(work: Path, name: str, varied: bool, shape: str, scale: float) -> tuple[Path, Path, int]:
    """(model, data, new tokens): `name`'s pictures, each asked its questions, the rows in a shuffled order."""
    n, per = SHAPES[name]
    n = max(1, round(n * scale))
    paths = images(work, n)
    if varied:  # the same pictures at sizes from 256 to 1,024 px
        from PIL import Image

        folder = work / "varied"
        folder.mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(list(paths)):
            size = 256 + (i * 97) % 769
            paths[i] = folder / f"{i}-{size}.png"
            if not paths[i].exists():
                Image.open(src).resize((size, size)).save(paths[i])
    rows = [{"question": q, "image": str(p), "answer": "yes"} for p in paths for q in QUESTIONS[:per]]
    random.Random(0).shuffle(rows)  # a dataset's order is not grouped by picture
    data = work / f"reuse-{name}{'-varied' if varied else ''}.jsonl"
    data.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    return qwen25_vl(work, shape), data, 32


def text(work: Path, shape: str, scale: float) -> tuple[Path, Path, int, str]:
    """(model, data, new tokens, system prompt): 1,024 questions of ~40 tokens behind one ~1,000-token prompt."""
    shots = "\n\n".join(f"Example {k + 1}.\n{p}\nAnswer: yes" for k, p in enumerate(prompts(work, 5, 190)))
    data = work / "reuse-text.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": p, "answer": "yes"}) + "\n"
                            for i, p in enumerate(prompts(work, max(1, round(1024 * scale)), 40))))
    return qwen25_text(work, shape), data, 16, shots


def run(work: Path, name: str, built: tuple, share: bool) -> dict:
    """One `evalfleet run`; on a GPU also its mean utilisation over the generation phase (nvidia-smi every 0.2 s)."""
    model, data, new, *system = built
    options = ["--set", f"model.share_prefixes={str(share).lower()}"]
    if system:  # the shared system prompt, as a YAML (JSON) string
        options += ["--set", f"model.system_prompt={json.dumps(system[0])}"]
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                                "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    r = evalfleet(work, f"{name}-{'on' if share else 'off'}", model, data, new, *options)
    if smi is not None:
        smi.terminate()
        begin, end = t0 + r["start_s"], t0 + r["start_s"] + r["generate_s"]
        samples = [line.split(", ") for line in smi.communicate()[0].splitlines() if ", " in line]
        busy = [float(u) for stamp, u in samples
                if begin <= datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp() <= end]
        r["gpu_busy"] = round(sum(busy) / len(busy), 1) if busy else None
    return r


def ratio(off: float | None, on: float | None) -> str:
    """How many times faster with sharing on."""
    return f"{off / on:.2f}" if off and on else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="slake,pathvqa,vqarad,distinct,text")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--varied", action="store_true", help="pictures of 256-1,024 px instead of 448")
    ap.add_argument("--shape", default="7b", choices=["7b", "tiny"], help="tiny: a dry run of the plumbing on a CPU")
    ap.add_argument("--scale", type=float, default=1.0, help="pictures (text questions) as a fraction of the above")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for name in args.workloads.split(","):
        built = (text(args.work, args.shape, args.scale) if name == "text"
                 else pictures(args.work, name, args.varied, args.shape, args.scale))
        for k in range(args.rounds):
            pair = {}
            for share in ((False, True) if k % 2 == 0 else (True, False)):
                r = run(args.work, name, built, share)
                pair["on" if share else "off"] = r
                p = r.get("prefill") or {}
                print(f"{name} {'on ' if share else 'off'}: command {r['command_s']:.1f} s, generation "
                      f"{r['generate_s']:.2f} s, GPU busy {r.get('gpu_busy', '-')} %, "
                      f"{r['samples_per_s']:.1f} samples/s, images encoded "
                      f"{p.get('images_encoded', '-')}/{p.get('images', '-')}, tokens shared "
                      f"{p.get('shared_tokens', 0):.0f}/{p.get('prompt_tokens', 0):.0f}, prefill "
                      f"{p.get('prefill_s', 0):.2f} s, errors {r['errors']}", flush=True)
            results.setdefault(name, []).append(pair)
    print(f"\n{'workload':9} {'round':>5} {'command off/on s':>17} {'x':>6} {'generation off/on s':>20} {'x':>6} "
          f"{'prefill off/on s':>17} {'x':>6} {'images encoded on':>18}")
    for name, pairs in results.items():
        for k, pair in enumerate(pairs):
            off, on = pair["off"], pair["on"]
            po, pn = off.get("prefill") or {}, on.get("prefill") or {}
            print(f"{name:9} {k:5} {off['command_s']:8.1f}/{on['command_s']:<8.1f} "
                  f"{ratio(off['command_s'], on['command_s']):>6} "
                  f"{off['generate_s']:9.2f}/{on['generate_s']:<10.2f} {ratio(off['generate_s'], on['generate_s']):>6} "
                  f"{po.get('prefill_s', 0):8.2f}/{pn.get('prefill_s', 0):<8.2f} "
                  f"{ratio(po.get('prefill_s'), pn.get('prefill_s')):>6} "
                  f"{pn.get('images_encoded', '-')}/{pn.get('images', '-')}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "reuse.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
