"""Typed configs: dataclasses whose field `help` metadata is the documentation.

A config file is YAML; `key.sub=value` arguments on the command line override it (values are parsed as YAML
scalars, so `ppo.kl_coef=0.1`, `run.report_to=[tensorboard]`, `ppo.reward.function=null` all work).
Unknown keys and wrong types raise `ConfigError` naming the key; the CLI turns that into exit status 2.
Defaults live in the dataclasses and nowhere else.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

SECRET_MARKERS = ("api_key", "token", "secret", "password")


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help string (shown by `rlaif <stage> --help`)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        return f"dict[str, {_type_name(get_args(tp)[1])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key '{key}': expected a mapping with string keys, got {value!r}")
        value_tp = get_args(tp)[1]
        return {k: _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected bool (true/false), got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected str, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp!r}")  # pragma: no cover


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:  # a nested section's checks say `<section>.judge.key`: name the real path
            if not prefix or "<section>." not in str(e):
                raise
            raise ConfigError(re.sub(r"<section>\.\w+\.", lambda _: prefix, str(e))) from None
    return obj


def to_dict(obj: Any, redact: bool = True) -> Any:
    """Dataclass -> plain dict (for YAML dumps); values of secret-looking keys are redacted."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            out[f.name] = to_dict(_redacted(f.name, v) if redact else v, redact)
        return out
    if isinstance(obj, dict):  # free-form mappings (e.g. judge.extra_body) are redacted key by key too
        return {k: to_dict(_redacted(k, v) if redact else v, redact) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v, redact) for v in obj]
    return obj


def _redacted(name: str, value: Any) -> Any:
    """'***' for a non-empty string under a secret-looking key; keys that hold the *name* of an environment
    variable (`*_env`) are safe to show."""
    if isinstance(value, str) and value and any(m in name.lower() for m in SECRET_MARKERS):
        return value if name.lower().endswith("_env") else "***"
    return value


def redact_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    """A free-form mapping with the values of secret-looking keys replaced (for metadata and logs)."""
    return to_dict(mapping, redact=True)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"config key '{key}': cannot parse value {raw!r}: {e}") from None
        out.append((key, value))
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + `key=value` overrides -> a validated `cls` instance."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping at the top level")
        data = loaded or {}
    for key, value in parse_overrides(overrides or []):
        _set_path(data, key, value)
    return from_dict(cls, data)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config (secrets redacted) as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per key: `key (type) = default  help` — the body of `--help`."""
    lines = []
    hints = get_type_hints(cls)
    own = list(inspect.get_annotations(cls))  # the class's own keys first (a base's shared ones after)
    for f in sorted(dataclasses.fields(cls), key=lambda f: own.index(f.name) if f.name in own else len(own)):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  {f.metadata.get('help', '')}")
            lines.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>"
        )
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}) = {default!r}\n      {f.metadata.get('help', '')}")
    return lines


def require_min(obj: Any, section: str, minimum: float, *keys: str) -> None:
    """Raise ConfigError naming `section.key` for the first key whose value is below `minimum`."""
    for key in keys:
        if getattr(obj, key) < minimum:
            raise ConfigError(f"config key '{section}.{key}': must be >= {minimum}")


def check_training_fields(obj: Any, section: str) -> None:
    """The checks every supervised stage (sft, rm) shares: step counts, learning rate, floor, held-out split."""
    require_min(obj, section, 1, "epochs", "micro_batch_size", "gradient_accumulation_steps", "eval_batch_size")
    require_min(obj, section, 0, "max_steps", "warmup_steps", "eval_every", "checkpoint_every")
    if not obj.learning_rate > 0:
        raise ConfigError(f"config key '{section}.learning_rate': must be > 0")
    if not 0.0 <= obj.min_lr_ratio <= 1.0:
        raise ConfigError(f"config key '{section}.min_lr_ratio': must be in [0, 1]")
    if not 0.0 <= obj.eval_fraction < 1.0:
        raise ConfigError(f"config key '{section}.eval_fraction': must be in [0, 1)")
    if obj.eval_data is not None and obj.eval_fraction > 0:
        raise ConfigError(f"config key '{section}.eval_fraction': set either {section}.eval_data or "
                          f"{section}.eval_fraction ({section}.eval_fraction=0 with {section}.eval_data)")


def get_path(obj: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        obj = getattr(obj, p)
    return obj


__all__ = [
    "ConfigError",
    "field",
    "from_dict",
    "to_dict",
    "redact_mapping",
    "load_config",
    "save_config",
    "describe",
    "parse_overrides",
    "get_path",
    "require_min",
    "check_training_fields",
]
