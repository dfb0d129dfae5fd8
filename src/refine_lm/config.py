"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides, validated at start-up.

Every command has one config dataclass. ``load_config(Cls, "run.yaml", ["optim.lr=3e-4"])``
reads the file, applies the overrides (values parsed as YAML), and builds the dataclass,
refusing unknown keys and values of the wrong type with a message that names the file and
the field — before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file and ``dotted.key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = f"{path} + command-line overrides" if overrides else str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(loaded).__name__}")
        data = loaded
    for override in overrides:
        _apply_override(data, override)
    return from_dict(cls, data, source)


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key=value (e.g. max_new_tokens=32)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _yaml_item(text: str, source: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {key}: {text!r} is not a valid value ({problem})") from None


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively; errors name ``source`` and the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + str(unknown[0])!r} for {cls.__name__} (valid keys: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        factory = fields[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]) and factory is not dataclasses.MISSING:
            # keys not given keep the command's own default (e.g. the demo's 20 steps), not the section class's
            value = _merged(dataclasses.asdict(factory()), value)
        kwargs[name] = _convert(hints[name], value, source, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source, key)
            except ConfigError as e:
                errors.append(str(e))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{source}: {key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, key + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [_yaml_item(v.strip(), source, key) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]  # a single item
        item = args[0] if args else Any
        converted = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple or tp is tuple else converted
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{source}: {key}: unsupported field type {tp}")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for logs and for writing next to checkpoints)."""
    return dataclasses.asdict(config)


def changed_settings(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every dotted key of two nested settings dicts whose values differ, except
    ``ignore`` and keys only one side has (a setting added or removed between versions)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
        return out

    a, b = flat(saved), flat(current)
    common = sorted(set(a) & set(b) - set(ignore))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in common if a[k] != b[k]]


# ----- --help: every setting with its type, default and documentation ------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """``name -> text`` from a dataclass docstring's ``name: text`` entries (``a / b: text`` documents both;
    more-indented lines continue the entry above)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (cls.__doc__ or "").splitlines():
        entry = re.match(r"^ {4}([A-Za-z_][\w ,/]*?):\s+(.*)$", line)
        if entry and all(re.fullmatch(r"\w+", n.strip()) for n in re.split(r"[/,]", entry.group(1))):
            names = [n.strip() for n in re.split(r"[/,]", entry.group(1))]
            for name in names:
                docs[name] = entry.group(2).strip()
        elif names and line.startswith(" " * 8) and line.strip():
            for name in names:
                docs[name] += " " + line.strip()
        else:
            names = []
    return docs


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe_settings(cls: type, prefix: str = "", instance: Any = None) -> list[str]:
    """One line per setting of dataclass ``cls`` (nested sections as dotted keys): key, type, default, doc.
    Defaults come from ``instance`` when given (a section's defaults as its parent sets them), else from the fields."""
    docs, hints, lines = field_docs(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(instance, f.name) if instance is not None else _field_default(f)
        tp = hints[f.name]
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            section = doc if doc and not doc.startswith("see ") else _first_line(tp)
            lines.append(f"  {prefix}{f.name}.*: {section}")
            lines += describe_settings(tp, f"{prefix}{f.name}.", None if value is dataclasses.MISSING else value)
            continue
        shown = "(required)" if value is dataclasses.MISSING else json_default(value)
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {shown})" + (f": {doc}" if doc else ""))
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):  # a list of sections: the fields of one item
            lines += describe_settings(item, f"{prefix}{f.name}[].")
    return lines


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def json_default(value: Any) -> str:
    """A default as one line of YAML flow style."""
    if isinstance(value, (list, tuple)):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    elif dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()
