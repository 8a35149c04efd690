"""The lab: the whole system on one machine, as network namespaces running real daemons.

`up` is idempotent (builds what is missing, starts what is not running); `down` stops every
process the lab started (by PID), removes every namespace and mount it made, and deletes its state
directory, so that nothing of it remains.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lab.host import Host, LabError, host_env, release_mnt_dir, sh
from lab.layout import LabLayout
from lab.options import LabOptions
from lab.procs import Supervisor
from lab.services import Service, default_services
from lab.topology import Topology, build


class Lab:
    def __init__(self, layout: LabLayout | None = None, topology: Topology | None = None,
                 services: list[Service] | None = None, options: LabOptions | None = None):
        from lab.orgs import contracted

        self.layout = layout or LabLayout.from_env()
        self.procs = Supervisor(self.layout.procs_dir)
        self.options = options or LabOptions.load(self.layout.root)
        self.topology = topology or build(contracted(self.options.extra_orgs), mfp=self.options.mfp)
        if services is None:
            services = default_services(self.options)
            if self.options.mfp == "vm":  # the MFP is a QEMU guest: its firmware, pcscd and panel are its own
                from lab.services.mfp_vm import vm_services

                services = vm_services(services)
        self.services = services

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise LabError(f"no service {name!r} in this lab")

    def host(self, name: str) -> Host:
        if name not in self.topology.hosts:
            raise LabError(f"no host {name!r} in the lab (hosts: {', '.join(self.topology.hosts)})")
        return Host(self.layout, name)

    def address(self, host: str, iface: str = "eth0") -> str:
        return self.topology.address(host, iface)

    def spawn(self, key: str, host: str, cmd: list[str], **kw):
        """Start `cmd` on `host` as lab process `key` (log in the lab's logs dir)."""
        kw.setdefault("log", self.layout.logs_dir / f"{key}.log")
        kw["env"] = host_env(kw.get("env"))
        return self.procs.spawn(key, self.host(host).argv(cmd), **kw)

    # -- lifecycle ---------------------------------------------------------------------------

    def up(self) -> dict:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.root.chmod(0o711)  # traversable (cupsd filters run as lp), not listable
        self.options.save(self.layout.root)
        for name in self.topology.hosts:
            self.host(name).create()
        self._wire()
        for service in self.services:
            service.start(self)
        return self.status()

    def _wire(self) -> None:
        t = self.topology
        for br in t.bridges:
            h = self.host(br.host)
            if not _link_exists(h, br.name):
                h.run(["ip", "link", "add", br.name, "type", "bridge"])
                h.run(["ip", "addr", "add", br.cidr, "dev", br.name])
            h.run(["ip", "link", "set", br.name, "up"])
        for link in t.links:
            a, b = self.host(link.a.host), self.host(link.b.host)
            if not _link_exists(a, link.a.name):
                sh(["ip", "link", "add", link.a.name, "netns", a.ns, "type", "veth",
                    "peer", "name", link.b.name, "netns", b.ns])
                for end, h in ((link.a, a), (link.b, b)):
                    if end.cidr:
                        h.run(["ip", "addr", "add", end.cidr, "dev", end.name])
                    if end.bridge:
                        h.run(["ip", "link", "set", end.name, "master", end.bridge])
            for end, h in ((link.a, a), (link.b, b)):
                h.run(["ip", "link", "set", end.name, "up"])
        for name in t.routers:
            self.host(name).run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for r in t.routes:
            self.host(r.host).run(["ip", "route", "replace", r.dst, "via", r.via])

    def down(self) -> dict:
        stopped = []
        for service in reversed(self.services):
            try:
                service.stop(self)
            except Exception as exc:  # keep tearing down: down must leave nothing behind
                stopped.append(f"{service.name}: stop failed: {exc}")
        stopped += self.procs.stop_all()
        for name in self.topology.hosts:
            Host(self.layout, name).destroy()
        # Namespaces with our prefix that the topology no longer lists (an older lab) go too.
        for ns in _namespaces(self.layout.prefix):
            sh(["ip", "netns", "del", ns], check=False)
        release_mnt_dir(self.layout)
        if self.layout.root.exists():
            shutil.rmtree(self.layout.root)
        return {"down": True, "stopped": stopped, "leftovers": self.leftovers()}

    def leftovers(self) -> dict:
        """What of this lab still exists on the machine (empty lists after a clean `down`)."""
        mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(self.layout.root) in line]
        return {
            "namespaces": _namespaces(self.layout.prefix),
            "mounts": mounts,
            "processes": [r.key for r in self.procs.records() if r.alive()],
            "state_dir": self.layout.root.exists(),
        }

    def status(self) -> dict:
        hosts = {}
        for name in self.topology.hosts:
            h = Host(self.layout, name)
            hosts[name] = {"up": h.exists(), "ns": h.ns}
        return {
            "lab": {"prefix": self.layout.prefix, "dir": str(self.layout.root),
                    "up": all(v["up"] for v in hosts.values())},
            "mfp": self.mfp_view(),
            "hosts": hosts,
            "services": {s.name: _safe_status(self, s) for s in self.services},
            "processes": {r.key: {"pid": r.pid, "alive": r.alive()} for r in self.procs.records()},
        }

    def mfp_view(self) -> dict:
        """Where the MFP runs: {"kind": "netns", "host", "address"} or the guest's view (mfp_vm)."""
        if self.options.mfp == "vm":
            try:
                return self.service("firmware").mfp_view(self)
            except Exception as exc:  # status never fails for a part of it
                return {"kind": "vm", "error": str(exc)}
        return {"kind": "netns", "host": "office", "address": self.topology.mfp_address}


def _safe_status(lab: Lab, service: Service) -> dict:
    try:
        return service.status(lab)
    except Exception as exc:
        return {"error": str(exc)}


def _link_exists(host: Host, name: str) -> bool:
    return host.run(["ip", "link", "show", name], check=False).returncode == 0


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}-")]
