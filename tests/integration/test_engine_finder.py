"""`engine_uri = "auto"`: the firmware finds the USB printer ipp-usb serves on loopback (ports 60000
and up), here an ippeveprinter on such a port in the office host's network (ipp-usb itself needs a
USB printer: none here), and says "not connected" while there is none."""

from __future__ import annotations

import time

import pytest

from hal.printer.engine import PrintEngine
from hal.printer.engine_finder import find_ipp_usb
from lab.host import LabError
from lab.services.engine import EngineService, on_office
from prereq import need_binary

PORT = 60003


@pytest.fixture(scope="module")
def usb_shaped(lab):
    need_binary("ippeveprinter", "dbus-daemon")
    svc = EngineService()
    svc.start(lab)  # its D-Bus serves the second printer too
    yield
    lab.procs.stop("ipp-usb-standin")
    svc.stop(lab)


def _start_standin(lab, tmp_path):
    lab.spawn("ipp-usb-standin", "office", ["ippeveprinter", "-r", "off", "-d", str(tmp_path), "-p", str(PORT),
                                            "-f", "image/pwg-raster", "-M", "Tenantprint", "-m", "USB Laser",
                                            "usb-standin"])
    deadline = time.monotonic() + 15
    while on_office(lab, find_ipp_usb) is None:
        if time.monotonic() > deadline:
            raise LabError("the ipp-usb stand-in did not answer")
        time.sleep(0.1)


def test_no_usb_printer_is_not_connected_and_one_plugged_in_later_is_found(lab, usb_shaped, tmp_path):
    engine = PrintEngine("auto", tmp_path / "spool")
    assert on_office(lab, engine.check) is None
    assert engine.condition == "printer-not-connected" and engine.uri == "auto" and "ipp-usb" in engine.problem
    _start_standin(lab, tmp_path)
    state = on_office(lab, engine.check)
    assert engine.uri == f"ipp://127.0.0.1:{PORT}/ipp/print" and engine.condition == ""
    assert state.formats and "application/pdf" not in state.formats and state.raster.format == "image/pwg-raster"
