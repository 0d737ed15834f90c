"""YAML recipes -> typed, validated config objects, with dotted command-line overrides.

Every config class derives from `Strict`, which forbids unknown keys, so no key is ever
silently ignored. Errors name the dotted key, the file (or the override that set it) and the
closest valid key, and are raised before any work starts.

A recipe names its task (`task: codec`); the task's recipe class holds the schema of the
whole file (`soundry.train.recipes.load_recipe` looks it up in the task registry). This
module imports nothing of soundry but errors and the registry helpers.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from soundry.errors import ConfigError
from soundry.registry import did_you_mean


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.subkey=value")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    # YAML reads '3e-4' as a string (no dot); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `raw` with each dotted override set (creating nested dicts as needed).

    A key that does not exist in the schema is still set here, so that validation reports
    it as unknown instead of it being dropped.
    """
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_list_index(key, keys[: i + 1], text)]
                continue
            if not isinstance(node.get(key), dict | list):
                node[key] = {}
            node = node[key]
        if isinstance(node, list):
            node[_list_index(keys[-1], keys, text)] = value
        else:
            node[keys[-1]] = value
    return out


def _list_index(key: str, path: list[str], text: str) -> int:
    if not key.isdigit():
        raise ConfigError(f"override '{text}': '{'.'.join(path)}' indexes a list; use a number")
    return int(key)


# ----------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe '{path}' is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of keys to values")
    return data


def validate(
    cls: type[BaseModel], raw: Any, source: str = "<dict>", overrides: list[str] | None = None
) -> Any:
    """`cls.model_validate(raw)` with errors rewritten as one readable ConfigError."""
    try:
        return cls.model_validate(_fill_default_tags(cls, raw))
    except ValidationError as exc:
        raise ConfigError(format_errors(cls, exc, source, overrides or [])) from None


def _fill_default_tags(tp: Any, raw: Any) -> Any:
    """Give a tagged-union section without `type` the type of its default value.

    So `model.quantizer.n_codebooks=4` works on a recipe that never spelled out the
    (default) quantizer type. Returns a new structure; `raw` is not modified.
    """
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(raw, dict):
        out = dict(raw)
        for name, field in tp.model_fields.items():
            if name not in out:
                continue
            value = out[name]
            ann = _strip(field.annotation)
            if isinstance(value, dict) and "type" not in value and _is_tagged_union(ann):
                default = field.get_default(call_default_factory=True)
                tag = getattr(default, "type", None)
                if tag is not None:
                    value = {"type": tag, **value}
            member = _union_member(ann, value.get("type")) if isinstance(value, dict) else None
            out[name] = _fill_default_tags(member or ann, value)
        return out
    if get_origin(tp) is list and isinstance(raw, list) and get_args(tp):
        return [_fill_default_tags(get_args(tp)[0], v) for v in raw]
    if get_origin(tp) is dict and isinstance(raw, dict) and get_args(tp):
        return {k: _fill_default_tags(get_args(tp)[-1], v) for k, v in raw.items()}
    return raw


def _is_tagged_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and any(
        isinstance(_strip(m), type)
        and issubclass(_strip(m), BaseModel)
        and "type" in _strip(m).model_fields
        for m in get_args(tp)
    )


def format_errors(
    cls: type[BaseModel], exc: ValidationError, source: str, overrides: list[str]
) -> str:
    override_keys = {o.partition("=")[0].strip(): o for o in overrides}
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key, parent = _display_key(cls, loc)
        where = source
        for okey, otext in override_keys.items():
            if key == okey or key.startswith(okey + "."):
                where = f"command-line override '{otext}'"
        if err["type"] == "extra_forbidden":
            valid = _fields_of(parent)
            hint = did_you_mean(str(loc[-1]), valid)
            options = f" Valid keys here: {', '.join(sorted(valid))}." if valid else ""
            lines.append(f"{where}: unknown key '{key}'{hint}.{options}")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing required key '{key}'")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            lines.append(f"{where}: key '{key}' = {shown}: {err['msg']}")
    head = "invalid configuration" if len(lines) == 1 else f"{len(lines)} configuration errors"
    return head + ":\n  " + "\n  ".join(lines)


def _strip(tp: Any) -> Any:
    """Remove Annotated/Optional wrappers."""
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _union_member(tp: Any, tag: Any) -> Any | None:
    """The union member whose `type` Literal equals `tag` (discriminated unions)."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    for member in get_args(tp):
        member = _strip(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get("type")
            if field is not None and get_origin(field.annotation) is Literal:
                if tag in get_args(field.annotation):
                    return member
    return None


def _display_key(cls: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, Any]:
    """Dotted key for an error location (union tags dropped) and the type holding its leaf."""
    parts: list[str] = []
    tp: Any = cls
    parent: Any = cls
    for part in loc:
        tp = _strip(tp)
        member = _union_member(tp, part)
        if member is not None:  # pydantic puts the discriminator tag into the location
            tp = member
            continue
        parent = tp
        parts.append(str(part))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            tp = field.annotation if field is not None else None
        elif get_origin(tp) in (list, tuple, dict):
            args = get_args(tp)
            tp = args[-1] if args else None
        else:
            tp = None
    return ".".join(parts), parent


def _fields_of(tp: Any) -> list[str]:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


# ----------------------------------------------------------------------------- saving


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain, YAML/JSON-safe mapping of a config (the fully resolved values)."""
    return cfg.model_dump(mode="json")


def save_resolved(cfg: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config as YAML (keys in schema order)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)  # atomic: a reader never sees a half-written config


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
