"""The office LAN's NTP server for the VM MFP (`lab up --mfp vm`): `lab.ntp_server` on office's
br-mfp address, the server the guest's systemd-timesyncd is given for its link. `lab fault
ntp-block` stops it and leaves a mark so that nothing starts it again until `ntp-unblock`."""

from __future__ import annotations

import sys

from lab.topology import STAND_INS_ADDRESS

HOST = "office"
PORT = 123


class NtpService:
    name = "ntp"

    def _blocked(self, lab):
        return lab.layout.data_dir("ntp") / "blocked"

    def blocked(self, lab) -> bool:
        return self._blocked(lab).exists()

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        if self.running(lab) or self.blocked(lab):
            return
        lab.spawn(self.name, HOST, [sys.executable, "-m", "lab.ntp_server", "--listen", f"{STAND_INS_ADDRESS}:{PORT}"])

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def block(self, lab, blocked: bool) -> None:
        """NTP stops answering on the office LAN (and stays so), or answers again."""
        mark = self._blocked(lab)
        if blocked:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()
            self.stop(lab)
        else:
            mark.unlink(missing_ok=True)
            self.start(lab)

    def status(self, lab) -> dict:
        return {"running": self.running(lab), "blocked": self.blocked(lab),
                "server": f"{STAND_INS_ADDRESS}:{PORT}"}
