"""Frozen dataclass configs loaded from YAML: unknown keys rejected, every error names the field.

    cfg = load_config(TrainConfig, "train.yaml", overrides=["losses.landmark=0"])

Nested dataclasses are nested mappings; tuples are YAML lists; `a.b=value` overrides are parsed as
YAML scalars, so `iterations=10` is an int and `attributes=[Male, Young]` a list.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field."""


def _join(where: str, key) -> str:
    """The dotted path of `key` under `where` ("" = the top level)."""
    return f"{where}.{key}" if where else str(key)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (str, Any)
        return {_coerce(k, kt, _join(where, k)): _coerce(v, vt, _join(where, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 5e5 (no dot) as a string; accept any numeric string.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str = "config") -> C:
    """Build dataclass `cls` from a mapping, recursively; unknown keys and bad values raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hints.append(_join(where, k) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown key(s): {', '.join(hints)}; valid keys{' of ' + where if where else ''}: "
                          f"{', '.join(fields)}")
    hints_by_name = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints_by_name[k], _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg) -> dict:
    """Plain, YAML/JSON-ready dict (tuples become lists) of a config dataclass."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (for logging params)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, returning a new dict.

    A key under a value that is not a mapping is refused (`model=5` then `model.preset=tiny`): one of
    the two would otherwise be dropped without a word.
    """
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except DuplicateKey as e:
            raise ConfigError(f"override {key}: {e}") from None
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"override {key}: cannot parse {raw!r} ({e})") from None
        node, parts = data, key.strip().split(".")
        for depth, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is not None and not isinstance(child, Mapping):
                where = ".".join(parts[:depth + 1])
                raise ConfigError(f"override {item!r}: {where} is set to {child!r}, which is not a mapping, so it has "
                                  f"no key {'.'.join(parts[depth + 1:])!r}; remove one of the two settings")
            node[p] = dict(child) if isinstance(child, Mapping) else {}
            node = node[p]
        node[parts[-1]] = value
    return data


class DuplicateKey(yaml.YAMLError):
    """A YAML mapping names the same key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first on line {first_line}); a mapping may name a "
                         "key once")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (no object tags), refusing duplicate keys in a mapping.

    Keys merged in from an anchor (`<<: *base`) may be overridden, as YAML's merge key intends; a key
    the mapping itself names twice is an error.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it properly
                    break
                if first is not key_node:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, first.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    """yaml.safe_load, refusing duplicate keys (DuplicateKey, a yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)


def read_yaml(path: str | Path) -> dict:
    """A YAML config file's top-level mapping; every problem with the file is a ConfigError naming it."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file (byte {e.start} is not UTF-8 text); give a YAML config "
                          "file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        data = parse_yaml(text)
    except DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = (),
                where: str | None = None) -> C:
    """YAML file (optional) + overrides -> validated frozen config."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where or (Path(path).name if path else cls.__name__))


def require(condition: bool, field: str, value: Any, why: str) -> None:
    """Validation helper for __post_init__: raise ConfigError naming the field and its bad value."""
    if not condition:
        raise ConfigError(f"{field}: {value!r} {why}")
