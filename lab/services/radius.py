"""The lab's RADIUS servers: a private FreeRADIUS per org on `lan-<org>` (10.20.0.50:1812).

The config comes from org/radius_config.py with the lab's users (lab/users.py) and the org's
RADIUS secret (lab/orgs.py, a canary); it is written mode 0600 into the service's data dir in the
lab's state dir, so no secret is on a command line. Its RADIUS clients are the MFP virtual-IP pool
the org's gateway hands out (plus `extra_clients`, e.g. a test client on the gateway's LAN side).

`start` is idempotent and returns once FreeRADIUS has bound its socket ("Ready to process
requests"); `stop` stops it by its recorded PID. Stop then start is the lab's "radius-stop" fault;
`kill` is the SIGKILL variant.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from lab.host import LabError
from org.radius_config import OrgRadius, write_config_dir

FREERADIUS = "/usr/sbin/freeradius"
READY = b"Ready to process requests"
START_TIMEOUT_S = 10.0


class RadiusService:
    def __init__(self, org: str, secret: str | bytes | None = None, *, port: int = 1812,
                 extra_clients: tuple[str, ...] = (), reject_delay_s: int = 1, radsec: bool = False):
        self.radsec = radsec  # certificate mode (issue 18): RadSec only, the MFP's device certificate
        self.org = org
        self.name = f"radius-{org}"
        self.host_name = f"lan-{org}"
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.port = port
        self.extra_clients = tuple(extra_clients)
        self.reject_delay_s = reject_delay_s

    def __repr__(self) -> str:
        return f"RadiusService({self.org!r}, port={self.port})"

    def address(self, lab) -> str:
        return lab.address(self.host_name)

    def conf_dir(self, lab) -> Path:
        return lab.layout.data_dir(self.name)

    def log_path(self, lab) -> Path:
        return lab.layout.logs_dir / f"{self.name}.log"

    def org_radius(self, lab) -> OrgRadius:
        from dataclasses import replace

        from lab.orgs import POOL, org_secrets
        from lab.sun_cards import cards_of
        from lab.users import users_of

        secret = self._secret if self._secret is not None else org_secrets(lab, self.org)["radius"].encode()
        cards = cards_of(lab, self.org)
        tls = dict(radsec=self._radsec_listener(lab), radsec_only=True) if self.radsec else {}
        return OrgRadius(**tls,
            org_id=self.org, secret=secret, clients=(POOL, *self.extra_clients),
            # each user's issued card (lab/sun_cards.py), as `tenantprint org card issue` registers it
            users=tuple(replace(u.radius_user(), card=cards.get(u.user_id)) for u in users_of(self.org)),
            listen_address=self.address(lab), port=self.port, reject_delay_s=self.reject_delay_s,
        )

    def _radsec_listener(self, lab):
        """The RadSec listener: the server's certificate from the org's CA (lab.orgs.org_ca) for
        its address, the space's device CA for the clients, the lab's one MFP allowed."""
        from lab.orgs import DEVICE_ID, radius_server_identity, space_device_ca
        from org.radius_config import RadsecListener, write_radsec_files

        d = self.conf_dir(lab) / "radsec"
        listener = RadsecListener(str(d / "server.pem"), str(d / "server.key"), str(d / "space-device-ca.pem"),
                                  allowed_clients=(DEVICE_ID,))
        ident = radius_server_identity(lab, self.org)
        write_radsec_files(listener, ident.cert_pem(), ident.key_pem(), space_device_ca(lab))
        return listener

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        if self.running(lab):
            return
        d = write_config_dir(self.org_radius(lab), self.conf_dir(lab))
        log = self.log_path(lab)
        offset = log.stat().st_size if log.exists() else 0
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        lab.spawn(self.name, self.host_name, [FREERADIUS, "-f", "-l", "stdout", "-d", str(d)], env=env, log=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready(log, offset):
            if not self.running(lab):
                raise LabError(f"{self.name}: freeradius exited at start (log: {log})")
            if time.monotonic() > deadline:
                lab.procs.stop(self.name)
                raise LabError(f"{self.name}: not ready after {START_TIMEOUT_S:g} s (log: {log})")
            time.sleep(0.02)

    @staticmethod
    def _ready(log: Path, offset: int) -> bool:
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                return READY in f.read()
        except OSError:
            return False

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def kill(self, lab) -> bool:
        """Fault injection: SIGKILL the server by its recorded PID (the record stays)."""
        return lab.procs.kill(self.name, signal.SIGKILL)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        return {"host": self.host_name, "address": f"{self.address(lab)}:{self.port}",
                "running": self.running(lab), "pid": rec.pid if rec else None}
