"""A printer that needs a driver (hal/printer/driver_engine.py): the device's own cupsd, on a unix
socket only, with a real driver PPD (cups-filters' HP PCL-XL, `pxlmono.ppd`); a file stands in for
the USB printer (no USB printer here: the `usb` backend is what differs on a device). The print
engine follows a released PDF there to `completed`, the driver's output reaches the "printer", and
the job is purged from that cupsd's history right after."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from hal.printer.driver_engine import DriverQueue
from hal.printer.engine import PrintEngine, ReleasedJob
from hal.printer.ipp import call, encode_get_jobs, job_groups
from prereq import need_binary, need_root

DRIVER = "/usr/share/ppd/cupsfilters/pxlmono.ppd"  # a PPD file (drv:/// names need cups-driverd: the `cups` package, not installed here)
DOC = "/usr/share/cups/data/default-testpage.pdf"


# The USB printer's stand-in: a CUPS backend (run by cupsd as on a device) that writes what the driver
# made to a file. cupsd finds it through a ServerBin of its own: CUPS's programs linked, plus it.
BACKEND = """#!/bin/sh
[ $# -eq 0 ] && { echo 'direct tpprinter "Unknown" "test printer"'; exit 0; }
cat > "$(dirname "$0")/../../printer/usb-printer.out" || exit 1
"""


@pytest.fixture
def driver_queue():
    need_root()
    need_binary("cupsd", "gs")
    base = Path("/run/tenantprint-test-driver")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o711)
    out = base / "printer"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the backend runs as lp
    server_bin = base / "cups-bin"
    (server_bin / "backend").mkdir(parents=True, mode=0o755)
    for sub in Path("/usr/lib/cups").iterdir():
        if sub.name != "backend":
            (server_bin / sub.name).symlink_to(sub)
    backend = server_bin / "backend" / "tpprinter"
    backend.write_text(BACKEND)
    backend.chmod(0o755)
    dq = DriverQueue(base / "cupsd", "tpprinter://usb-standin", DRIVER, server_bin=str(server_bin))
    dq.start()
    yield dq, out / "usb-printer.out"
    dq.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_a_released_pdf_prints_through_the_driver_and_leaves_no_history(driver_queue, tmp_path):
    dq, printer = driver_queue
    assert b"PCL" in (dq.model() or b"")  # the driver's PPD: what the sessions' inbound queue shows desks
    engine = PrintEngine(dq.uri, tmp_path / "spool", poll_s=0.02, unix_socket=str(dq.socket_path), keeper=dq.ensure)
    assert dq.prefix[:2] == ["/usr/bin/unshare", "--net"]  # the driver's filters have no network
    state = engine.check()
    assert state is not None and "application/pdf" in state.formats  # cupsd converts with the driver
    job = ReleasedJob(tag="1-7", session=1, org="acme", job_id=7, user="alice", title="Quarterly report",
                      document_format="application/pdf", released_at=time.time())
    engine.take(job, Path(DOC))
    outcomes, stop = [], threading.Event()
    t = threading.Thread(target=engine.serve, args=(stop, lambda o: (outcomes.append(o), stop.set())), daemon=True)
    t.start()
    t.join(60)
    assert [(o.printed, o.state) for o in outcomes] == [(True, "completed")]
    data = printer.read_bytes()
    assert data.startswith(b"\x1b%-12345X") and b"PCL XL" in data[:2000]  # the printer's own language
    answer = call(dq.uri, encode_get_jobs(dq.uri, "root", ["job-id", "job-name"], which_jobs="all"),
                  unix_socket=str(dq.socket_path))
    assert job_groups(answer) == []  # purged from the driver cupsd's history at once
    assert engine.history_kept == 0
    dq.stop()  # the driver's cupsd gone (a crash): the engine's next look starts it again
    assert engine.check() is not None and dq.running()
    assert list((tmp_path / "spool").iterdir()) == []
