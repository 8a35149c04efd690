"""Where the print engine is: a configured network printer, or a USB printer through `ipp-usb`.

`ipp-usb` (Debian's driverless IPP-over-USB daemon) serves each IPP-USB printer it finds as an
ordinary IPP printer on the device's loopback, from port 60000 up (`http-min-port`, one port per
printer), at `/ipp/print`. With `engine_uri = "auto"` the firmware asks those ports in order and
takes the first that answers a Get-Printer-Attributes: a printer plugged in later is found by the
next check. Only loopback is ever asked.

`usb://` and the other CUPS backends' URIs are engines only with a driver (`printer.driver`: the
device's own cupsd drives the printer, `driver_engine.py`); without one `check_uri` says what to
configure instead.
"""

from __future__ import annotations

import re

from hal.printer.ipp import IppError, get_printer_attributes

AUTO = "auto"
IPP_USB_PORTS = range(60000, 60008)
IPP_USB_PATH = "/ipp/print"
_IPP_URI = re.compile(r"^ipp://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/\S*$")


_BACKEND_URI = re.compile(r"^[a-z][a-z0-9+.-]*:[^\s]+$")


def check_uri(value: str, driver: str = "") -> str:
    """`value` when it names an engine this firmware can drive (with `driver`: any CUPS backend's
    device URI, the driver printer's); ValueError naming the alternatives."""
    if driver:
        if value == AUTO or not _BACKEND_URI.match(value):
            raise ValueError("a printer with a driver needs its CUPS device URI (e.g. usb://Brother/..., "
                             "as `lpinfo -v` lists it)")
        return value
    if value == AUTO or _IPP_URI.match(value):
        return value
    scheme = value.split(":", 1)[0] if ":" in value else ""
    if scheme == "ipps":
        raise ValueError("ipps:// engines are not supported (the device talks plain IPP to its printer): "
                         "use the printer's ipp:// URI on a LAN only the device shares, or a USB printer")
    raise ValueError(f"{scheme or value!r} is not a print engine this device drives by itself: use \"auto\" (a USB "
                     "printer through ipp-usb, IPP over USB), ipp://host[:port]/path (a network printer that "
                     "speaks IPP Everywhere), or set printer.driver too (usb:// and other CUPS backends: a "
                     "printer that needs a driver)")


def find_ipp_usb(ports=IPP_USB_PORTS, timeout: float = 0.3) -> str | None:
    """The URI of the first IPP-USB printer ipp-usb serves on loopback, or None."""
    for port in ports:
        uri = f"ipp://127.0.0.1:{port}{IPP_USB_PATH}"
        try:
            get_printer_attributes(uri, ["printer-state"], connect_timeout=timeout, read_timeout=2.0)
        except (IppError, OSError):
            continue
        return uri
    return None
