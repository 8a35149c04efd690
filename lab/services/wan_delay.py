"""`lab up --wan-rtt-ms N`: every packet between the office LAN and the WAN waits N/2 ms each way
in `lab.wan_delay` on the `inet` router (a userspace stand-in for netem, which this kernel lacks)."""

from __future__ import annotations

import sys
import time

from lab.topology import OFFICE_LAN, WAN

DEV = "wdelay0"
TABLE = "100"


class WanDelayService:
    name = "wan-delay"

    def __init__(self, rtt_ms: float):
        self.rtt_ms = rtt_ms

    def start(self, lab) -> None:
        rec = lab.procs.get(self.name)
        if rec is not None and rec.alive():
            return
        inet = lab.host("inet")
        if inet.run(["ip", "link", "show", DEV], check=False).returncode != 0:
            inet.run(["ip", "tuntap", "add", "dev", DEV, "mode", "tun"])
        lab.spawn(self.name, "inet", [sys.executable, "-m", "lab.wan_delay", "--rtt-ms", str(self.rtt_ms),
                                      "--dev", DEV])
        time.sleep(0.2)
        inet.run(["ip", "link", "set", DEV, "up"])
        for key in ("all", "default", DEV):
            inet.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
        inet.run(["ip", "route", "replace", "default", "dev", DEV, "table", TABLE])
        rules = inet.run(["ip", "rule", "show"]).stdout.decode()
        for iif, dst in (("br-lan", WAN), ("br-wan", OFFICE_LAN)):
            if f"iif {iif} lookup {TABLE}" not in rules and f"to {dst} iif {iif}" not in rules:
                inet.run(["ip", "rule", "add", "iif", iif, "to", dst, "lookup", TABLE])

    def stop(self, lab) -> None:
        inet = lab.host("inet")
        if inet.exists():
            for iif, dst in (("br-lan", WAN), ("br-wan", OFFICE_LAN)):
                inet.run(["ip", "rule", "del", "iif", iif, "to", dst, "lookup", TABLE], check=False)
        lab.procs.stop(self.name)
        if inet.exists():
            inet.run(["ip", "link", "del", DEV], check=False)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        return {"rtt_ms": self.rtt_ms, "running": bool(rec and rec.alive())}
