"""Reading a config: YAML to a validated `RunConfig`, with CLI overrides checked against the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from evalfleet.backends.kinds import kind
from evalfleet.config.schema import RunConfig
from evalfleet.errors import UserError, not_utf8

OVERRIDE_KEYS = {"show_samples": "show_samples", "workers": "workers", "batch_size": "model.batch_size", "limit": "limit",
                 "seed": "seed", "out": "output_dir", "mode": "placement.mode", "max_memory_per_gpu": "placement.max_memory_per_gpu"}
"""CLI option (parameter name) -> the config key it sets; a `model.` key sets every stage's model."""
OVERRIDE_OPTIONS = {key: "--" + name.replace("_", "-") for name, key in OVERRIDE_KEYS.items()} | {
    "gpus": "--gpus", "shard": "--shard", "cluster.backend": "--ray", "cluster.address": "--ray-address"}
"""Config key -> the CLI option that set it, named in the errors of its value."""


def option_overrides(*, gpus: str | None = None, **options: Any) -> dict[str, Any]:
    """CLI options as dotted config keys; unset options are left out."""
    out: dict[str, Any] = {OVERRIDE_KEYS[k]: v for k, v in options.items() if v is not None}
    if gpus is not None:
        try:
            out["gpus"] = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus expects comma-separated integers, got {gpus!r}") from None
    return out


def flat_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings mapping as dotted keys (`model.generation.max_new_tokens`); lists are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat_settings(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping; dataset paths are made relative to `base_dir`."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(source, err)) from None
    if base_dir is not None:  # paths in a config file are relative to its folder, wherever the command runs
        for ds in cfg.datasets:
            ds.path = _relative_to(base_dir, ds.path)
            ds.image_root = _relative_to(base_dir, ds.image_root)
            ds.root = _relative_to(base_dir, ds.root)
            if ds.few_shot is not None:
                ds.few_shot.path = _relative_to(base_dir, ds.few_shot.path)
        cfg.output_dir = str(_relative_to(base_dir, cfg.output_dir))
        for model in (cfg.model, *(s.model for s in cfg.stages or [])):
            if model is not None and not kind(model.backend).remote and looks_local(model.path, base_dir):
                model.path = str(_relative_to(base_dir, model.path))
    return cfg


def _relative_to(base_dir: Path, path: str | None) -> str | None:
    """`path` (`~` expanded) made absolute against `base_dir` when relative."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def looks_local(path: str, base_dir: Path) -> bool:
    """Whether a model path names a folder rather than a hub id (`org/name`): absolute, `./x`, `../x`, `~/x`,
    `a/b/c`, one that exists under `base_dir`, or `a/b` where a folder `a` exists there (a typo in a local path
    must be reported at once, not tried on the hub)."""
    p = Path(path).expanduser()
    return (p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1 or (base_dir / p).exists()
            or (base_dir / p.parts[0]).is_dir())


def _section(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (`PlacementConfig`, `ModelConfig | None`), or None for a plain value."""
    from typing import get_args

    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _unknown_key(key: str) -> str | None:
    """Why the dotted `key` names no setting of the schema, or None when it names one."""
    section: type[BaseModel] | None = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = f"`{'.'.join(parts[:i])}`" if i else "the top level"
        if section is None:
            return f"{where} is a single setting, it has no `{part}`"
        if part not in section.model_fields:
            return f"no setting `{part}` in {where} (its settings: {', '.join(section.model_fields)})"
        section = _section(section.model_fields[part].annotation)
    return None


def _override_label(key: str, value: Any, options: dict[str, str]) -> str:
    """`--batch-size banana` for a CLI option, `--set model.batch_size=banana` otherwise."""
    shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"{options[key]} {shown}" if key in options else f"--set {key}={shown}"


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any],
                    options: dict[str, str] | None = None) -> dict[str, list[tuple[str | int, ...]]]:
    """Set CLI overrides (dotted keys, e.g. `placement.mode`) in a raw config mapping, in place.

    A `model.` key is a model setting: it is set in every model the config has, the single `model` or each
    stage's `model` under `stages`. A key that names no setting of the schema is refused, naming the option
    (`options`: dotted key -> CLI option). Returns where each override landed, for `_override_errors`."""
    options = options or {}
    landed: dict[str, list[tuple[str | int, ...]]] = {}
    for key, value in overrides.items():
        why = _unknown_key(key)
        if why is not None:
            label = options.get(key, f"--set {key}")
            raise UserError(f"{label}: `{key}` is not a config setting: {why}")
        parts: tuple[str, ...] = tuple(key.split("."))
        if parts[0] == "model":
            targets: list[tuple[str | int, ...]] = [parts] if isinstance(data.get("model"), dict) else []
            stages = data.get("stages")
            if isinstance(stages, list):
                targets += [("stages", i, *parts) for i, stage in enumerate(stages)
                            if isinstance(stage, dict) and isinstance(stage.get("model"), dict)]
        else:
            targets = [parts]
        landed[key] = []
        for target in targets:
            node: Any = data
            for step in target[:-1]:  # str steps: mappings (made when missing); int steps: a stage in `stages`
                node = node.setdefault(step, {}) if isinstance(step, str) else node[step]
                if not isinstance(node, dict) and step != "stages":
                    break  # the file gives a value where the schema has a section: validation names that key
            else:
                node[target[-1]] = value
                landed[key].append(target)
    return landed


def _override_errors(data: dict[str, Any], overrides: dict[str, Any], landed: dict[str, list[tuple[str | int, ...]]],
                    options: dict[str, str] | None = None) -> str | None:
    """The schema's complaints about the overridden values, a line per option naming it, or None if none."""
    try:
        RunConfig.model_validate(data)
    except ValidationError as err:
        problems = err.errors()
    else:
        return None
    lines = []
    for key, targets in landed.items():
        msgs = dict.fromkeys(e["msg"] for e in problems for t in targets if tuple(e["loc"][:len(t)]) == t)
        if msgs:  # every stage's copy says the same: one line
            lines.append(f"invalid {_override_label(key, overrides[key], options or {})}: {'; '.join(msgs)}")
    return "\n".join(lines) or None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                options: dict[str, str] | None = None) -> RunConfig:
    """Read a YAML config file and apply CLI overrides (dotted keys, e.g. `model.batch_size`; see
    `apply_overrides`). `options` maps an override's key to its CLI option, named in its errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(not_utf8(path, "config")) from None
    except yaml.YAMLError as err:
        raise UserError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    landed = apply_overrides(data, overrides or {}, options)
    try:
        return parse_config(data, source=str(path), base_dir=path.parent.resolve())
    except UserError:
        bad = _override_errors(data, overrides or {}, landed, options)
        if bad is None:
            raise
        raise UserError(bad) from None
