"""The office host's card stack: a private pcscd with vpcd as its reader, and the virtual card.

`PcscdService` ("pcscd") runs `pcscd -f` on the office host. The host has its own /run, so this
pcscd has its own `/run/pcscd/pcscd.comm`; its reader config is a reader.conf.d written into the
lab's state dir holding only vpcd ("Virtual PCD 00 00" on TCP 35963 of the host). vpcd listens on
every interface of the host (it has no option to bind one): lab only, never on a device. In the lab
the device firewall the firmware installs drops it from the office LAN and the tunnels, as it
would on a device (tests/attacks/test_exposure.py).

`VcardService` ("vcard") runs `python -m lab.vcard` on the office host (control socket
`/run/tenantprint-vcard.sock` there); drive it with `lab.vcard.VirtualCard(lab)`.

Code in the root namespace reaches this pcscd through libpcsclite's `PCSCLITE_CSOCK_NAME`
(`pcsc_socket_env(lab)`); libpcsclite reads it once per process, at the first context.

Both `start`s are idempotent and return once the daemon is ready; `stop` stops by recorded PID.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from lab.host import LabError

PCSCD = "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
VPCD_PORT = 35963
HOST = "office"
START_TIMEOUT_S = 10.0
REPO = Path(__file__).resolve().parents[2]

VPCD_READER_CONF = f"""\
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x{VPCD_PORT:04X}
LIBPATH      {VPCD_DRIVER}
CHANNELID    0x{VPCD_PORT:04X}
"""


def pcsc_socket(lab) -> Path:
    """Root-namespace path of the office pcscd's client socket."""
    return lab.host(HOST).path("/run/pcscd/pcscd.comm")


def pcsc_socket_env(lab) -> dict[str, str]:
    """Environment that points libpcsclite (pyscard) in the root namespace at the office pcscd."""
    return {"PCSCLITE_CSOCK_NAME": str(pcsc_socket(lab))}


def _wait(cond, what: str, lab, key: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not cond():
        rec = lab.procs.get(key)
        if not (rec and rec.alive()):
            raise LabError(f"{key}: exited at start ({what}; log: {lab.layout.logs_dir / (key + '.log')})")
        if time.monotonic() > deadline:
            lab.procs.stop(key)
            raise LabError(f"{key}: not ready after {START_TIMEOUT_S:g} s ({what})")
        time.sleep(0.02)


class PcscdService:
    name = "pcscd"

    def conf_dir(self, lab) -> Path:
        return lab.layout.data_dir(self.name) / "reader.conf.d"

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def _vpcd_listening(self, lab) -> bool:
        out = lab.host(HOST).run(["ss", "-Hltn", f"sport = :{VPCD_PORT}"], check=False).stdout
        return bool(out.strip())

    def _socket_ready(self, lab) -> bool:
        path = pcsc_socket(lab)
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True

    def start(self, lab) -> None:
        if self.running(lab):
            return
        if not os.path.exists(VPCD_DRIVER):
            raise LabError(f"vpcd driver {VPCD_DRIVER} missing (apt install vsmartcard-vpcd)")
        # A killed pcscd leaves its pid file and socket; the new one would refuse to start (as
        # systemd's RuntimeDirectory would, clean them: our recorded pcscd is not running).
        for stale in ("pcscd.pid", "pcscd.comm"):
            lab.host(HOST).path(f"/run/pcscd/{stale}").unlink(missing_ok=True)
        d = self.conf_dir(lab)
        d.mkdir(parents=True, exist_ok=True)
        (d / "vpcd").write_text(VPCD_READER_CONF)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        lab.spawn(self.name, HOST, [PCSCD, "-f", "-c", str(d)], env=env)
        _wait(lambda: self._socket_ready(lab) and self._vpcd_listening(lab),
              "pcscd socket and vpcd port", lab, self.name)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def restart(self, lab) -> None:
        self.stop(lab)
        self.start(lab)

    def kill(self, lab) -> bool:
        """Fault injection: SIGKILL pcscd by its recorded PID (the record stays)."""
        return lab.procs.kill(self.name, signal.SIGKILL)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        return {"host": HOST, "running": self.running(lab), "pid": rec.pid if rec else None,
                "socket": str(pcsc_socket(lab))}


class VcardService:
    name = "vcard"

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def _ready(self, lab) -> bool:
        from lab.vcard import VirtualCard
        try:
            VirtualCard(lab).status()
        except (OSError, ValueError):
            return False
        return True

    def start(self, lab) -> None:
        if self.running(lab):
            return
        from lab.vcard import CONTROL_PATH
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
               "PYTHONDONTWRITEBYTECODE": "1"}
        lab.spawn(self.name, HOST, [sys.executable, "-m", "lab.vcard", "--control", CONTROL_PATH],
                  env=env, cwd=REPO)
        _wait(lambda: self._ready(lab), "control socket", lab, self.name)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        out = {"host": HOST, "running": self.running(lab), "pid": rec.pid if rec else None}
        if out["running"]:
            try:
                from lab.vcard import VirtualCard
                out["card"] = VirtualCard(lab).status()
            except (OSError, ValueError) as exc:
                out["card"] = {"error": str(exc)}
        return out
