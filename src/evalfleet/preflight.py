"""Checks a run makes before it writes anything, so that a refused command leaves the run folder as it was:
the output folder, `--fresh` while another driver works, the datasets, and settings or prompts that changed
since results were stored."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalfleet.backends.kinds import kind
from evalfleet.bulk import bulk_objects
from evalfleet.cluster.shards import in_shard, parse_shard
from evalfleet.config import DatasetConfig, RunConfig, StageConfig, flat_settings
from evalfleet.config.load import looks_local
from evalfleet.data.datasets import DatasetError, dataset_columns, media_problems
from evalfleet.data.load import load_samples
from evalfleet.errors import RunError, UserError
from evalfleet.records import Sample
from evalfleet.scoring.metrics import resolve_metric
from evalfleet.store import Store, StoreDamaged, pid_alive

log = logging.getLogger("evalfleet")


def check_output_dir(run_dir: Path) -> None:
    """The run folder and the folders above it must be folders (or not exist yet)."""
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{p} is a file, not a folder: point output_dir (or --out) at a folder, "
                                f"the run would be written to {run_dir}")
            return


def refuse_fresh_while_live(run_dir: Path, lease_s: float) -> None:
    """`--fresh` deletes the run folder: refuse while another live driver works on it (its leases or its row in
    the drivers table say so); a damaged store may be deleted."""
    path = run_dir / "store.db"
    if not path.is_file():
        return
    try:
        store = Store(path)
    except StoreDamaged:
        return  # --fresh is the way out of a damaged store
    try:
        now, host = time.time(), socket.gethostname()
        holders = {(d["host"], d["pid"]) for d in store.live_drivers(stale_s=lease_s, now=now)}
        for other_host, pid in store.db.execute("SELECT DISTINCT host, pid FROM leases WHERE expires > ?", (now,)):
            if other_host != host or pid_alive(pid):
                holders.add((other_host, pid))
    finally:
        store.close()
    if holders:
        who = ", ".join(f"pid {pid} on {h}" for h, pid in sorted(holders))
        raise UserError(f"--fresh refused: another evalfleet run is working on {run_dir} ({who}). Stop it first "
                        "(Ctrl-C or kill -TERM), or use another run name; nothing was deleted")


@dataclass
class Datasets:
    """The datasets of a run as read from their files, before anything is stored."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    positions: dict[str, list[int]] = field(default_factory=dict)
    """Each sample's place in its whole dataset (a shard holds some of them)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Datasets that could not be read, with the reason."""
    keys: dict[str, str] = field(default_factory=dict)
    """What each dataset's samples were read from (`samples_key`): equal to the stored key, they are unchanged."""


def samples_key(cfg: RunConfig, name: str, samples: list[Sample]) -> str:
    """A digest of everything a dataset's samples derive from: its settings, the run's seed, limit and shard, the
    size and modification time of its files (data, few-shot examples), evalfleet's version, and the samples'
    errors (an image file deleted since is an error now, in files that did not change)."""
    from evalfleet import __version__

    ds = next(d for d in cfg.datasets if d.name == name)
    files = [Path(p) for p in (ds.path, ds.few_shot.path if ds.few_shot else None) if p]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    errors = [(s.id, s.error) for s in samples if s.error]
    parts = [ds.model_dump(mode="json"), cfg.seed, cfg.limit, cfg.shard, stats, __version__, errors]
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def read_datasets(cfg: RunConfig) -> Datasets:
    """Load every dataset (this process's shard of it); a dataset that cannot be read is recorded, not raised."""
    out = Datasets()
    for ds in cfg.datasets:
        try:
            with bulk_objects():
                samples = load_samples(ds, seed=cfg.seed, limit=cfg.limit)
        except DatasetError as err:
            out.failed[ds.name] = str(err)
            continue
        positions = list(range(len(samples)))
        if cfg.shard is not None:  # this process's share only, at their places in the whole dataset
            index, count = parse_shard(cfg.shard)
            positions = [i for i, s in zip(positions, samples) if in_shard(ds.name, s.id, index, count)]
            samples = [samples[i] for i in positions]
        out.samples[ds.name], out.positions[ds.name] = samples, positions
        out.keys[ds.name] = samples_key(cfg, ds.name, samples)
    return out


