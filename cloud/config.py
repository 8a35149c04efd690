"""The directory's configuration: one validated schema, unknown keys are errors
(`tenantprint.config_schema`).

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
from dataclasses import dataclass, field
from pathlib import Path

from tenantprint import config_schema
from tenantprint.config_schema import Config, between, option

DEFAULT_PATH = Path("/etc/tenantprint/cloud.toml")
ENV_PATH = "TP_CLOUD_CONFIG"


class ConfigError(config_schema.ConfigError):
    """The configuration is invalid; the message names the key."""


def _addresses(v: list) -> list:
    for item in v:
        try:
            ipaddress.ip_address(item)
        except (TypeError, ValueError):
            raise ValueError(f"entry {item!r} is not an IP address") from None
    return v


@dataclass
class ServerSection:
    api_docs: bool = option(default=False)
    trusted_proxies: list[str] = option(_addresses, default_factory=list)


@dataclass
class LimitsSection:
    # A device taps at human speed: a tap is at most a card lookup and a profile lookup.
    device_per_min: float = option(between(0, 1e6), default=30.0)
    device_burst: int = option(between(1, 1_000_000), default=20)
    # Several MFPs of a space may share one public address (NAT).
    source_per_min: float = option(between(0, 1e6), default=120.0)
    source_burst: int = option(between(1, 1_000_000), default=40)
    enrol_per_min: float = option(between(0, 1e6), default=10.0)
    enrol_burst: int = option(between(1, 1_000_000), default=10)


@dataclass
class CloudConfig(Config):
    server: ServerSection = field(default_factory=ServerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)


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
    if path is not None:
        config_schema.apply(cfg, config_schema.read_toml(path, ConfigError), str(path), ConfigError)
    return cfg


def from_dict(data: dict) -> CloudConfig:
    """A config from defaults plus `data` (tests, the lab)."""
    cfg = CloudConfig()
    config_schema.apply(cfg, data, "config", ConfigError)
    return cfg
