"""charon daemons of the lab: the MFP's on `office`, each org gateway's on `gw-<org>`.

Each charon runs on its host with the host's own /run, so `/usr/lib/ipsec/charon`'s hardcoded
/run/charon.pid and the VICI socket /run/charon.vici are per host; the root namespace drives it
through `host.path('/run/charon.vici')`. `STRONGSWAN_CONF` points at a generated strongswan.conf
in the service's data dir. Before a start (and after a stop) the leftovers of an earlier, possibly
killed, charon are flushed: stale pid file and socket, XFRM state, table-220 routes and rules, TUN.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from hal.net.addresses import flush_stale_ipsec
from hal.tunnel import detect_backend
from hal.tunnel.charon_conf import strongswan_conf
from lab.host import LabError

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "/usr/sbin/swanctl"
VICI = "/run/charon.vici"


def _vici_ready(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class _CharonService:
    name: str
    host_name: str

    def backend(self) -> str:
        raise NotImplementedError

    def conf_text(self, lab) -> str:
        raise NotImplementedError

    def vici_socket(self, lab) -> Path:
        """The root-namespace path of this charon's VICI socket."""
        return lab.host(self.host_name).path(VICI)

    def conf_dir(self, lab) -> Path:
        d = lab.layout.data_dir(self.name)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        return d

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        if self.running(lab):
            return
        host = lab.host(self.host_name)
        self._clear_stale(lab)
        conf = self.conf_dir(lab) / "strongswan.conf"
        conf.write_text(self.conf_text(lab))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "STRONGSWAN_CONF": str(conf)}
        lab.spawn(self.name, self.host_name, [CHARON], env=env)
        deadline = time.monotonic() + 15
        sock = self.vici_socket(lab)
        while not _vici_ready(sock):
            if not self.running(lab):
                raise LabError(f"{self.name}: charon exited at start (log: {lab.layout.logs_dir / (self.name + '.log')})")
            if time.monotonic() > deadline:
                lab.procs.stop(self.name)
                raise LabError(f"{self.name}: VICI socket {sock} not ready after 15 s")
            time.sleep(0.02)
        self.after_start(lab, host)

    def after_start(self, lab, host) -> None:
        pass

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)
        if lab.host(self.host_name).exists():
            self._clear_stale(lab)

    def kill(self, lab) -> bool:
        """Fault injection: SIGKILL this charon by its recorded PID (the record stays; `start`
        flushes what it left and starts a new one)."""
        return lab.procs.kill(self.name, signal.SIGKILL)

    def _clear_stale(self, lab) -> dict:
        host = lab.host(self.host_name)
        for leftover in (VICI, "/run/charon.pid"):
            host.path(leftover).unlink(missing_ok=True)
        return flush_stale_ipsec(netns=host.ns)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        return {"host": self.host_name, "backend": self.backend(), "running": self.running(lab),
                "pid": rec.pid if rec else None, "vici": str(self.vici_socket(lab)),
                "ready": _vici_ready(self.vici_socket(lab))}


class MfpCharonService(_CharonService):
    """The MFP's charon on `office`: empty at start; the firmware loads one org at a time over VICI."""

    name = "mfp-charon"
    host_name = "office"

    def __init__(self, backend: str | None = None):
        self._backend = backend

    def backend(self) -> str:
        if self._backend is None:
            self._backend = detect_backend()
        return self._backend

    def conf_text(self, lab) -> str:
        return strongswan_conf(self.backend(), vici_socket=VICI)


class GatewayService(_CharonService):
    """Org `org`'s VPN gateway on `gw-<org>`: charon with the config from org/gateway_config.py,
    loaded with `swanctl --load-all --file` (the file, holding the PSKs, is mode 0600 in the
    service's data dir; nothing secret is on a command line)."""

    def __init__(self, org: str, backend: str | None = None, *, device_ca_pem: str = "", cert_mode: bool = False):
        self.org = org
        self.name = f"gateway-{org}"
        self.host_name = f"gw-{org}"
        self._backend = backend
        self.device_ca_pem = device_ca_pem  # set: the MFP in certificate mode (lab.orgs.org_gateway)
        self.cert_mode = cert_mode  # certificate mode with the lab cloud's space CA

    def backend(self) -> str:
        if self._backend is None:
            self._backend = detect_backend()
        return self._backend

    def _gateway(self, lab):
        from lab.orgs import org_gateway, space_device_ca

        ca = self.device_ca_pem or (space_device_ca(lab) if self.cert_mode else "")
        return org_gateway(lab, self.org, self.backend(), device_ca_pem=ca)

    def conf_text(self, lab) -> str:
        from org.gateway_config import strongswan_conf as gw_conf

        return gw_conf(self._gateway(lab), vici_socket=VICI)

    def after_start(self, lab, host) -> None:
        from org.gateway_config import swanctl_conf, write_credential_files

        path = self.conf_dir(lab) / "swanctl.conf"
        gw = self._gateway(lab)
        # certificate mode: swanctl loads them from beside the file given with --file
        write_credential_files(gw, self.conf_dir(lab))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(swanctl_conf(gw))
        # Desk PCs on the LAN ARP for MFP virtual IPs in the pool: farp answers for established
        # SAs; rp_filter off because decrypted packets enter through ipsec0 with LAN sources.
        for key in ("all", "default"):
            host.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
        proc = host.run([SWANCTL, "--load-all", "--noprompt", "--uri", f"unix://{VICI}", "--file", str(path)],
                        check=False)
        if proc.returncode != 0:
            out = proc.stdout.decode(errors="replace")[-400:]
            lab.procs.stop(self.name)
            raise LabError(f"{self.name}: swanctl --load-all failed: {out}")
