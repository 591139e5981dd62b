"""GPU smoke of what a user sees (issue 6) and of first-batch recompiles (issue 4), on a Qwen2.5-7B-shaped model:

  1. `evalfleet run` without a terminal (plain lines, which end with each GPU's utilisation), with
     TORCH_LOGS=recompiles; `evalfleet status` from another process while it runs;
  2. the same run under a pseudo-terminal (`script`), for the live view's GPU lines.

    PYTHONPATH=src python bench/probes/observe_smoke.py [--prompts 2048] [--work /tmp/bench] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))  # bench/
from models import chat_prompts, qwen25_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--prompts", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "observe.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": p}) + "\n"
                            for i, p in enumerate(chat_prompts(work, args.prompts, 256))))
    cfg = {"name": "observe", "output_dir": str(work / "runs"), "progress_every": 256, "progress_seconds": 5,
           "model": {"path": str(qwen25_text(work, "7b")), "batch_size": 512, "generation": {"max_new_tokens": 64}},
           "datasets": [{"name": "d", "path": str(data)}]}
    path = work / "observe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "evalfleet.cli"]

    plain = args.out / "plain.txt"
    with plain.open("w") as f:
        proc = subprocess.Popen([*cli, "run", str(path), "--fresh"], stdout=f, stderr=subprocess.STDOUT,
                                env={**__import__("os").environ, "TORCH_LOGS": "recompiles"})
        time.sleep(35)
        status = subprocess.run([*cli, "status", str(work / "runs" / "observe")], capture_output=True, text=True)
        proc.wait()
    (args.out / "status.txt").write_text(status.stdout + status.stderr)
    text = plain.read_text()
    progress = [line for line in text.splitlines() if "done (" in line]
    recompiles = [line for line in text.splitlines() if "Recompiling" in line or "recompil" in line.lower()]
    print("== plain progress lines ==", *progress[-4:], sep="\n")
    print(f"== recompile log lines: {len(recompiles)} ==", *recompiles[:6], sep="\n")
    print("== evalfleet status during the run ==", status.stdout[-2500:], sep="\n")

    live = args.out / "live.txt"
    subprocess.run(["script", "-qfc", " ".join([*cli, "run", str(path), "--fresh", "--limit", "1024"]), str(live)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    gpu_lines = sorted(set(re.findall(r"GPU \d+: +\d+% util, [\d.]+/\d+ GiB", live.read_text(errors="replace"))))
    print(f"== live view: {len(gpu_lines)} distinct GPU lines ==", *gpu_lines[:8], sep="\n")


if __name__ == "__main__":
    main()
