"""The MFP's TPM 2.0 in the lab (`lab up --tpm`, issue 18): swtpm behind tpm2-abrmd on `office`.

A Pi with a TPM HAT has the kernel's resource manager `/dev/tpmrm0`, which many processes use at
once (the firmware, the secret keeper's RadSec client, every session sandbox's charon). The lab's
stand-in is three processes on the office host, each started and stopped by its PID (`lab.procs`),
all state under the lab's data dir (`data/swtpm/`):

- `swtpm socket --tpm2` (package swtpm): the TPM, its NV state in `data/swtpm/state`. It serves one
  connection at a time (measured: a second client blocks until the first closes), and without a
  resource manager each client's transient objects stay loaded;
- `dbus-daemon --session` on `data/swtpm/bus`: the private bus the broker is reached on;
- `tpm2-abrmd --session` (package tpm2-abrmd): the access broker and resource manager in front of
  swtpm, what /dev/tpmrm0 is on the Pi.

The firmware reaches it with the `tabrmd` TCTI on that bus (`config()`: the TCTI and the bus
address, which goes into the environment of tpm2-tools, of openssl's `tpm2` provider and of
charon; charon 5.9.8 takes no other TCTI than device, tabrmd and mssim, so TSS2's `cmd` TCTI, which
would carry the address in its string, is refused). The sockets lie outside any host's /run and /tmp, so the session sandboxes (their own /run and /tmp) reach them too; nothing
stops another lab host from reaching them: in the lab the TPM stands for a chip on the MFP's board,
and the attack tests give the thief a TPM of its own (`SwtpmService("cowork")`), never this one.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from lab.host import LabError

SWTPM = "/usr/bin/swtpm"
ABRMD = "/usr/sbin/tpm2-abrmd"
DBUS = "/usr/bin/dbus-daemon"


TCTI = "tabrmd:bus_type=session"


class SwtpmService:
    """swtpm + a private D-Bus + tpm2-abrmd on `host` (the MFP's `office` unless told otherwise)."""

    def __init__(self, host: str = "office"):
        self.host_name = host
        self.name = "swtpm" if host == "office" else f"swtpm-{host}"

    def dir(self, lab) -> Path:
        d = lab.layout.data_dir(self.name)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        return d

    def bus(self, lab) -> Path:
        return lab.layout.data_dir(self.name) / "bus"

    def config(self, lab, key_handle: int | None = None):
        """How the firmware reaches this TPM (`hal.tpm.TpmConfig`)."""
        from hal.tpm import KEY_HANDLE, TpmConfig

        return TpmConfig(tcti=TCTI, dbus_address=f"unix:path={self.bus(lab)}", key_handle=key_handle or KEY_HANDLE)

    def _keys(self) -> tuple[str, str, str]:
        return f"{self.name}-tpm", f"{self.name}-dbus", f"{self.name}-abrmd"

    def running(self, lab) -> bool:
        return all((r := lab.procs.get(k)) is not None and r.alive() for k in self._keys())

    def start(self, lab) -> None:
        if self.running(lab):
            return
        self.stop(lab)  # a half-started one (a process died): start all three again
        d = self.dir(lab)
        state = d / "state"
        state.mkdir(exist_ok=True)
        sock, bus = d / "swtpm.sock", self.bus(lab)
        for stale in (sock, Path(f"{sock}.ctrl"), bus):
            stale.unlink(missing_ok=True)
        tpm_key, dbus_key, abrmd_key = self._keys()
        # the swtpm TCTI finds the control channel at <path>.ctrl
        lab.spawn(tpm_key, self.host_name, [SWTPM, "socket", "--tpm2", "--flags", "not-need-init,startup-clear",
                                            "--server", f"type=unixio,path={sock}",
                                            "--ctrl", f"type=unixio,path={sock}.ctrl",
                                            "--tpmstate", f"dir={state}"])
        self._wait(lab, lambda: sock.exists() and Path(f"{sock}.ctrl").exists(), "swtpm's sockets", tpm_key)
        lab.spawn(dbus_key, self.host_name, [DBUS, "--session", "--nofork", "--nopidfile",
                                             f"--address=unix:path={bus}"])
        self._wait(lab, bus.exists, "the private D-Bus", dbus_key)
        lab.spawn(abrmd_key, self.host_name, [ABRMD, "--session", "--allow-root", "--flush-all",
                                              f"--tcti=swtpm:path={sock}"],
                  env={"DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}"})
        self._wait(lab, lambda: self._answers(lab), "tpm2-abrmd", abrmd_key)

    def _answers(self, lab) -> bool:
        try:
            proc = subprocess.run(["tpm2_getcap", "properties-fixed"], capture_output=True, timeout=10,
                                  env={"PATH": "/usr/bin:/bin", **self.config(lab).env()})
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def _wait(self, lab, ready, what: str, key: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            rec = lab.procs.get(key)
            if rec is None or not rec.alive():
                self.stop(lab)
                raise LabError(f"{self.name}: {what} exited at start (log: {lab.layout.logs_dir / (key + '.log')})")
            if time.monotonic() > deadline:
                self.stop(lab)
                raise LabError(f"{self.name}: {what} not ready after {timeout:g} s")
            time.sleep(0.05)

    def stop(self, lab) -> None:
        for key in reversed(self._keys()):
            lab.procs.stop(key)

    def status(self, lab) -> dict:
        recs = {k: lab.procs.get(k) for k in self._keys()}
        return {"host": self.host_name, "running": self.running(lab), "tcti": TCTI,
                "bus": str(self.bus(lab)),
                "pids": {k: (r.pid if r else None) for k, r in recs.items()}}


def tpm_charon(name: str, host: str, tpm: SwtpmService | None, backend: str | None = None):
    """A lab charon on `host` (VICI at the host's /run/charon.vici) whose `tpm` plugin reaches `tpm`
    (a SwtpmService), or a plain one (`tpm` None): the tests' MFP, thief and control charons."""
    from lab.services.charon import MfpCharonService

    class TpmCharon(MfpCharonService):
        def conf_text(self, lab) -> str:
            from hal.tunnel.charon_conf import strongswan_conf
            from lab.services.charon import VICI

            return strongswan_conf(self.backend(), vici_socket=VICI,
                                   tpm=tpm.config(lab) if tpm is not None else None)

        def start(self, lab) -> None:
            """As the lab's charons start, with the broker's bus in charon's environment (what
            hal.tunnel.sandbox_charon does for a session's charon)."""
            from lab.services.charon import CHARON, _vici_ready

            if self.running(lab):
                return
            self._clear_stale(lab)
            conf = self.conf_dir(lab) / "strongswan.conf"
            conf.write_text(self.conf_text(lab))
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "STRONGSWAN_CONF": str(conf),
                   **(tpm.config(lab).charon_env() if tpm is not None else {})}
            lab.spawn(self.name, self.host_name, [CHARON], env=env)
            deadline = time.monotonic() + 15
            while not _vici_ready(self.vici_socket(lab)):
                if not self.running(lab) or time.monotonic() > deadline:
                    lab.procs.stop(self.name)
                    raise LabError(f"{self.name}: charon did not start (log: {lab.layout.logs_dir / (self.name + '.log')})")
                time.sleep(0.02)

    charon = TpmCharon(backend)
    charon.name, charon.host_name = name, host
    return charon
