"""Reading a config: YAML to a validated `RunConfig`, with CLI overrides checked against the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evalfleet.backends.kinds import kind
from evalfleet.config.overrides import apply_overrides, override_errors, shown_loc
from evalfleet.config.schema import RunConfig
from evalfleet.errors import UserError, not_utf8


def flat_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings mapping as dotted keys (`model.generation.max_new_tokens`); lists are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat_settings(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _format_errors(source: str, err: ValidationError, data: dict[str, Any]) -> str:
    """A line per problem, naming its key as `--set` addresses it (a dataset or stage by its name)."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = shown_loc(e["loc"], data) or "(top level)"
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
        raise UserError(_format_errors(source, err, data)) from None
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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                options: dict[str, str] | None = None) -> RunConfig:
    """Read a YAML config file and apply CLI overrides (dotted keys, e.g. `model.batch_size`; see
    `apply_overrides`). `options` maps an override's key to its CLI option, named in its errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:  # a stream has a name: YAML's errors name the file
            data = yaml.safe_load(f) or {}
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
        bad = override_errors(data, overrides or {}, landed, options)
        if bad is None:
            raise
        raise UserError(bad) from None