def refusals(cfg: RunConfig, store: Store, data: Datasets, redo: list[str]) -> list[str]:
    """Why this run may not go on in `store` (reads only): a stage whose stored results were made with other
    settings, or answered samples whose prompt changed. `redo` stages are computed again and exempt."""
    stages = cfg.pipeline()
    before = store.get_meta("config")  # the settings the stored results were made with
    problems = [why + "".join(f"\n    {c}" for c in changed_settings(before, stage, cfg.seed))
                for stage in stages if stage.name not in redo
                and (why := store.fingerprint_conflict(stage.name, stage.fingerprint(cfg.seed)))]
    first = stages[0].name  # answers the prompts
    if first not in redo:
        for name, samples in data.samples.items():
            if store.get_meta(f"samples:{name}") == data.keys[name]:
                continue  # read from the same files with the same settings: the stored prompts are these
            if changed := store.changed_prompts(first, samples):
                problems.append(
                    f"dataset {name}: {len(changed)} answered samples (e.g. {changed[0]!r}) had another prompt, "
                    "instruction, system prompt or few-shot examples; use --fresh to start over, "
                    f"--redo {first} to answer them again, or another run name")
    return problems


NOT_IN_FINGERPRINT = ("name", "gpus", "python", "model.batch_size", "model.engine", "model.server.urls",
                      "model.server.api_key_env", "model.server.max_in_flight", "model.server.timeout_s",
                      "model.server.retries", "model.server.startup_timeout_s")
"""Stage settings a resume may change (`StageConfig.fingerprint` leaves them out)."""


def changed_settings(before: dict[str, Any] | None, stage: StageConfig, seed: int) -> list[str]:
    """`model.generation.max_new_tokens: 16 -> 5` for each setting of `stage` that differs from the stored config
    `before` (a run config as JSON), so that a refusal names what changed."""
    if not before:
        return []
    shorthand = StageConfig.model_construct(name="generate", kind="generate").model_dump(mode="json", exclude={"model"})
    old_stages = before.get("stages") or [{**shorthand, "model": before.get("model")}]  # `model:`, with the defaults
    # a stage has (its judge parsing), as `RunConfig.pipeline` makes it: only what changed is named
    old = next((s for s in old_stages if s.get("name") == stage.name), None)
    if old is None:
        return []
    a = flat_settings({**old, "seed": before.get("seed", 0)})
    b = flat_settings({**stage.model_dump(mode="json"), "seed": seed})
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key) and not key.startswith(NOT_IN_FINGERPRINT)]


def model_path_problem(path: str) -> str | None:
    """Why a model path that looks local (hub ids look like `org/name`) cannot be used, else None."""
    if looks_local(path, Path.cwd()) and not Path(path).expanduser().exists():
        return f"model path not found: {path}"
    return None


HUB_TIMEOUT_S = 3.0
"""How long the hub may take to answer before a model that is only there is refused."""


def hub_model_problem(path: str) -> str | None:
    """Why a hub id (`org/name`, not a local folder) cannot be loaded here, found in seconds, not after the
    minute of retries a load spends: it is neither in the local Hugging Face cache nor reachable (the hub does
    not answer within `HUB_TIMEOUT_S`, or `HF_HUB_OFFLINE` is set)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{path.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return None  # downloaded before (a load still asks the hub for updates, unless HF_HUB_OFFLINE=1)
    fix = (f"download it where there is a network (`hf download {path}`, into {constants.HF_HUB_CACHE} or "
           "HF_HUB_CACHE) or give the path of a local folder")
    if constants.HF_HUB_OFFLINE:
        return f"model {path}: a hub id that is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; {fix}"
    why = _unreachable(constants.ENDPOINT)
    if why is not None:
        return (f"model {path}: a hub id that is not in the local Hugging Face cache, and the hub cannot be reached "
                f"({constants.ENDPOINT}: {why}); {fix}")
    return None


def _unreachable(url: str) -> str | None:
    """Why `url` does not answer within `HUB_TIMEOUT_S` (through the proxies the environment names), or None when it
    answers, with any status."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"no answer within {HUB_TIMEOUT_S:g} s" if isinstance(reason, TimeoutError) else str(reason)
    return None


def checked_datasets(cfg: RunConfig) -> Datasets:
    """The run's datasets, read; every input problem at once (`input_problems`) as a UserError, before anything is
    loaded, deleted or written; a RunError (exit 1, as for a dataset that fails in a run of several) when not one
    dataset could be read."""
    data = read_datasets(cfg)
    if problems := input_problems(cfg, data):
        also = [f"dataset {name} cannot be read: {why}" for name, why in data.failed.items()]
        raise UserError("nothing was run; fix these first:\n  " + "\n  ".join(problems + also))
    if not data.samples:  # nothing to run: refused before the run folder is made (or touched)
        raise RunError("nothing was run: no dataset could be read:\n  "
                       + "\n  ".join(f"{name}: {why}" for name, why in data.failed.items()))
    return data


