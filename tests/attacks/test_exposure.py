"""Attacks on the MFP's network exposure (issue 13, item 3): what a coworker on the office LAN and an
org host through the tunnel can reach on the device.

Before the device firewall, the session table filtered only the IPP port (policy accept): a
coworker reached the print engine (ippeveprinter, 8631) and the virtual reader (vpcd, 35963) on
the MFP's office address, so printed without a tap and injected card taps. ippeveprinter has no
option to bind one address and vpcd always listens on every interface, so the lab's stand-ins
stay as they are and the device firewall is what closes them: the lab shows a device's exposure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

from system import clean_system, lab_cli, system, wait_for  # noqa: E402,F401 (fixtures)

from hal.net import sysctls  # noqa: E402
from lab.services.pcscd import VPCD_PORT  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MFP = "10.77.0.10"  # the MFP's office LAN address
ENGINE_PORT = 8631

# A full TCP connect scan: non-blocking connects in batches, a port is open when the handshake
# completes within the wait; refused (RST) and unanswered (dropped) ports are counted apart.
SCAN = r"""
import errno, json, resource, select, socket, sys, time
addr, lo, hi, batch, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < batch + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, batch + 64), hard))
result = {"open": [], "refused": 0, "unanswered": 0}
t0 = time.monotonic()
for start in range(lo, hi + 1, batch):
    ep, socks = select.epoll(), {}
    for port in range(start, min(start + batch, hi + 1)):
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex((addr, port)) not in (0, errno.EINPROGRESS):
            s.close(); continue
        socks[s.fileno()] = (s, port)
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLERR)
    deadline = time.monotonic() + wait
    while socks and (left := deadline - time.monotonic()) > 0:
        for fd, _ in ep.poll(left):
            s, port = socks.pop(fd)
            ep.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                result["open"].append(port)
            else:
                result["refused"] += 1
            s.close()
    result["unanswered"] += len(socks)
    for s, _ in socks.values():
        s.close()
    ep.close()
result["seconds"] = round(time.monotonic() - t0, 1)
print(json.dumps(result))
"""

CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except OSError as exc:
    print("closed", type(exc).__name__)
"""

# A card presented to the MFP's reader from elsewhere: the lab's own virtual card, over the network.
INJECT = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[2])
from lab import vpcd_protocol as vpcd
from lab.vcard import ATR, CardImage, Type4Applet
try:
    sock = vpcd.connect(sys.argv[1], timeout=2.0)
except OSError as exc:
    print("blocked", type(exc).__name__); sys.exit(0)
applet = Type4Applet(CardImage.from_command({"uid_hex": "04deadbeef0001", "user": "alice", "org": "acme"}))
sock.settimeout(1.0)
end = time.monotonic() + 3
try:
    while time.monotonic() < end:
        msg = vpcd.recv_frame(sock)
        if msg is None:
            break
        if len(msg) == 1:
            if msg[0] == vpcd.CTRL_ATR:
                vpcd.send_frame(sock, ATR)
            continue
        vpcd.send_frame(sock, applet.process(msg))
except OSError:
    pass
print("injected")
"""


def scan(system, host: str, addr: str, batch: int, wait: float) -> dict:
    proc = system.host(host).run([sys.executable, "-c", SCAN, addr, "1", "65535", str(batch), str(wait)],
                                 timeout=240)
    return json.loads(proc.stdout)


def reach(system, host: str, addr: str, port: int, timeout: float = 1.0) -> str:
    proc = system.host(host).run([sys.executable, "-c", CONNECT, addr, str(port), str(timeout)], timeout=30)
    return proc.stdout.decode().split()[0]


def listening(system, port: int) -> bool:
    return bool(system.host("office").run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip())


def test_full_tcp_scan_from_the_coworking_lan_finds_nothing_open(clean_system):
    """A coworker scans every TCP port of the MFP's office address, idle and during a session: nothing open."""
    system = clean_system
    assert listening(system, ENGINE_PORT) and listening(system, VPCD_PORT)  # there to be found
    idle = scan(system, "cowork", MFP, batch=4000, wait=0.3)
    assert idle["open"] == [] and idle["refused"] == 0, idle  # dropped, not even refused
    assert idle["seconds"] < 60, idle

    lab_cli("tap", "--org", "acme", "--user", "alice")
    busy = scan(system, "cowork", MFP, batch=4000, wait=0.3)
    assert busy["open"] == [] and busy["refused"] == 0, busy


def test_through_the_tunnel_only_ipp_is_open(clean_system):
    """An acme host scans every TCP port of the MFP's virtual IP through the tunnel: only 631 is open."""
    system = clean_system
    st = lab_cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready" and st["tunnel"]["up"], st
    vip = st["tunnel"]["virtual_ip"]
    through = scan(system, "lan-acme", vip, batch=2000, wait=0.5)
    if through["open"] == []:
        # Seen once in CI: every port unanswered, 631 too, the session up. kernel-libipsec's
        # userspace ESP queue drops SYNs under a 2000-port burst; scan once more in smaller bursts
        # (an open port other than 631 still fails the test, either scan).
        through = scan(system, "lan-acme", vip, batch=500, wait=0.5)
    after = lab_cli("status")["firmware"]  # a tunnel that went during the scan answers nothing
    assert through["open"] == [631], (through, after["state"], after["tunnel"], after["audit"][-6:])


def test_engine_and_reader_ports_unreachable_from_cowork(clean_system):
    """A coworker connects straight to the print engine (8631) and the virtual reader (vpcd): both dropped."""
    system = clean_system
    assert listening(system, ENGINE_PORT) and listening(system, VPCD_PORT)
    assert reach(system, "office", "127.0.0.1", ENGINE_PORT) == "open"  # the firmware's own path works
    assert reach(system, "cowork", MFP, ENGINE_PORT) == "closed"
    assert reach(system, "cowork", MFP, VPCD_PORT) == "closed"


def test_tap_injection_over_vpcd_from_cowork_fails(clean_system):
    """A coworker presents a forged card for alice to the MFP's reader over the network: no tap is seen."""
    system = clean_system
    before = lab_cli("status")["firmware"]
    out = system.host("cowork").run([sys.executable, "-c", INJECT, MFP, str(REPO)], timeout=30).stdout.decode()
    assert out.split()[0] == "blocked", out
    after = lab_cli("status")["firmware"]
    assert after["state"] == "idle" and after.get("taps") == before.get("taps")


def test_routing_through_the_mfp_into_the_org_fails(clean_system):
    """A coworker routes the org's LAN via the MFP during a session: nothing is forwarded into the tunnel."""
    system = clean_system
    lab_cli("tap", "--org", "acme", "--user", "alice")
    cowork = system.host("cowork")
    cowork.run(["ip", "route", "replace", "10.20.0.0/24", "via", MFP])
    try:
        for port in (22, 631, 1812):
            assert reach(system, "cowork", "10.20.0.50", port) == "closed"
    finally:
        cowork.run(["ip", "route", "del", "10.20.0.0/24"], check=False)


def test_mfp_kernel_network_settings_hold(clean_system):
    """The MFP host never routes and answers ARP only for the interface asked (sysctls as the unit sets them)."""
    system = clean_system
    assert sysctls.mismatches(system.host("office").ns) == []
