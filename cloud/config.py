"""The directory's configuration: one validated schema, unknown keys are errors.

Layers, later wins: built-in defaults -> the TOML file (`--config`, else `$TP_CLOUD_CONFIG`, else
`/etc/tenantprint/cloud.toml` when it exists). The database URL and the KEK file stay where they
were (`--db`/`TP_CLOUD_DB`, `--kek-file`/`TP_CLOUD_KEK_FILE`): this file holds no secret.
`tenantprint cloud serve --dump-config` prints the merged result.

    [server]
    api_docs = false          # serve /docs, /redoc and /openapi.json (404 otherwise)
    trusted_proxies = []      # addresses of load balancers whose X-Forwarded-For names the client

    [limits]                  # token buckets, in each API process's memory; 0 per minute: no limit
    device_per_min = 30       # signed lookups + card lookups of one device (after its signature)
    device_burst = 20
    source_per_min = 120      # lookups + card lookups from one source address (before any check)
    source_burst = 40
    enrol_per_min = 10        # enrolments from one source address
    enrol_burst = 10
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/tenantprint/cloud.toml")
ENV_PATH = "TP_CLOUD_CONFIG"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _range(lo: float, hi: float):
    def check(v):
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v
    return check


def _addresses(v: list) -> list:
    for item in v:
        try:
            ipaddress.ip_address(item)
        except (TypeError, ValueError):
            raise ValueError(f"entry {item!r} is not an IP address") from None
    return v


def _opt(check=None, **kw):
    return field(metadata={"check": check}, **kw)


@dataclass
class ServerSection:
    api_docs: bool = _opt(default=False)
    trusted_proxies: list[str] = _opt(_addresses, default_factory=list)


@dataclass
class LimitsSection:
    # A device taps at human speed: a tap is at most a card lookup and a profile lookup.
    device_per_min: float = _opt(_range(0, 1e6), default=30.0)
    device_burst: int = _opt(_range(1, 1_000_000), default=20)
    # Several MFPs of a space may share one public address (NAT).
    source_per_min: float = _opt(_range(0, 1e6), default=120.0)
    source_burst: int = _opt(_range(1, 1_000_000), default=40)
    enrol_per_min: float = _opt(_range(0, 1e6), default=10.0)
    enrol_burst: int = _opt(_range(1, 1_000_000), default=10)


@dataclass
class CloudConfig:
    server: ServerSection = field(default_factory=ServerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: {k: list(v) if isinstance(v, list) else v for k, v in getattr(self, f.name).__dict__.items()}
                for f in fields(self)}


_TYPES = {"bool": bool, "int": int, "float": float, "list[str]": list}


def _apply(cfg: CloudConfig, data: Any, origin: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a table of sections")
    sections = {f.name for f in fields(cfg)}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{name}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table")
        section = getattr(cfg, name)
        known = {f.name: f for f in fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown key {name}.{key}")
            f = known[key]
            want = f.type if isinstance(f.type, type) else _TYPES[f.type]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
                raise ConfigError(f"{origin}: {name}.{key} must be {want.__name__}")
            check = f.metadata.get("check")
            if check is not None:
                try:
                    value = check(value)
                except ValueError as exc:
                    raise ConfigError(f"{origin}: {name}.{key} {exc}") from None
            setattr(section, key, value)


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The file to read: `explicit`, else `$TP_CLOUD_CONFIG`, else the default path if it exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path | None) -> CloudConfig:
    """Defaults, then the file at `path` (None: defaults only; a named file must exist)."""
    cfg = CloudConfig()
    if path is None:
        return cfg
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _apply(cfg, data, str(path))
    return cfg


def from_dict(data: dict) -> CloudConfig:
    """A config from defaults plus `data` (tests, the lab)."""
    cfg = CloudConfig()
    _apply(cfg, data, "config")
    return cfg
