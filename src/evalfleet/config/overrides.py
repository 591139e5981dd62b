"""The address of every setting: CLI options and `--set KEY=VALUE` as dotted keys into a raw config mapping, and
the schema's complaints named by the same addresses.

A key walks the schema: `placement.mode`, `model.generation.max_new_tokens`. A list of named sections (`datasets`,
`stages`) is entered by an element's name or its index: `datasets.vqa.limit`, `datasets.0.limit`,
`stages.judge.model.dtype`. A setting right after the list (`datasets.limit`) is set in every element, as a
`model.` key is set in every model the config has (the single `model`, or each stage's). A key that addresses
nothing is refused in one line naming it, and the names that exist there.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from evalfleet.config.model import ModelConfig
from evalfleet.config.schema import RunConfig
from evalfleet.errors import UserError

OVERRIDE_KEYS = {"show_samples": "show_samples", "workers": "workers", "batch_size": "model.batch_size", "limit": "limit",
                 "seed": "seed", "out": "output_dir", "mode": "placement.mode", "max_memory_per_gpu": "placement.max_memory_per_gpu"}
"""CLI option (parameter name) -> the config key it sets; a `model.` key sets every stage's model."""
OVERRIDE_OPTIONS = {key: "--" + name.replace("_", "-") for name, key in OVERRIDE_KEYS.items()} | {
    "gpus": "--gpus", "shard": "--shard", "cluster.backend": "--ray", "cluster.address": "--ray-address"}
"""Config key -> the CLI option that set it, named in the errors of its value."""

Path = tuple[str | int, ...]
"""A place in the raw config: mapping keys, and list indices for an element of `datasets` or `stages`."""

NAMED_LISTS = {"datasets": "dataset", "stages": "stage"}
"""The top-level lists whose elements have a `name`, addressed by it: the list -> what an element is called."""


def option_overrides(*, gpus: str | None = None, **options: Any) -> dict[str, Any]:
    """CLI options as dotted config keys; unset options are left out."""
    out: dict[str, Any] = {OVERRIDE_KEYS[k]: v for k, v in options.items() if v is not None}
    if gpus is not None:
        try:
            out["gpus"] = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus expects comma-separated integers, got {gpus!r}") from None
    return out


class _Nowhere(Exception):
    """A key that addresses no setting; the message says why."""


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model a field holds (`PlacementConfig`, `ModelConfig | None`) and whether it is a list of them
    (`list[DatasetConfig]`); (None, False) for a plain value."""
    for t in (annotation, *get_args(annotation)):
        if get_origin(t) is list:
            (item,) = get_args(t) or (None,)
            if isinstance(item, type) and issubclass(item, BaseModel) and "name" in item.model_fields:
                return item, True
        elif isinstance(t, type) and issubclass(t, BaseModel):
            return t, False
    return None, False


def _walk(section: type[BaseModel], node: Any, parts: list[str], at: Path, shown: str) -> list[Path]:
    """The places under `at` (the raw value there: `node`, of the settings `section`; shown as `shown`) that the
    dotted `parts` address."""
    if not parts:
        return [at]
    part, rest = parts[0], parts[1:]
    if part not in section.model_fields:
        where = f"`{shown}`" if shown else "the top level"
        raise _Nowhere(f"no setting `{part}` in {where} (its settings: {', '.join(section.model_fields)})")
    sub, is_list = _section(section.model_fields[part].annotation)
    here, name = (*at, part), f"{shown}.{part}" if shown else part
    child = node.get(part) if isinstance(node, dict) else None
    if not rest:
        return [here]
    if sub is None:
        raise _Nowhere(f"`{name}` is a single setting, it has no `{rest[0]}`")
    if is_list:
        return _elements(sub, child, rest, here, name)
    return _walk(sub, child, rest, here, name)


def _elements(item: type[BaseModel], items: Any, parts: list[str], at: Path, shown: str) -> list[Path]:
    """The places `parts` address in a list of named sections: an element by its name (which may hold dots: the
    longest that matches) or its index, or a setting of every element."""
    items = items if isinstance(items, list) else []
    names = [x.get("name") if isinstance(x, dict) else None for x in items]
    noun = NAMED_LISTS.get(shown, "element")
    for n in range(len(parts), 0, -1):
        label = ".".join(parts[:n])
        if label in names:
            i = names.index(label)
            return _walk(item, items[i], parts[n:], (*at, i), f"{shown}.{label}")
    if parts[0].isdigit():
        i = int(parts[0])
        if i >= len(items):
            raise _Nowhere(f"no {noun} {i} in `{shown}`, which has {len(items)} ({_listing(names)})")
        return _walk(item, items[i], parts[1:], (*at, i), f"{shown}.{names[i] if names[i] else i}")
    if parts[0] in item.model_fields:  # a setting of every element
        if not items:
            raise _Nowhere(f"the config has no `{shown}` to set `{parts[0]}` in")
        return [p for i, x in enumerate(items) for p in _walk(item, x, parts, (*at, i), f"{shown}.{names[i] or i}")]
    raise _Nowhere(f"no {noun} `{parts[0]}` in `{shown}` ({_listing(names)}; or a setting of every {noun}: "
                   f"{', '.join(item.model_fields)})")


def _listing(names: list[Any]) -> str:
    """`its names: a, b; or an index, 0 to 1` for a list's elements."""
    if not names:
        return "it is empty"
    shown = ", ".join(str(n) for n in names if n is not None)
    return f"its names: {shown}; or an index, 0 to {len(names) - 1}" if shown else f"an index, 0 to {len(names) - 1}"


