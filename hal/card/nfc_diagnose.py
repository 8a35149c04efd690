"""Why an nfcpy reader cannot be opened, in words for the status and the panel.

nfcpy only says ENODEV (nothing found, or a partial path such as `usb` whose every candidate failed),
EBUSY or EACCES. What holds a USB reader is in sysfs, as nfcpy's own `python -m nfc` finds it: the
driver bound to the device's interface 0 is a kernel NFC driver (`pn533_usb` for the ACR122U and
PN533 readers, `port100` for the RC-S380) or `usbfs` (a user-space program through libusb: pcscd
with libccid, usually).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

SYSFS_USB = Path("/sys/bus/usb/devices")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
KERNEL_NFC_DRIVERS = ("pn533_usb", "port100", "pn533", "nfcmrvl", "st_nci")


def _usb_ids(path: str) -> tuple[int | None, int | None]:
    """(vendor, product) a `usb:vvvv[:pppp]` path names; None where it does not."""
    parts = path.split(":")
    if len(parts) < 2 or len(parts[1]) != 4:
        return None, None  # `usb` or `usb:bus:dev` (3-digit decimals)
    vendor = int(parts[1], 16)
    product = int(parts[2], 16) if len(parts) > 2 and len(parts[2]) == 4 else None
    return vendor, product


def _known_readers() -> set[tuple[int, int]]:
    try:
        from nfc.clf.device import usb_device_map
        return set(usb_device_map)
    except ImportError:  # pragma: no cover - nfcpy is what uses this
        return set()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def usb_readers(path: str, sysfs: Path = SYSFS_USB) -> list[tuple[str, str]]:
    """(sysfs entry, interface 0 driver or "") of each plugged USB reader nfcpy knows that `path`
    could mean."""
    vendor, product = _usb_ids(path)
    known = _known_readers()
    found = []
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return []
    for entry in entries:
        if ":" in entry or entry.startswith("usb"):
            continue
        try:
            vid, pid = int(_read(sysfs / entry / "idVendor"), 16), int(_read(sysfs / entry / "idProduct"), 16)
        except ValueError:
            continue
        if (vid, pid) not in known and (vendor is None or vid != vendor):
            continue
        if (vendor is not None and vid != vendor) or (product is not None and pid != product):
            continue
        link = sysfs / f"{entry}:1.0" / "driver"
        driver = os.path.basename(os.readlink(link)) if link.is_symlink() else ""
        found.append((entry, driver))
    return found


def problem(path: str, exc: BaseException | None, *, sysfs: Path = SYSFS_USB,
            pcscd_socket: Path = PCSCD_SOCKET) -> str:
    """A short cause for a failed open of `path` (the errno text when nothing better is known)."""
    code = getattr(exc, "errno", None)
    if path.startswith("usb"):
        readers = usb_readers(path, sysfs)
        for _entry, driver in readers:
            if driver in KERNEL_NFC_DRIVERS or (driver and driver not in ("usbfs",)):
                return f"kernel driver {driver} bound"
            if driver == "usbfs":
                return "held by pcscd" if pcscd_socket.exists() else "held by another program"
        if not readers:
            return "no NFC reader plugged in"
        if code == errno.EACCES:
            return "no permission on the USB device"
    if code == errno.ENODEV:
        return "no NFC reader found"
    if code == errno.EBUSY:
        return "device busy"
    if code == errno.EACCES:
        return "permission denied"
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}"


def udp_peer_absent(path: str, wait_s: float = 0.05) -> bool:
    """For a `udp:host:port` path: whether nothing listens there (the ICMP port-unreachable a
    connected UDP socket reports). nfcpy's udp driver itself opens whatever the peer, and then
    waits 1 s per technology for answers that never come. A silent or remote peer counts as present."""
    import socket
    parts = path.split(":")
    host = parts[1] if len(parts) > 1 and parts[1] else "localhost"
    port = int(parts[2]) if len(parts) > 2 and parts[2] else 54321
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            sock.settimeout(wait_s)
            sock.send(b"")
            sock.recv(64)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False
