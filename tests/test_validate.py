"""Issue 38, item 3: `evalfleet validate` says what `evalfleet run` would say: rows with errors named, a hub id that
can be neither found in the cache nor reached, a `group_by` column that no row keeps; the run refuses the last two
at once, the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import DEMO_QUESTIONS, cli

HUB_ID = "evalfleet-tests/no-such-model"


def write_data(tmp_path: Path, n: int, missing: int, **extra) -> Path:
    """`n` demo questions, the last `missing` of which name an image file that is not there."""
    rows = [json.loads(line) for line in DEMO_QUESTIONS.open()][:n]
    for i, r in enumerate(rows):
        r.update(extra)
        if i >= n - missing:
            r["image"] = f"img/{r['id']}.png"
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp_path: Path, model: str, dataset: str = "{name: qa, path: qa.jsonl}", **top) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(f"name: v\nworkers: 1\nmodel: {{path: {model}}}\ndatasets:\n  - {dataset}\n"
                    + "".join(f"{k}: {json.dumps(v)}\n" for k, v in top.items()))
    return path


def test_validate_names_the_first_rows_with_errors(tmp_path):
    (tmp_path / "model").mkdir()
    write_data(tmp_path, 8, 4)
    code, out = cli("validate", str(write_config(tmp_path, str(tmp_path / "model"))))
    assert code == 0, out
    ids = [json.loads(line)["id"] for line in DEMO_QUESTIONS.open()][4:8]
    assert "dataset qa: 4 of its 8 rows are errors, not answered (more than max_error_rate (5 %): the run would " \
           "exit 1 once done); the first 3:" in out, out
    for line, sample in zip((5, 6, 7), ids):  # id, file, line and field of each of the first three
        assert f"row {sample}: {tmp_path / 'qa.jsonl'}:{line}:image: image file not found: " \
               f"{tmp_path / 'img' / sample}.png" in out, out
    assert f"row {ids[3]}:" not in out


def test_group_by_a_column_no_row_keeps_is_refused_by_validate_and_run(tmp_path):
    (tmp_path / "model").mkdir()
    write_data(tmp_path, 4, 0, organ="liver")
    path = write_config(tmp_path, str(tmp_path / "model"), group_by=["organ"])
    why = ("group_by `organ`: no row of any dataset keeps that column, it would group nothing; add it to the "
           "`columns:` of qa, whose rows have it")
    code, out = cli("validate", str(path))
    assert code == 2 and why in out, out
    code, out = cli("run", str(path))
    assert code == 2 and why in out, out
    assert not (tmp_path / "runs").exists()
    path = write_config(tmp_path, str(tmp_path / "model"), "{name: qa, path: qa.jsonl, columns: [organ]}",
                        group_by=["organ", "answer_type"])
    code, out = cli("validate", str(path))
    assert code == 0 and "valid" in out, out


def evalfleet(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, float]:
    """`evalfleet ARGS` in a process of its own, whose Hugging Face settings are read from `env` at its start; the
    output goes to a file, so that the time is the command's own (not that of worker processes left importing)."""
    out = tmp_path / "out.txt"
    started = time.monotonic()
    with out.open("w") as f:
        code = subprocess.run([sys.executable, "-m", "evalfleet.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}, cwd=tmp_path, timeout=120, check=False).returncode
    return code, out.read_text(), time.monotonic() - started


def test_a_hub_id_neither_cached_nor_reachable_is_reported_at_once(tmp_path):
    write_data(tmp_path, 3, 0)
    path = write_config(tmp_path, HUB_ID)
    cache = tmp_path / "hf-cache"
    offline = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    fix = f"download it where there is a network (`hf download {HUB_ID}`, into {cache} or HF_HUB_CACHE)"
    code, out, _ = evalfleet(tmp_path, "validate", str(path), **offline)
    assert code == 2, out
    assert (f"model {HUB_ID}: a hub id that is not in the local Hugging Face cache, and the hub cannot be reached "
            "(http://127.0.0.1:9: ") in out and fix in out, out
    code, out, _ = evalfleet(tmp_path, "validate", str(path), **{**offline, "HF_HUB_OFFLINE": "1"})
    assert code == 2 and "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in out, out
    # The run refuses it the same way, in seconds, and writes nothing.
    code, out, seconds = evalfleet(tmp_path, "run", str(path), **offline)
    assert code == 2 and "the hub cannot be reached" in out, out
    assert seconds < 20 and not (tmp_path / "runs").exists(), (seconds, out)
    # Downloaded before: in the cache, it passes without the hub.
    snapshot = cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    code, out, _ = evalfleet(tmp_path, "validate", str(path), **offline)
    assert code == 0 and "valid" in out, out
