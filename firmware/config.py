"""The firmware's configuration: one validated schema, unknown keys are errors
(`tenantprint.config_schema`).

Layers, later wins: built-in defaults -> the config file (`/etc/tenantprint/firmware.toml`, TOML) ->
the enrolment record written at first boot (`<device.state_dir>/enrolment.json`: device id, cloud URL,
CA). No org secret is ever configured: those come from the cloud at run time, per session.
`tenantprint firmware --dump-config` prints the merged result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantprint import config_schema
from tenantprint.config_schema import Config, between, one_of, option

# The device's own certificate files in its state dir (firmware/device_cert.py keeps them; the
# secret keeper hands them to charon and RadSec): names only here, so the keeper imports nothing heavy
DEVICE_KEY_FILE, DEVICE_CERT_FILE, SPACE_CA_FILE = "ike.key", "device-cert.pem", "space-ca.pem"

DEFAULT_PATH = Path("/etc/tenantprint/firmware.toml")


class ConfigError(config_schema.ConfigError):
    """The configuration is invalid; the message names the key."""


def _kinds(v: str) -> str:
    kinds = v.split(",")
    if not kinds or any(k not in ("pcsc", "nfcpy", "wedge") for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError("must be pcsc, nfcpy or wedge, or several of them separated by commas")
    return v


def _abs_path(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError("must be an absolute path")
    return v


def _url(v: str) -> str:
    # https only: the cloud's answers carry org secrets, and its certificate is what tells the
    # device it talks to its directory and not to whoever sits on the office LAN
    if v and not re.match(r"^https://[^\s/]+(/\S*)?$", v):
        raise ValueError("must be an https URL")
    return v


def _tcti(v: str) -> str:
    from hal.tpm import check_tcti

    return check_tcti(v)


def _dbus(v: str) -> str:
    from hal.tpm import check_dbus

    return check_dbus(v)


def _handle(v: str) -> str:
    from hal.tpm import check_handle

    check_handle(v)
    return v


@dataclass
class DeviceSection:
    state_dir: str = option(_abs_path, default="/var/lib/tenantprint")
    device_id: str = option(default="")
    # where the device's certificate key (IKE, RadSec; DEVICE_KEY_FILE) lives: "file", a PEM file in
    # state_dir; "tpm", made inside the TPM 2.0 and never out of it (hal/tpm: state_dir then holds a
    # reference that is useless without that TPM). The cloud-signing key stays a file (Ed25519).
    key_store: str = option(one_of("file", "tpm"), default="file")
    # tpm: how to reach it (a TSS2 TCTI config; the kernel's resource manager on the Pi) and the
    # persistent handle of the key in it
    tpm_tcti: str = option(_tcti, default="device:/dev/tpmrm0")
    tpm_dbus: str = option(_dbus, default="")  # the tabrmd TCTI's bus (the lab's broker); "": none
    tpm_handle: str = option(_handle, default="0x81010002")


@dataclass
class CloudSection:
    url: str = option(_url, default="")
    ca_file: str = option(default="")
    timeout_s: float = option(between(0.5, 60), default=5.0)
    # The idle spare keeper keeps its connection to the directory open with a health check this
    # often (under the directory's keep-alive, 30 s), so a tap's lookup is one round trip; 0: none.
    keep_warm_s: float = option(between(0, 600), default=20.0)


@dataclass
class CardSection:
    # one reader kind or several, comma-separated (each read at once): pcsc, nfcpy, wedge
    kind: str = option(_kinds, default="pcsc")
    reader: str = option(default="")  # pcsc: substring of the reader name; empty = any
    nfc_path: str = option(default="usb")  # nfcpy device path
    # wedge: the keyboard-wedge reader's input device (a /dev/input/by-id path), or part of its name
    wedge_device: str = option(default="")
    wedge_name: str = option(default="")


@dataclass
class TunnelSection:
    backend: str = option(one_of("auto", "kernel", "libipsec"), default="auto")
    up_timeout_s: float = option(between(1, 120), default=15.0)
    # TCP initial congestion window (segments) on the tunnel's routes; 0 leaves the kernel's 10.
    initcwnd: int = option(between(0, 256), default=32)


@dataclass
class SessionSection:
    tmpfs_dir: str = option(_abs_path, default="/run/tenantprint/session")
    tmpfs_size_mb: int = option(between(4, 4096), default=64)
    ipp_port: int = option(between(1, 65535), default=631)


def check_driver(v: str) -> str:
    from hal.printer.driver_engine import check_driver as check  # (not in every keeper's memory)

    return check(v)


def check_uri(uri: str, driver: str) -> None:
    from hal.printer.engine_finder import check_uri as check

    check(uri, driver)


def _link_net(v: str) -> str:
    from hal.sandbox import SandboxError, link_for

    try:
        link_for(v, 31)  # room for 32 sandboxes: sessions.max, a spare and the ones still purging
    except SandboxError as exc:
        raise ValueError(str(exc)) from None
    return v


@dataclass
class SessionsSection:
    """Many organizations at once: each session in its own sandbox (`firmware/sandboxes.py`)."""
    max: int = option(between(1, 16), default=4)       # open sessions at once
    link_net: str = option(_link_net, default="100.64.200.0/24")  # one /30 per sandbox link
    run_root: str = option(_abs_path, default="/run/tenantprint/sandboxes")
    uplink: str = option(default="")  # the interface the sandboxes' doors leave by; "": the route's


@dataclass
class PrinterSection:
    # "auto": a USB printer through ipp-usb; or ipp://host[:port]/path (hal/printer/engine_finder.py);
    # with `driver`, the printer's CUPS device URI (usb://...): checked with `driver` by `_check_printer`
    engine_uri: str = option(default="auto")
    # a printer that needs a driver: its CUPS model (drv:///..., `lpinfo -m`), "" for a driverless one
    driver: str = option(check_driver, default="")
    # released documents on their way to the engine (root only; on /run: gone at power-off)
    spool_dir: str = option(_abs_path, default="/run/tenantprint/engine")
    # how long a released job waits for an engine that cannot be reached before it is given up
    engine_give_up_s: float = option(between(10, 86400), default=3600.0)


@dataclass
class ClockSection:
    # no session opens until the clock is synchronised to network time (hal/clock): TLS and IKE
    # check validity periods against it. Off only where the host's clock is known good without
    # NTP on the device itself (the namespace lab shares its machine's clock).
    require_sync: bool = option(default=True)
    # how often the clock is asked while it is not synchronised yet
    check_every_s: float = option(between(0.2, 60), default=1.0)


@dataclass
class RuntimeSection:
    status_socket: str = option(_abs_path, default="/run/tenantprint/firmware.sock")
    pin_timeout_s: float = option(between(5, 600), default=30.0)


def _panel_kinds(v: str) -> str:
    kinds = v.split(",")
    if v == "none":
        return v
    if any(k not in ("web", "keypad") for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError("must be web, keypad, both separated by a comma, or none")
    return v


def _loopback_listen(v: str) -> str:
    import ipaddress
    host, _, port = v.rpartition(":")
    try:
        if not ipaddress.ip_address(host.strip("[]")).is_loopback or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ValueError("must be a loopback address and port, e.g. 127.0.0.1:8650") from None
    return v


@dataclass
class PanelSection:
    """The operation panel (hal/panel): what a person at the MFP sees and touches."""
    kind: str = option(_panel_kinds, default="web")
    socket: str = option(_abs_path, default="/run/tenantprint/panel.sock")  # the panel API (firmware/panel_api.py)
    socket_group: str = option(default="")   # the panel service's group (device: tenantprint-panel); "": root only
    listen: str = option(_loopback_listen, default="127.0.0.1:8650")        # the web panel (loopback only)
    language: str = option(one_of("en", "ja"), default="en")
    return_s: float = option(between(5, 600), default=30.0)  # a screen goes back to idle after this
    keypad_device: str = option(default="")  # a USB keypad: an event device path, or part of its name


def _cidrs(v: list) -> list:
    from hal.net.firewall import management_networks

    management_networks(v)  # raises ValueError naming the bad entry
    return v


@dataclass
class FirewallSection:
    # Addresses (CIDR) that may reach ssh (tcp 22) on the device; empty: no ssh at all.
    management: list[str] = option(_cidrs, default_factory=list)


@dataclass
class FirmwareConfig(Config):
    device: DeviceSection = field(default_factory=DeviceSection)
    cloud: CloudSection = field(default_factory=CloudSection)
    card: CardSection = field(default_factory=CardSection)
    tunnel: TunnelSection = field(default_factory=TunnelSection)
    session: SessionSection = field(default_factory=SessionSection)
    sessions: SessionsSection = field(default_factory=SessionsSection)
    printer: PrinterSection = field(default_factory=PrinterSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    panel: PanelSection = field(default_factory=PanelSection)
    firewall: FirewallSection = field(default_factory=FirewallSection)
    clock: ClockSection = field(default_factory=ClockSection)


def device_tpm(cfg: "FirmwareConfig"):
    """The device's TPM (`hal.tpm.TpmConfig`) when its key store is the TPM, else None."""
    if getattr(cfg.device, "key_store", "file") != "tpm":  # (a stand-in config without it: file)
        return None
    from hal.tpm import TpmConfig, check_handle

    return TpmConfig(tcti=cfg.device.tpm_tcti, key_handle=check_handle(cfg.device.tpm_handle),
                     dbus_address=cfg.device.tpm_dbus)