def override_targets(key: str, data: dict[str, Any]) -> list[Path]:
    """Where in the raw config `data` the dotted `key` sets its value; `_Nowhere` when it addresses nothing."""
    parts = key.split(".")
    if parts[0] != "model":
        return _walk(RunConfig, data, parts, (), "")
    _walk(ModelConfig, None, parts[1:], ("model",), "model")  # checks the key
    targets: list[Path] = [tuple(parts)] if isinstance(data.get("model"), dict) else []
    stages = data.get("stages")
    if isinstance(stages, list):
        targets += [("stages", i, *parts) for i, stage in enumerate(stages)
                    if isinstance(stage, dict) and isinstance(stage.get("model"), dict)]
    return targets


def _override_label(key: str, value: Any, options: dict[str, str]) -> str:
    """`--batch-size banana` for a CLI option, `--set model.batch_size=banana` otherwise."""
    shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"{options[key]} {shown}" if key in options else f"--set {key}={shown}"


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any],
                    options: dict[str, str] | None = None) -> dict[str, list[Path]]:
    """Set CLI overrides (dotted keys, e.g. `placement.mode`, `datasets.vqa.limit`; see the module's docstring) in
    a raw config mapping, in place. A key that addresses nothing is refused, naming the option (`options`: dotted
    key -> CLI option). Returns where each override landed, for `override_errors`."""
    options = options or {}
    landed: dict[str, list[Path]] = {}
    for key, value in overrides.items():
        try:
            targets = override_targets(key, data)
        except _Nowhere as why:
            raise UserError(f"{options.get(key, f'--set {key}')}: `{key}` is not a config setting: {why}") from None
        landed[key] = []
        for target in targets:
            node: Any = data
            for step in target[:-1]:  # str steps: mappings (made when missing); int steps: an element of a list
                node = node.setdefault(step, {}) if isinstance(step, str) else node[step]
                if not isinstance(node, dict) and step not in NAMED_LISTS:
                    break  # the file gives a value where the schema has a section: validation names that key
            else:
                node[target[-1]] = value
                landed[key].append(target)
    return landed


def shown_loc(loc: tuple[Any, ...], data: Any) -> str:
    """A place the schema complains about, as the dotted address `--set` takes: an element of `datasets` or `stages`
    by its name (`stages.judge.model.dtype`), by its index where it has none."""
    parts = [str(p) for p in loc]
    if len(loc) > 1 and loc[0] in NAMED_LISTS and isinstance(loc[1], int) and isinstance(data, dict):
        items = data.get(loc[0])
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name and [x.get("name") for x in items if isinstance(x, dict)].count(name) == 1:
            parts[1] = name
    return ".".join(parts)


def override_errors(data: dict[str, Any], overrides: dict[str, Any], landed: dict[str, list[Path]],
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
