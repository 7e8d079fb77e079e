"""The JSON round trip of dataclass configs, and the checks that name the field at fault.

Every error is a ConfigError whose message says which field (as a dotted path, "train.lr") is wrong and what
it may be, so a hand-edited config.json or a flag gets one line saying what to fix, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A config that cannot be used; the message says which field and what is allowed."""


def check_number(name: str, value, low: float = 0.0, high: float = math.inf, *, open_low: bool = False) -> None:
    """Refuse a value that is not a finite number in [low, high] ((low, high] with open_low), naming the field."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if open_low else value >= low) \
        and value <= high
    if not ok:
        where = f"in {'(' if open_low else '['}{low:g}, {high:g}]" if high < math.inf else f"{'>' if open_low else '>='} {low:g}"
        raise ConfigError(f"{name} must be a finite number {where}, got {value}; give it a value in that range")


def check_count(name: str, value, low: int = 1, high: float = math.inf) -> None:
    """Refuse a value that is not an integer in [low, high], naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        where = f"between {low} and {int(high)}" if high < math.inf else f">= {low}"
        raise ConfigError(f"{name} must be an integer {where}, got {value}; give it a value in that range")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} is {value!r}; choose one of: {', '.join(allowed)}")


def _from_dict(cls, d, path: str):
    """Build dataclass `cls` from a dict, checking keys and types, naming the field on any error."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path or 'config'} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in {path or 'config'}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _convert(tp, v, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, v, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), v, path)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {v!r}")
        args = typing.get_args(tp)
        item = args[0]
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(v) != 2:
                raise ConfigError(f"{path} must have 2 items, got {v!r}")
        return tuple(_convert(item, x, f"{path}[{i}]") for i, x in enumerate(v))
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{path} must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{path} must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path} must be a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{path} must be a string, got {v!r}")
        return v
    return v


def _with_old_defaults(d, old: dict):
    """`d` with the fields it leaves out set to the defaults of its version (old, as JsonConfig.OLD_DEFAULTS), the
    oldest version's first: a file without "version" is of the current one, and is read with today's defaults."""
    version = d.get("version") if isinstance(d, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        return d
    d = dict(d)
    for _, sections in sorted(item for item in old.items() if item[0] >= version):
        for section, defaults in sections.items():
            if isinstance(d.get(section, {}), dict):
                d[section] = {**defaults, **d.get(section, {})}
    return d


class JsonConfig:
    """The JSON round trip of a dataclass config (config.json), with readable errors.

    OLD_DEFAULTS: {version: {section: {field: default}}}, the defaults a config of that version was written under
    where a later version changed them; a file of that version leaving the field out reads as it did then."""

    OLD_DEFAULTS: typing.ClassVar[dict] = {}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict):
        return _from_dict(cls, _with_old_defaults(d, cls.OLD_DEFAULTS), "")

    @classmethod
    def from_json(cls, text: str, source: str = "config"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source} is not valid JSON: {e}") from None
        except RecursionError:  # json recurses once per level: [[[[...]]]] 100,000 deep overflows the stack
            raise ConfigError(f"{source} is nested too deeply to be a config; a config.json is two levels deep") from None
        return cls.from_dict(d)

    def check(self) -> None:
        """Run every section's checks again (a ConfigError naming the field), for fields set after construction."""
        type(self).from_dict(self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        return cls.from_json(path.read_text(), str(path))
