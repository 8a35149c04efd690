"""The MFP's web panel service on the `office` host: `python -m hal.panel`, as the device's
`tenantprint-panel.service` runs it: unprivileged (nobody:nogroup here, the socket's group), on the
host's loopback only, talking to the firmware through its panel socket.

A browser in the lab opens it inside the office host's network namespace (`firmware.panel_url`
in `lab status`; `make demo` prints the command).
"""

from __future__ import annotations

import sys
import time
import urllib.request

from lab.host import LabError
from lab.services.firmware import HOST, PANEL_LISTEN, PANEL_SOCKET, REPO

URL = f"http://{PANEL_LISTEN}/"


class PanelService:
    name = "panel"

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        if self.running(lab):
            return
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": "/nonexistent"}
        lab.spawn(self.name, HOST, ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                    "--no-new-privs", sys.executable, "-m", "hal.panel", "--socket", PANEL_SOCKET,
                                    "--listen", PANEL_LISTEN], env=env, cwd=REPO)
        deadline = time.monotonic() + 15
        while True:
            if self.answers(lab):
                return
            if not self.running(lab) or time.monotonic() > deadline:
                raise LabError(f"the panel service did not start (log {lab.layout.logs_dir / 'panel.log'})")
            time.sleep(0.05)

    def answers(self, lab) -> bool:
        """Whether the panel answers on the office host's loopback (asked from inside that host)."""
        from hal.sandbox.inside import call_in_netns

        def probe() -> bool:
            with urllib.request.urlopen(URL + "screen", timeout=2) as answer:
                return answer.status == 200
        try:
            return call_in_netns(f"/run/netns/{lab.host(HOST).ns}", probe)
        except OSError:
            return False

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        return {"host": HOST, "running": self.running(lab), "url": URL}

