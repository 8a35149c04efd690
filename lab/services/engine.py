"""The MFP's print engine in the lab: `ippeveprinter` on the office host (the USB printer's stand-in).

The session cupsd's release queue prints to it at 127.0.0.1:8631 of the office host. ippeveprinter
has no option to bind one address (it listens on every address of the host): the device firewall,
which the firmware installs at start, is what keeps the office LAN and the tunnels away from it, as
it would any other listening socket on a real device (tests/attacks/test_exposure.py).
ippeveprinter needs a D-Bus system bus even with DNS-SD off, so a private `dbus-daemon` runs on the
office host too (the host's own /run holds its socket). Every document the engine prints is kept
(`-k`) and recorded by a small print command with its user, title and size: that record is the
lab's `printed` list.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lab.host import LabError

HOST = "office"
PORT = 8631
RECORDER = """#!/bin/sh
# ippeveprinter's print command: record what reached the engine (the file itself is kept by -k).
size=$(wc -c < "$1")
printf '{"file": "%s", "bytes": %s, "user": "%s", "title": "%s", "format": "%s", "at": %s}\\n' \\
  "$1" "$size" "$IPP_JOB_ORIGINATING_USER_NAME" "$IPP_JOB_NAME" "$CONTENT_TYPE" "$(date +%s.%N)" \\
  >> "$(dirname "$0")/printed.jsonl"
"""


def engine_uri(lab) -> str:
    return f"ipp://127.0.0.1:{PORT}/ipp/print"


def _dir(lab) -> Path:
    d = lab.layout.data_dir("engine")
    (d / "spool").mkdir(parents=True, exist_ok=True)
    return d


def printed_documents(lab) -> list[dict]:
    """Every document that reached the engine, oldest first."""
    path = lab.layout.data_dir("engine") / "printed.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class EngineService:
    name = "engine"

    def _running(self, lab, key: str) -> bool:
        rec = lab.procs.get(key)
        return bool(rec and rec.alive())

    def _answers(self, lab) -> bool:
        probe = lab.host(HOST).run(["ipptool", "-T", "2", engine_uri(lab), "get-printer-attributes.test"],
                                   check=False)
        return probe.returncode == 0

    def start(self, lab) -> None:
        d = _dir(lab)
        host = lab.host(HOST)
        if not self._running(lab, "engine-dbus"):
            host.run(["mkdir", "-p", "/run/dbus"])
            # a bus stopped earlier leaves its socket file: waiting for it would not wait at all
            host.path("/run/dbus/system_bus_socket").unlink(missing_ok=True)
            lab.spawn("engine-dbus", HOST, ["dbus-daemon", "--system", "--nofork", "--nopidfile"])
            deadline = time.monotonic() + 10
            while not host.path("/run/dbus/system_bus_socket").exists():
                if time.monotonic() > deadline:
                    raise LabError("engine: the office D-Bus did not come up")
                time.sleep(0.02)
        if self._running(lab, self.name):
            return
        recorder = d / "record-job"
        recorder.write_text(RECORDER)
        recorder.chmod(0o755)
        lab.spawn(self.name, HOST, ["ippeveprinter", "-r", "off", "-k", "-c", str(recorder),
                                    "-d", str(d / "spool"), "-p", str(PORT),
                                    "-f", "application/pdf,image/pwg-raster,image/jpeg,text/plain",
                                    "-M", "Tenantprint", "-m", "Lab Engine", "tenantprint-engine"])
        deadline = time.monotonic() + 15
        while not self._answers(lab):
            if not self._running(lab, self.name) or time.monotonic() > deadline:
                raise LabError(f"engine: ippeveprinter not answering (log {lab.layout.logs_dir / 'engine.log'})")
            time.sleep(0.1)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)
        lab.procs.stop("engine-dbus")

    def switch_off(self, lab) -> None:
        """The printer switched off: ippeveprinter stops (its D-Bus stays for the restart)."""
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        return {"uri": engine_uri(lab), "running": self._running(lab, self.name),
                "printed": len(printed_documents(lab))}


def serving_engine(lab, spool_dir: Path, poll_s: float = 0.01, report=None, retry_s: float = 1.0):
    """A `PrintEngine` (the firmware's) for the lab's engine, served on a thread inside the office
    host's network (where the engine listens): (engine, stop event). For benchmarks and tests that
    release from their own process as the firmware does; `report(outcome)` hears how jobs end."""
    import threading

    from hal.printer.engine import PrintEngine

    engine = PrintEngine(engine_uri(lab), spool_dir, poll_s=poll_s, retry_s=retry_s)
    stop = threading.Event()
    lab.host(HOST).thread(lambda: engine.serve(stop, report or (lambda outcome: None)), name="lab-engine")
    return engine, stop
