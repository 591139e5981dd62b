"""The same workloads through `evalfleet run` with two source trees on one machine, alternating (issue 36, item 5):
the code before a change (`--before DIR`: a folder holding that commit's src/) and after it (this checkout's).

Workloads, each at the defaults (batch size `auto`, engine `auto`), random weights without EOS unless said:
  text    512 x (256 -> 64), Qwen2.5-7B-shaped
  mixed   1,024 prompts of log-normal length (median ~150, 20 to 2,000 tokens) -> 64, Qwen2.5-7B-shaped: a dataset
          of uneven prompts, where a cache sized from the first batch had to grow (issue 36, item 3)
  vlm     451 x (448x448 image + question -> 32), Qwen2.5-VL-7B-shaped
  moe     512 x (256 -> 64), Qwen3-MoE with Qwen3-30B-A3B's layer shape (hidden 2048, 128 experts, 8 per token),
          12 of its 48 layers
First one warm-up run per model with the after tree (`--limit 64`, not counted), so that no counted run compiles
the fused kernels or writes the bytecode cache. Then for each workload, in the order given (a workload may be named
twice), the two trees one after the other, the order alternating (before first, then after first, ...).
Per run: the command's seconds, command start to the replica ready, the generation phase, generated tokens a
second over the generation phase (samples a second for the VLM).

    python bench/before_after.py --before .before [--workloads text,mixed,vlm,moe,text] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from models import _save_random, qwen25_text, tiny_vlm
from throughput import dataset, evalfleet

HERE = Path(__file__).parents[1]


def mixed(work: Path, n: int, shape: str) -> tuple[Path, Path, int]:
    """Qwen2.5-7B-shaped; `n` prompts of log-normal length in tokens of the tiny tokenizer (median ~150, 20-2,000)."""
    import random

    from transformers import AutoTokenizer

    model = qwen25_text(work, shape)
    data = work / f"mixed-{n}.jsonl"
    if not data.exists():
        tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
        words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2]
        rng = random.Random(0)
        rows = []
        for i in range(n):
            k = min(2000, max(20, int(rng.lognormvariate(5.0, 0.9))))
            text = " ".join(rng.choice(words) for _ in range(k))
            rows.append(json.dumps({"id": i, "question": tok.decode(tok(text)["input_ids"][:k]), "answer": "yes"}))
        data.write_text("\n".join(rows) + "\n")
    return model, data, 64


def moe(work: Path, n: int, shape: str) -> tuple[Path, Path, int]:
    """Qwen3-MoE with Qwen3-30B-A3B's layers (12 of them), and the text workload's prompts."""
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    folder = work / f"qwen3-moe-30b-a3b-12l-{shape}"
    if not (folder / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(tiny_vlm(work))
        hidden, layers, heads, experts = (2048, 12, 32, 128) if shape == "7b" else (64, 2, 2, 8)
        cfg = Qwen3MoeConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=min(4, heads), head_dim=128,
                             num_experts=experts, num_experts_per_tok=8 if experts > 8 else 2,
                             moe_intermediate_size=768 if shape == "7b" else 32, decoder_sparse_step=1,
                             vocab_size=151936,
                             tie_word_embeddings=False, max_position_embeddings=32768, rope_theta=1e6,
                             eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id)
        _save_random(Qwen3MoeForCausalLM, cfg, tok, folder)
    _, data, new = dataset(work, "text", shape, n)
    return folder, data, new


WORKLOADS = {"text": lambda w, s: dataset(w, "text", s, 512), "mixed": lambda w, s: mixed(w, 1024, s),
             "vlm": lambda w, s: dataset(w, "vlm", s, 451), "moe": lambda w, s: moe(w, 512, s)}


def run(tree: Path, work: Path, name: str, model: Path, data: Path, new: int, *options: str) -> dict:
    """`evalfleet run` with `tree`'s src/ first on the path (its workers inherit it)."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), *filter(None, [BASE_PATH])])
    return evalfleet(work, name, model, data, new, *options)


BASE_PATH = os.environ.get("PYTHONPATH", "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True, help="a folder holding the earlier commit's src/")
    ap.add_argument("--workloads", default="text,mixed,vlm,moe,text")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--shape", default="7b", choices=["7b", "tiny"], help="tiny: a dry run of the plumbing on a CPU")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    trees = {"before": args.before.resolve(), "after": HERE}
    names = args.workloads.split(",")
    built = {w: WORKLOADS[w](args.work, args.shape) for w in dict.fromkeys(names)}
    for w, (model, data, new) in built.items():
        if w != "mixed" or "text" not in built:  # mixed shares text's model
            r = run(trees["after"], args.work, f"warm-{w}", model, data, new, "--limit", "64")
            print(f"warm-up {w}: {r['command_s']:.1f} s", flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for i, w in enumerate(names):
        order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
        for tree in order:
            r = run(trees[tree], args.work, f"{w}-{tree}-{i}", *built[w])
            results.setdefault(w, {}).setdefault(tree, []).append(r)
            print(f"{w} {tree}: command {r['command_s']:.1f} s, ready {r['start_s']:.1f} s, generation "
                  f"{r['generate_s']:.2f} s, {r['tok_per_s']:.0f} tok/s, {r['samples_per_s']:.1f} samples/s, "
                  f"batch {r['batch']}, errors {r['errors']}", flush=True)
    print(f"\n{'workload':8} {'tree':7} {'runs':>4} {'command s':>10} {'ready s':>8} {'generation s':>13} "
          f"{'tok/s':>8} {'samples/s':>10}")
    table = {}
    for w, trees_runs in results.items():
        for tree, rs in trees_runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in
                   ("command_s", "start_s", "generate_s", "tok_per_s", "samples_per_s")}
            table[f"{w} {tree}"] = {**med, "runs": [{k: round(v, 3) if isinstance(v, float) else v
                                                     for k, v in r.items()} for r in rs]}
            print(f"{w:8} {tree:7} {len(rs):4} {med['command_s']:10.1f} {med['start_s']:8.1f} "
                  f"{med['generate_s']:13.2f} {med['tok_per_s']:8.0f} {med['samples_per_s']:10.1f}")
        b, a = table[f"{w} before"], table[f"{w} after"]
        print(f"{w:8} after/before: tok/s {a['tok_per_s'] / b['tok_per_s']:.3f}, command "
              f"{a['command_s'] / b['command_s']:.3f}, ready {a['start_s'] / b['start_s']:.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "before_after.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