def load(path: Path | None = DEFAULT_PATH, *, required: bool = False) -> FirmwareConfig:
    """Defaults, then the file at `path` (if it exists, or error if `required`), then enrolment."""
    cfg = FirmwareConfig()
    if path is not None and (required or path.exists()):
        _apply(cfg, config_schema.read_toml(path, ConfigError), str(path))
    enrolment = Path(cfg.device.state_dir) / "enrolment.json"
    if enrolment.exists():
        try:
            record = json.loads(enrolment.read_text())
        except ValueError as exc:
            raise ConfigError(f"{enrolment}: {exc}") from None
        _apply(cfg, _enrolment_layer(record, enrolment), str(enrolment))
    _check_printer(cfg, str(path))
    return cfg


def _apply(cfg: FirmwareConfig, data: Any, origin: str) -> None:
    config_schema.apply(cfg, data, origin, ConfigError)


def _check_printer(cfg: FirmwareConfig, origin: str) -> None:
    """The engine URI, checked with the driver (two keys that only make sense together)."""
    try:
        check_uri(cfg.printer.engine_uri, cfg.printer.driver)
    except ValueError as exc:
        raise ConfigError(f"{origin}: printer.engine_uri {exc}") from None


def _enrolment_layer(record: Any, where: Path) -> dict:
    if not isinstance(record, dict) or not {"device_id", "cloud_url"} <= set(record):
        raise ConfigError(f"{where}: not an enrolment record")
    layer: dict = {"device": {"device_id": record["device_id"]}, "cloud": {"url": record["cloud_url"]}}
    if record.get("ca_file"):
        layer["cloud"]["ca_file"] = record["ca_file"]
    return layer


def from_dict(data: dict) -> FirmwareConfig:
    """A config from defaults plus `data` (tests, the lab)."""
    cfg = FirmwareConfig()
    _apply(cfg, data, "config")
    _check_printer(cfg, "config")
    return cfg
