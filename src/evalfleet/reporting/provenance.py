"""How a result was made, for summary.json and the HTML report: the command, the software versions, the git commit
of the folder it ran in, each model's path with hashes of its config and weight index, its generation settings,
each dataset file's hash, and when the run started and ended."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from evalfleet.config import RunConfig
from evalfleet.plan.memory import safetensors_headers
from evalfleet.store import Store


def run_provenance(cfg: RunConfig) -> dict[str, Any]:
    """What a run records when it starts (in the store, meta `provenance`): it describes this process."""
    versions = {"python": sys.version.split()[0]}
    for package in ("evalfleet", "torch", "transformers", "accelerate", "diffusers"):
        try:
            versions[package] = metadata.version(package)  # no import: the driver stays light
        except metadata.PackageNotFoundError:
            pass
    return {"command": sys.argv, "cwd": str(Path.cwd()), "host": socket.gethostname(), "versions": versions,
            "git": _git(Path.cwd()),
            "models": {s.name: {"path": s.model.path, **_model_hashes(s.model.path),
                                "generation": s.model.generation.model_dump(mode="json")} for s in cfg.pipeline()}}


def summary_provenance(store: Store, cfg: RunConfig) -> dict[str, Any]:
    """The run's provenance as recorded, with its datasets' file hashes and its start and end."""
    state = store.get_meta("state") or {}
    stamp = {k: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(state[k])) for k in ("started", "ended")
             if state.get(k)}
    return {**(store.get_meta("provenance") or {}), **stamp, "config": store.get_meta("config"),
            "datasets": _dataset_hashes(store, cfg)}


def _git(folder: Path) -> dict[str, Any] | None:
    """The commit of the git working tree holding `folder`, and whether it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty)}


def _model_hashes(path: str) -> dict[str, str]:
    """sha256 of a local checkpoint's config.json and of its weight index (the sharded index file, else the
    safetensors headers: tensor names, shapes, dtypes and offsets). Nothing for a hub id."""
    folder = Path(path)
    out = {}
    if (folder / "config.json").is_file():
        out["config_sha256"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        out["weights_index_sha256"] = hashlib.sha256(index[0].read_bytes()).hexdigest()
    elif headers := safetensors_headers(folder):
        out["weights_index_sha256"] = hashlib.sha256(b"".join(headers)).hexdigest()
    return out


def _dataset_hashes(store: Store, cfg: RunConfig) -> dict[str, Any]:
    """Each dataset file's path, size and sha256 (built-ins: their name and split). Hashes are kept in the store
    by (size, modification time), so that a report does not read a large file again."""
    known = store.get_meta("file_hashes") or {}
    out: dict[str, Any] = {}
    for ds in cfg.datasets:
        if ds.path is None:
            out[ds.name] = {"builtin": ds.builtin, "split": ds.split}
            continue
        p = Path(ds.path)
        try:
            st = p.stat()
        except OSError:
            out[ds.name] = {"path": ds.path, "missing": True}
            continue
        key = [st.st_size, st.st_mtime_ns]
        if known.get(ds.path, {}).get("key") != key:
            h = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            known[ds.path] = {"key": key, "sha256": h.hexdigest()}
        out[ds.name] = {"path": ds.path, "size": st.st_size, "sha256": known[ds.path]["sha256"]}
    try:
        store.set_meta("file_hashes", known)
    except sqlite3.Error:  # a read-only store: hashed again next time
        pass
    return out


def provenance_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) lines for the HTML report."""
    rows = [("command", " ".join(p.get("command") or [])), ("folder", f"{p.get('cwd', '-')} on {p.get('host', '-')}"),
            ("git", "-" if not p.get("git") else p["git"]["commit"] + (" (uncommitted changes)" if p["git"]["dirty"]
                                                                        else "")),
            ("versions", ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items())),
            ("started / ended", f"{p.get('started', '-')} / {p.get('ended', '-')}")]
    for stage, m in (p.get("models") or {}).items():
        rows.append((f"model of {stage}", f"{m.get('path')}; config sha256 {m.get('config_sha256', '-')[:16]}; "
                                          f"weights index sha256 {m.get('weights_index_sha256', '-')[:16]}; "
                                          f"generation {json.dumps(m.get('generation'))}"))
    for name, d in (p.get("datasets") or {}).items():
        rows.append((f"dataset {name}", f"{d.get('path') or d.get('builtin')}" + (
            f"; {d['size']} bytes; sha256 {d['sha256']}" if "sha256" in d else "")))
    return rows
