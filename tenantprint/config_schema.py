"""Validated TOML configurations: the schema machinery the firmware's and the cloud's configs share.

A configuration is a dataclass (a `Config`) whose fields are sections, each a dataclass with
defaults. A section's fields are declared with `option(check, default=...)`: the value must be of
the field's type (`bool`, `str`, `int`, `float`: an int is taken, `list[str]`: any list), and
`check` (optional) gets it and returns it or raises ValueError with the rest of a sentence
("must be ..."). `between` and `one_of` make the usual checks.

`apply(cfg, data, origin, error)` lays a parsed table over `cfg`: an unknown section or key, a
wrong type or a failed check raises `error` (the caller's `ConfigError`) with a message that starts
with `origin` and names the key, e.g. `cloud.toml: limits.device_burst must be between 1 and 1000000`.
`read_toml(path, error)` parses a file, raising `error` when it is missing or is not TOML.
"""

from __future__ import annotations

import tomllib
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Callable

Check = Callable[[Any], Any]

# the field types a section may have, as `from __future__ import annotations` leaves them: strings
_TYPES = {"bool": bool, "str": str, "int": int, "float": float, "list[str]": list}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key. Each configuration has its own
    subclass (`cloud.config.ConfigError`, `firmware.config.ConfigError`)."""


def option(check: Check | None = None, **kw) -> Any:
    """A section's field: `dataclasses.field(**kw)` (`default=` or `default_factory=`) with its check."""
    return field(metadata={"check": check}, **kw)


def between(lo: float, hi: float) -> Check:
    """A check: lo <= value <= hi."""
    def check(v):
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v
    return check


def one_of(*values: str) -> Check:
    """A check: the value is one of `values`."""
    def check(v: str) -> str:
        if v not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return v
    return check


class Config:
    """The base of a configuration dataclass (its fields: the sections)."""

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Section -> key -> value (lists copied): what `--dump-config` prints."""
        return {f.name: {k: list(v) if isinstance(v, list) else v for k, v in getattr(self, f.name).__dict__.items()}
                for f in fields(self)}


def apply(cfg: Config, data: Any, origin: str, error: type[ConfigError]) -> None:
    """Set the keys of `data` ({section: {key: value}}) on `cfg`; see the module docstring."""
    if not isinstance(data, dict):
        raise error(f"{origin}: expected a table of sections")
    sections = {f.name for f in fields(cfg)}
    for name, values in data.items():
        if name not in sections:
            raise error(f"{origin}: unknown section [{name}]")
        if not isinstance(values, dict):
            raise error(f"{origin}: [{name}] must be a table")
        section = getattr(cfg, name)
        known = {f.name: f for f in fields(section)}
        for key, value in values.items():
            if key not in known:
                raise error(f"{origin}: unknown key {name}.{key}")
            setattr(section, key, _value(known[key], value, f"{origin}: {name}.{key}", error))


def _value(f, value: Any, where: str, error: type[ConfigError]) -> Any:
    want = f.type if isinstance(f.type, type) else _TYPES[f.type]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # a bool is an int to isinstance: only a bool field takes one
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise error(f"{where} must be {want.__name__}")
    check = f.metadata.get("check")
    if check is not None:
        try:
            value = check(value)
        except ValueError as exc:
            raise error(f"{where} {exc}") from None
    return value


def read_toml(path: Path, error: type[ConfigError]) -> Any:
    """The parsed TOML file at `path`; `error` when it does not exist or is not TOML."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: {exc}") from None


__all__ = ["Config", "ConfigError", "option", "between", "one_of", "apply", "read_toml"]
