"""`tenantprint firmware check`: what an operator (or `make image-check` on a booted image) asks a
device before trusting it: is everything the firmware needs here, and what does it find?

Each check is {"name", "ok", "required", "detail"}; the report is {"ok": all required checks ok,
"checks": [...]}. Required: what the firmware cannot serve without whatever is plugged in (its
programs, the shipped units enabled where systemd runs, a tunnel backend). Not required: what
depends on the bench (a reader, a printer, network time, enrolment): said, not failed. Reads only;
starts nothing but the tunnel backend's probe (a dummy XFRM state in a throwaway namespace) and a
look for readers and printers. No secret in the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from firmware.config import FirmwareConfig

PROGRAMS = ("ip", "nft", "unshare", "nsenter", "mount", "cupsd", "swanctl")
CHARON = "/usr/lib/ipsec/charon"
UNITS = ("tenantprint-firmware.service", "tenantprint-enrol.service", "tenantprint-boot-guard.service",
         "tenantprint-reader-setup.service", "pcscd.socket")


def _check(name: str, ok: bool, detail: str, required: bool = True) -> dict:
    return {"name": name, "ok": bool(ok), "required": required, "detail": detail}


def programs() -> dict:
    missing = [p for p in PROGRAMS if shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if not os.access(CHARON, os.X_OK):
        missing.append(CHARON)
    return _check("programs", not missing, "missing: " + ", ".join(missing) if missing else "all present")


def units() -> dict:
    if not Path("/run/systemd/system").is_dir():
        return _check("units", True, "systemd is not the init here: not checked", required=False)
    off = []
    for unit in UNITS:
        proc = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True, timeout=10)
        if proc.stdout.strip() not in ("enabled", "static", "indirect", "alias"):
            off.append(f"{unit} {proc.stdout.strip() or 'unknown'}")
    return _check("units", not off, "not enabled: " + "; ".join(off) if off else "enabled: " + ", ".join(UNITS))


def tunnel(cfg: FirmwareConfig) -> dict:
    from hal.tunnel import detect_backend

    found = detect_backend()
    want = cfg.tunnel.backend
    if want == "kernel" and found != "kernel":
        return _check("tunnel", False, "tunnel.backend = kernel but this kernel takes no ESP state")
    return _check("tunnel", True, f"backend {want if want != 'auto' else found} (kernel ESP: "
                  f"{'yes' if found == 'kernel' else 'no'})")


def enrolment(cfg: FirmwareConfig) -> dict:
    if cfg.device.device_id:
        return _check("enrolment", True, f"enrolled as {cfg.device.device_id}", required=False)
    return _check("enrolment", False, "not enrolled: first boot reads the token from the boot partition",
                  required=False)


def clock() -> dict:
    from hal import clock as hal_clock

    synced = hal_clock.synchronised()
    return _check("clock", synced, "synchronised" if synced else "not synchronised: no session opens until "
                  "network time comes (NTP from DHCP or timesyncd.conf)", required=False)


def reader(cfg: FirmwareConfig) -> dict:
    found: list[str] = []
    for kind in cfg.card.kind.split(","):
        if kind == "pcsc":
            try:
                from smartcard.System import readers

                found += [f"pcsc: {r}" for r in readers()]
            except Exception as exc:  # noqa: BLE001 (pcscd not running, no reader: said)
                found.append(f"pcsc: none ({type(exc).__name__})")
        elif kind == "wedge":
            where = cfg.card.wedge_device
            found.append(f"wedge: {where} {'present' if where and os.path.exists(where) else 'absent'}")
        else:
            found.append(f"{kind}: {cfg.card.nfc_path} (opened by the daemon)")
    usable = any(": none" not in f and "absent" not in f for f in found)
    return _check("reader", usable, "; ".join(found) or "no reader configured", required=False)


def engine(cfg: FirmwareConfig) -> dict:
    from hal.printer.engine_finder import find_ipp_usb

    uri = cfg.printer.engine_uri
    if uri == "auto":
        found = find_ipp_usb()
        return _check("printer", found is not None, f"ipp-usb: {found}" if found else
                      "no USB printer answers through ipp-usb", required=False)
    return _check("printer", True, f"configured: {uri}", required=False)


def run_checks(cfg: FirmwareConfig) -> dict:
    checks = [programs(), units(), tunnel(cfg), enrolment(cfg), clock(), reader(cfg), engine(cfg)]
    return {"ok": all(c["ok"] for c in checks if c["required"]), "checks": checks}
