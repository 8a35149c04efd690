"""The MFP's other card readers in the lab, beside the PC/SC one (`lab.services.pcscd`):

- `NfcReaderService` ("nfc-sim"): the far end of nfcpy's `udp` reader driver on the office host
  (`lab.nfc_sim --control`), so the firmware's nfcpy reader (`udp:127.0.0.1:NFC_PORT`) meets Type 2,
  3 and 4 cards and UID-only ones; `lab tap --card type3` presents one through `NfcReaderService.
  present`. What it simulates is below nfcpy's driver: the radio frames a reader exchanges with a card.
- The keyboard-wedge reader: a FIFO on the office host (`WEDGE_FIFO`) that the firmware's wedge reader
  reads `struct input_event` records from, as it would from the reader's evdev device; `type_number`
  writes the key events a wedge reader makes for a number (keys 2 ms apart, then ENTER). What it
  simulates is below evdev: the kernel's input events.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from lab.host import LabError

HOST = "office"
NFC_PORT = 54321
NFC_CONTROL = "/run/tenantprint-nfcsim.sock"
WEDGE_FIFO = "/run/tenantprint-wedge.fifo"
REPO = Path(__file__).resolve().parents[2]


def _call(lab, cmd: dict, timeout: float = 5.0) -> dict:
    path = lab.host(HOST).path(NFC_CONTROL)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(cmd).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    reply = json.loads(line) if line else {"ok": False, "error": "no answer"}
    if not reply.get("ok"):
        raise LabError(f"nfc-sim: {reply.get('error')}")
    return reply


def present(lab, kind: str, user: str | None = None, org: str | None = None, uid_hex: str | None = None) -> None:
    cmd = {"cmd": "present", "card": kind, "user": user, "org": org}
    if uid_hex:
        cmd["uid_hex"] = uid_hex
    _call(lab, cmd)


def remove(lab) -> None:
    _call(lab, {"cmd": "remove"})


def make_fifo(path) -> None:
    """A FIFO at `path` (root's), standing in for an input device: what the lab's wedge reader and
    keypad read recorded `input_event`s from. Kept if it is one already."""
    if not (path.exists() and stat.S_ISFIFO(path.stat().st_mode)):
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)


class NfcReaderService:
    name = "nfc-sim"

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        make_fifo(lab.host(HOST).path(WEDGE_FIFO))  # the wedge reader's stand-in, made before the firmware
        if self.running(lab):
            return
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        lab.spawn(self.name, HOST, [sys.executable, "-m", "lab.nfc_sim", "--port", str(NFC_PORT),
                                    "--control", NFC_CONTROL], env=env, cwd=REPO)
        deadline = time.monotonic() + 10
        while True:
            try:
                _call(lab, {"cmd": "status"}, timeout=1.0)
                return
            except (OSError, ValueError, LabError):
                if not self.running(lab) or time.monotonic() > deadline:
                    raise LabError(f"nfc-sim did not start (log {lab.layout.logs_dir / 'nfc-sim.log'})") from None
                time.sleep(0.05)

    def unplug(self, lab) -> None:
        """The nfcpy reader unplugged: its udp far end stops answering (the FIFO stays)."""
        lab.procs.stop(self.name)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)
        lab.host(HOST).path(WEDGE_FIFO).unlink(missing_ok=True)
        lab.host(HOST).path(NFC_CONTROL).unlink(missing_ok=True)

    def status(self, lab) -> dict:
        return {"host": HOST, "running": self.running(lab), "nfc": f"udp:127.0.0.1:{NFC_PORT}",
                "wedge_fifo": WEDGE_FIFO}


def type_number(lab, number: str, gap_s: float = 0.002) -> None:
    """The key events of a wedge reader typing `number` and ENTER, written to the wedge FIFO."""
    from hal.card.wedge import wedge_events

    fifo = lab.host(HOST).path(WEDGE_FIFO)
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no reader has it open
    try:
        os.write(fd, wedge_events(number, time.time(), gap_s))
    finally:
        os.close(fd)