def input_problems(cfg: RunConfig, data: Datasets) -> list[str]:
    """Everything wrong with the run's inputs that shows before a model loads, all at once: model paths that do
    not exist, hub ids neither downloaded nor reachable, columns of pictures or video that no setting reads (the
    rows would run without them), datasets whose every row is an error (a field name that is
    in no row, a prompt template naming a column the rows lack), datasets without reference answers when metrics
    need them, and `group_by` columns that no row keeps. (A dataset that cannot be read at all is not refused here:
    it is recorded as failed and the others run.)"""
    paths = dict.fromkeys(stage.model.path for stage in cfg.pipeline()
                          if not kind(stage.model.backend).remote)  # there, a served model's name
    problems = [why for path in paths if (why := model_path_problem(path))]
    problems += [why for path in paths if not looks_local(path, Path.cwd()) and (why := hub_model_problem(path))]
    for name in cfg.metrics:  # plug-ins import
        try:
            resolve_metric(name)
        except ValueError as err:
            problems.append(str(err))
    scored = bool(cfg.metrics) and cfg.pipeline()[0].kind == "generate"
    for ds in cfg.datasets:
        samples = data.samples.get(ds.name)
        if not samples:
            continue
        problems += media_problems(ds)
        errors = [s.error for s in samples if s.error]
        where = f"dataset {ds.name}" + (f" ({ds.path})" if ds.path else "")
        if videos := [s for s in samples if s.video is not None]:
            problems.append(f"{where}: {len(videos)} rows carry a video (`fields.video: {ds.fields.video}`, e.g. "
                            f"{videos[0].video.where}); evalfleet's model backends do not take video yet: set "
                            f"`fields.video: null` and list `{ds.fields.video}` in `columns:` to run those rows "
                            "without it")
        if len(errors) == len(samples):
            problems.append(f"{where}: every one of its {len(samples)} rows is an error, e.g. {errors[0]}"
                            + _columns_hint(ds))
        elif scored and not any(s.answers for s in samples if not s.error):
            problems.append(f"{where}: no row has a reference answer in the column `{ds.fields.answer}` "
                            f"(fields.answer), and the metrics ({', '.join(cfg.metrics)}) need one"
                            + _columns_hint(ds) + "; or set `metrics: []` to generate without scoring")
    problems += [why for column in cfg.group_by if (why := _group_by_problem(cfg, data, column))]
    return problems


def _group_by_problem(cfg: RunConfig, data: Datasets, column: str) -> str | None:
    """Why grouping by `column` would give every dataset one `-` group: no row of any dataset keeps it (a file
    dataset keeps the columns its `columns:` lists; a named dataset its release's own)."""
    if column in ("answer_type", "question_kind") or any(
            (s.metadata.get("columns") or {}).get(column) not in (None, "") for ss in data.samples.values() for s in ss):
        return None
    have = [ds.name for ds in cfg.datasets if ds.path and column not in ds.columns and column in dataset_columns(ds)]
    fix = (f"add it to the `columns:` of {', '.join(have)}, whose rows have it" if have else
           "name a column of the rows in a dataset's `columns:` (or answer_type)")
    return f"group_by `{column}`: no row of any dataset keeps that column, it would group nothing; {fix}"


ROWS_NAMED = 3
"""How many of a dataset's rows with errors `row_errors` names."""


def row_errors(cfg: RunConfig, data: Datasets) -> list[str]:
    """A dataset's rows that are errors (a missing image, an empty question), the first `ROWS_NAMED` named by id,
    file, line and field; and whether they pass `max_error_rate` (the run would then exit 1 once done)."""
    lines = []
    for name, samples in data.samples.items():
        bad = [s for s in samples if s.error]
        if not bad:
            continue
        rate = len(bad) / len(samples)
        verdict = (f"more than max_error_rate ({100 * cfg.max_error_rate:g} %): the run would exit 1 once done"
                   if rate > cfg.max_error_rate else f"within max_error_rate ({100 * cfg.max_error_rate:g} %)")
        lines.append(f"dataset {name}: {len(bad)} of its {len(samples)} rows are errors, not answered ({verdict})"
                     + (f"; the first {ROWS_NAMED}:" if len(bad) > ROWS_NAMED else ":"))
        lines += [f"  row {s.id}: {s.error}" for s in bad[:ROWS_NAMED]]
    return lines


def _columns_hint(ds: DatasetConfig) -> str:
    """`; its rows have the columns a, b, c (fields: question=..., ...)` for a file dataset."""
    columns = dataset_columns(ds)
    if not columns:
        return ""
    f = ds.fields
    shown = ", ".join(f"{k}={v!r}" for k, v in (("question", f.question), ("answer", f.answer), ("image", f.image),
                                                  ("id", f.id)) if v)
    return f"; its rows have the columns {', '.join(columns)} (fields: {shown})"
