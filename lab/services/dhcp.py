"""The office LAN's DHCP server for the VM MFP (`lab up --mfp vm`): dnsmasq on office's br-mfp,
DHCP only (no DNS), one fixed lease for the guest's MAC and nothing for anyone else. The guest
configures its network with the image's own systemd-networkd file, as a Pi on a coworking LAN
does: its address, the router (the `inet` host) and the NTP server (office, lab/services/ntp.py)
come from here."""

from __future__ import annotations

from pathlib import Path

from lab.topology import MFP_ADDRESS, MFP_BRIDGE, STAND_INS_ADDRESS

HOST = "office"
LEASE = "1h"


def dnsmasq_argv(data_dir: Path, guest_mac: str, router: str) -> list[str]:
    """dnsmasq as the LAN's DHCP server on br-mfp: DHCP only (port 0: no DNS), the MFP's address
    for `guest_mac` and nothing for any other client, `router` and office's NTP server offered."""
    return [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
        f"--interface={MFP_BRIDGE}", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
        f"--pid-file={data_dir / 'dnsmasq.pid'}", f"--dhcp-leasefile={data_dir / 'leases'}",
        f"--dhcp-range={MFP_ADDRESS},{MFP_ADDRESS},255.255.255.0,{LEASE}",
        f"--dhcp-host={guest_mac},{MFP_ADDRESS}", "--dhcp-ignore=tag:!known",
        f"--dhcp-option=option:router,{router}",
        f"--dhcp-option=option:ntp-server,{STAND_INS_ADDRESS}",
    ]


class DhcpService:
    name = "dhcp"

    def __init__(self, guest_mac: str):
        self.guest_mac = guest_mac

    @staticmethod
    def router(lab) -> str:
        return lab.topology.address("inet", "br-lan")

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        if not self.running(lab):
            d = lab.layout.data_dir(self.name)
            d.mkdir(parents=True, exist_ok=True)
            lab.spawn(self.name, HOST, dnsmasq_argv(d, self.guest_mac, self.router(lab)))

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        return {"running": self.running(lab), "lease": MFP_ADDRESS, "router": self.router(lab),
                "ntp": STAND_INS_ADDRESS}
